"""What notebook 03's models train on (training/sources.py: synthetic, curated, labeled and their mixes, a missing or
stale curated copy refused), and `synthembed train`'s mining guards reaching the miner."""

from __future__ import annotations

import argparse
import json

import pytest

from synthembed.curation.pipeline import CurateConfig, curate
from synthembed.data import Example, write_jsonl
from synthembed.errors import SynthembedError
from synthembed.training.args import check_arguments
from synthembed.training.commands import configure_train_parser, train_arguments
from synthembed.training.data import load_pairs, training_pairs
from synthembed.training.sources import DATA_CHOICES, source_name, study_sources

POSITIVE = "aspirin lowers the risk of a first heart attack in adults"
NEAR_COPY = "aspirin lowers the risk of a first heart attack in older adults"  # unjudged: a false negative to avoid


@pytest.fixture()
def beir(tmp_path):
    """A BEIR folder whose query has one judged positive and, unjudged, a near-copy of it that BM25 ranks first."""
    folder = tmp_path / "labeled" / "aspirin"
    (folder / "qrels").mkdir(parents=True)
    docs = {"pos": POSITIVE, "copy": NEAR_COPY, "stomach": "aspirin irritates the stomach and may cause bleeding",
            "exercise": "heart rate rises during exercise", "ocean": "the ocean is deep and blue",
            "trees": "trees grow slowly in the forest"}  # fmt: skip
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items())
    )
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "does aspirin cut heart attack risk"}) + "\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq\tpos\t1\n")
    return folder


def _examples(n):
    return [Example(id=f"e{i}", task_type="short-long", task="Find passages", language="English",
                    query=f"question number {i} about topic {i}", positive=f"passage {i} " + "answers it well " * 3,
                    negative=f"passage {i} misses the point entirely") for i in range(n)]  # fmt: skip


@pytest.fixture()
def study(tmp_path):
    """A study's run directory: 4 generated examples (the last a near-duplicate of the first), curated by curate()."""
    run_dir = tmp_path / "run"
    examples = _examples(3)
    examples.append(examples[0].model_copy(update={"id": "dup", "query": examples[0].query + "?"}))
    write_jsonl(run_dir / "generation" / "examples.jsonl", examples)
    stats = curate(run_dir / "generation", run_dir / "curated", CurateConfig(margin=None), progress=False)
    assert (stats["input"], stats["kept"]) == (4, 3)
    return run_dir


def test_each_data_setting_resolves_to_its_files(study, beir):
    sources = study_sources(study, [beir.name], beir.parent, synthetic_ratio=0.5, labeled_ratio=2.0)
    generated, curated = str(study / "generation" / "examples.jsonl"), str(study / "curated" / "examples.jsonl")
    expected = {
        "synthetic": ([generated], [0.5]),
        "curated": ([curated], [0.5]),
        "labeled": ([str(beir)], [2.0]),
        "both": ([generated, str(beir)], [0.5, 2.0]),
        "curated+labeled": ([curated, str(beir)], [0.5, 2.0]),
    }
    assert {choice: sources.for_model("m", choice) for choice in DATA_CHOICES} == expected
    assert sources.for_model("m") == expected["both"]  # the default: the paper's mix
    assert [s.kind for s in sources.used(["curated", "labeled"])] == ["curated", "labeled"]
    # the curated model reads what curation kept: the near-duplicate is gone
    data, mix = sources.for_model("m", "curated")
    pairs = load_pairs(data, mix=[1.0], hard_negatives="none", progress=False)
    assert len(pairs) == 3 and {source_name(p.source) for p in pairs} == {"curated"}
    assert source_name(generated) == "generation" and source_name(str(beir)) == "aspirin"
    with pytest.raises(SynthembedError, match="data must be one of synthetic, curated, labeled, both, curated"):
        sources.for_model("m", "filtered")


def test_a_missing_or_stale_curated_copy_stops_the_model_that_asks_for_it(study, beir, tmp_path):
    bare = tmp_path / "bare"
    write_jsonl(bare / "generation" / "examples.jsonl", _examples(2))
    sources = study_sources(bare, [beir.name], beir.parent)
    assert sources.for_model("m", "both")[0] == [str(bare / "generation" / "examples.jsonl"), str(beir)]  # unaffected
    for choice in ("curated", "curated+labeled"):
        with pytest.raises(
            SynthembedError,
            match=r"'synthetic \(curated\)'.*no curated copy.*curate = True.*synthembed "
            r"curate --run",
        ):
            sources.for_model("synthetic (curated)", choice)
    # generation went on after the curation: the curated copy no longer describes the run the other models read
    with (study / "generation" / "examples.jsonl").open("a") as handle:
        handle.write(_examples(5)[4].model_dump_json() + "\n")
    with pytest.raises(SynthembedError, match="curated from 4 examples and .* now holds 5"):
        study_sources(study).for_model("m", "curated")
    # nothing at all: neither a run nor labeled data
    with pytest.raises(SynthembedError, match="there is none: no synthetic examples .* labeled data nowhere"):
        study_sources(tmp_path / "empty", ["nowhere"], tmp_path).for_model("m", "both")


def _train_options(*flags):
    parser = argparse.ArgumentParser()
    configure_train_parser(parser)
    return train_arguments(parser.parse_args(["--base-model", "m", "--out", "o", "--quiet", *flags]))


def test_train_mining_flags_reach_the_miner(beir, minilm):
    """--mine-ratio and --mine-skip, as `synthembed train` parses them, decide the negative training reads: BM25 ranks
    the unjudged near-copy of the positive first, and either guard keeps it out."""
    base = ["--data", str(beir), "--hard-negatives", "bm25", "--beir-instruction", "none"]

    def negative(*flags):
        (pair,) = training_pairs(_train_options(*base, *flags))
        assert pair.positive == POSITIVE
        return pair.negative

    assert negative("--mine-depth", "1") == NEAR_COPY  # no guard: the top non-relevant hit, a false negative
    capped = negative("--mine-depth", "1", "--mine-ratio", "0.9")
    assert capped not in (None, NEAR_COPY, POSITIVE)
    assert negative("--mine-depth", "2", "--mine-skip", "1") == capped  # the rank window leaves rank 0 out
    for flags, message in ((["--mine-skip", "30"], "--mine-skip 30 leaves no rank"),
                           (["--mine-ratio", "1.5"], r"--mine-ratio must be a fraction .* in \(0, 1\]")):  # fmt: skip
        options = _train_options(*base, *flags)
        options.base_model = str(minilm)
        with pytest.raises(SynthembedError, match=message):
            check_arguments(options)
