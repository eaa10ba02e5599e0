"""Reliability of `synthembed train` and `synthembed evaluate` (issue 11): a resume refuses changed settings and names
them; a bad setting writes nothing; a run stopped before its first checkpoint starts again; a relative base model is
recorded absolute; broken task data, NaN scores, an unwritable --out or cache fail clearly (or fall back) instead of
writing a misleading or invalid result."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from synthembed.cli import main
from synthembed.data import Example, write_jsonl
from synthembed.errors import SynthembedError
from synthembed.evaluation.cache import EmbeddingCache
from synthembed.evaluation.run import evaluate_model
from synthembed.files import check_writable, without_non_finite, write_json_atomic
from synthembed.model import Embedder
from synthembed.training.args import RESUMABLE_SETTINGS, TrainArguments, changed_settings, recorded_settings
from synthembed.training.loop import base_model_record, train

WORDS = "apple river protein gene planet ocean forest music city virus star cell drug mountain".split()


def _examples(path: Path, n: int = 24, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        query = " ".join(rng.choice(WORDS) for _ in range(3))
        rows.append(Example(
            id=str(i), task_type="short-long", task="Retrieve relevant passages", language="English", query=query,
            positive=query + " " + " ".join(rng.choice(WORDS) for _ in range(5)),
            negative=" ".join(rng.choice(WORDS) for _ in range(5)),
        ))  # fmt: skip
    write_jsonl(path, rows)
    return path


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    return _examples(tmp_path_factory.mktemp("data") / "examples.jsonl")


def _args(examples, base, out, **overrides) -> TrainArguments:
    settings = dict(
        data=[str(examples)], base_model=str(base), out=str(out), batch_size=4, max_steps=4, warmup_steps=1,
        max_len=24, save_every=2, seed=1, progress=False, gradient_checkpointing=False, no_export=True,
    )
    settings.update(overrides)
    return TrainArguments(**settings)


def _log(out: Path) -> list[tuple[int, float]]:
    with (out / "train_log.csv").open() as handle:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]


def _same_log(out: Path, reference: Path) -> None:
    got, want = _log(out), _log(reference)
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], abs=1e-6)


# --- training: resume ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_run(examples, tiny_mistral, tmp_path_factory) -> Path:
    """A run stopped after its step-2 checkpoint (max_steps 2), to be resumed."""
    return train(_args(examples, tiny_mistral, tmp_path_factory.mktemp("half") / "run", max_steps=2))


@pytest.mark.parametrize(
    "change, named",
    [
        ({"lr": 2e-4}, "--lr 0.0001 -> 0.0002"),
        ({"batch_size": 8}, "--batch-size 4 -> 8"),
        ({"pooling": "mean"}, "--pooling None -> mean"),
        ({"max_len": 16}, "--max-len 24 -> 16"),
        ({"temperature": 0.05}, "--temperature 0.02 -> 0.05"),
        ({"data": "other"}, "--data"),
    ],
    ids=["lr", "batch-size", "pooling", "max-len", "temperature", "data"],
)
def test_resume_refuses_a_changed_setting_and_names_it(change, named, half_run, examples, tiny_mistral, tmp_path):
    if change.get("data") == "other":
        change = {"data": [str(_examples(tmp_path / "other.jsonl", seed=5))]}
    before = sorted(p.name for p in (half_run / "checkpoints").iterdir())
    with pytest.raises(SynthembedError, match="started with other settings") as err:
        train(_args(examples, tiny_mistral, half_run, resume=True, max_steps=4, **change))
    assert named in str(err.value) and "--max-steps" in str(err.value)  # what changed, and what may
    assert sorted(p.name for p in (half_run / "checkpoints").iterdir()) == before  # nothing touched


def test_resume_may_change_the_length_and_continues(half_run, examples, tiny_mistral, tmp_path):
    """max_steps (and the other RESUMABLE_SETTINGS) may change; the resumed run continues from step 2, from another
    working directory too (the same files named by a relative path compare equal)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(half_run, run)
    train(_args(examples, tiny_mistral, run, resume=True, max_steps=3, save_every=1, log_every=1, mini_batch_size=2))
    assert [step for step, _ in _log(run)] == [1, 2, 3]
    recorded = json.loads((run / "train_args.json").read_text())
    assert recorded["max_steps"] == 2  # the record is the run's start, not overwritten by the resume


def test_changed_settings_compare_paths_resolved(examples, tiny_mistral, monkeypatch):
    args = _args(examples, tiny_mistral, "o")
    recorded = json.loads(json.dumps(recorded_settings(args)))
    assert recorded["data"] == [str(examples.resolve())] and recorded["base_model"] == str(tiny_mistral.resolve())
    monkeypatch.chdir(examples.parent)
    relative = dataclasses.replace(args, data=[examples.name], max_steps=99, save_every=7, progress=True)
    assert changed_settings(recorded, relative) == []
    assert {"max_steps", "save_every", "progress", "resume"} <= RESUMABLE_SETTINGS
    assert not {"data", "base_model", "batch_size", "pooling", "max_len", "lr", "seed"} & RESUMABLE_SETTINGS


# --- training: nothing written for a bad setting; a run without a checkpoint starts again -----------------------------


@pytest.mark.parametrize(
    "bad, option",
    [({"temperature": 0.0}, "--temperature"), ({"lr": 0.0}, "--lr"), ({"lora_dropout": 1.0}, "--lora-dropout"),
     ({"bf16": "maybe"}, "--bf16"), ({"pooling": "max"}, "--pooling"), ({"keep_checkpoints": 0}, "--keep-checkpoints")],
    ids=["temperature", "lr", "lora-dropout", "bf16", "pooling", "keep-checkpoints"],
)
def test_a_bad_setting_is_refused_before_anything_is_written(bad, option, examples, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SynthembedError, match=option):
        train(_args(examples, "no-model-is-loaded", out, **bad))
    assert not out.exists()


def test_a_run_stopped_before_its_first_checkpoint_starts_again(examples, tiny_mistral, tmp_path):
    """A crash before the first save leaves train_args.json and a log; a rerun and --resume both start it again from
    step 0 and give exactly the losses of a run never stopped."""
    clean = train(_args(examples, tiny_mistral, tmp_path / "clean", max_steps=3, save_every=0))

    class Crash(Exception):
        pass

    def crash(step, loss):
        if step == 2:
            raise Crash

    stopped = tmp_path / "stopped"
    with pytest.raises(Crash):
        train(_args(examples, tiny_mistral, stopped, max_steps=3, save_every=0), on_step=crash)
    assert (stopped / "train_args.json").is_file() and not (stopped / "checkpoints").exists()
    train(_args(examples, tiny_mistral, stopped, max_steps=3, save_every=0, resume=True))
    _same_log(stopped, clean)

    again = tmp_path / "again"
    with pytest.raises(Crash):
        train(_args(examples, tiny_mistral, again, max_steps=3, save_every=0), on_step=crash)
    train(_args(examples, tiny_mistral, again, max_steps=3, save_every=0))  # a plain rerun, no --resume
    _same_log(again, clean)


def test_an_out_with_other_files_is_still_refused(examples, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train_args.json").write_text("{}")
    (out / "notes.txt").write_text("not a training run's")
    code = main(["train", "--data", str(examples), "--base-model", "x", "--out", str(out), "--quiet"])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train_args.json"]


def test_an_unwritable_out_is_refused_before_loading(examples, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SynthembedError, match="--out .*cannot write there"):
        train(_args(examples, "no-model-is-loaded", blocker / "run"))


# --- training: the base model is recorded where it loads from anywhere -----------------------------------------------


def test_a_relative_base_model_is_recorded_absolute(examples, tiny_mistral, tmp_path, monkeypatch):
    from synthembed.model import load_embedder

    monkeypatch.chdir(tiny_mistral.parent)
    out = train(_args(examples, tiny_mistral.name, tmp_path / "run", max_steps=1, no_export=False))
    absolute = str(tiny_mistral.resolve())
    assert json.loads((out / "adapter" / "synthembed_config.json").read_text())["base_model"] == absolute
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == absolute
    assert json.loads((out / "train_args.json").read_text())["base_model"] == absolute
    monkeypatch.chdir(tmp_path)  # elsewhere, the adapter still finds its base
    assert load_embedder(str(out / "adapter"), device="cpu").encode(["a river"], show_progress=False).shape[0] == 1


def test_a_hub_id_stays_a_hub_id():
    local = "/root/.cache/synthembed/models/smollm2-135m-instruct"
    assert base_model_record("HuggingFaceTB/SmolLM2-135M-Instruct", local) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_record("org/not-here", "org/not-here") == "org/not-here"


# --- evaluation: broken data ---------------------------------------------------------------------------------------


def _beir(root: Path, docs=None, queries=None, qrels=None) -> Path:
    docs = docs if docs is not None else [("d1", "Cats", "Cats purr."), ("d2", "Rust", "A safe language."),
                                          ("d3", "Paris", "Capital of France.")]  # fmt: skip
    queries = queries if queries is not None else [("q1", "which animal purrs"), ("q2", "memory safe language")]
    qrels = qrels if qrels is not None else [("q1", "d1", 1), ("q2", "d2", 1)]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": x}) + "\n" for i, x in queries))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def _sts(root: Path, pairs) -> Path:
    root.mkdir(parents=True)
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}" for i, (a, b, s) in enumerate(pairs)]
    (root / "sts-test.csv").write_text("\n".join(lines) + "\n")
    return root


def _classification(root: Path, empty_row: int) -> Path:
    root.mkdir(parents=True)
    rows = [("I lost my card", "card"), ("send money abroad", "transfer"), ("card arrived broken", "card"),
            ("wire to my friend", "transfer")]  # fmt: skip
    for name in ("train.csv", "test.csv"):
        texts = ["text,category"] + [f"{'' if i == empty_row and name == 'test.csv' else t},{c}"
                                     for i, (t, c) in enumerate(rows)]  # fmt: skip
        (root / name).write_text("\n".join(texts) + "\n")
    return root


def _tatoeba(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "tatoeba.deu-eng.deu").write_text("Guten Morgen.\n\nIch mag Tee.\n")
    (root / "tatoeba.deu-eng.eng").write_text("Good morning.\nWhere is it?\nI like tea.\n")
    return root


BROKEN = {
    "qrels-to-no-document": (lambda r: _beir(r, qrels=[("q1", "d1", 1), ("q2", "d9", 1)]),
                             "qrels/test.tsv: 1 relevant documents are not in corpus.jsonl (d9)"),
    "judged-query-missing": (lambda r: _beir(r, qrels=[("q1", "d1", 1), ("q7", "d2", 1)]),
                             "qrels/test.tsv: 1 judged queries are not in queries.jsonl (q7)"),
    "empty-corpus": (lambda r: _beir(r, docs=[]), "corpus.jsonl: no documents"),
    "empty-document": (lambda r: _beir(r, docs=[("d1", "", ""), ("d2", "Rust", "safe")]),
                       "corpus.jsonl: 1 empty documents (d1)"),
    "empty-query": (lambda r: _beir(r, queries=[("q1", " "), ("q2", "safe language")]),
                    "queries.jsonl: 1 empty queries (q1)"),
    "empty-sts-sentence": (lambda r: _sts(r, [("A cat.", "A dog.", 1.0), ("", "Someone.", 2.0), ("Rain.", "Sun.", 0.5)]),
                           "sts-test.csv: 1 empty sentences (pair 2)"),
    "empty-classification-text": (lambda r: _classification(r, empty_row=2), "test.csv: 1 empty texts (row 3)"),
    "empty-bitext-line": (_tatoeba, "tatoeba.deu-eng.deu: 1 empty sentences (line 2)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_task_data_is_a_clear_error_and_writes_no_result(case, minilm, tmp_path, capsys):
    make, message = BROKEN[case]
    task = make(tmp_path / "task")
    out = tmp_path / "results.json"
    args = ["evaluate", "--model", str(minilm), "--tasks", str(task), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and str(task) in err
    assert not out.exists()


def test_a_score_of_zero_for_an_absent_document_is_allowed(tmp_path):
    """A judgement of score 0 naming a document not in the corpus changes no score: the task still loads."""
    from synthembed.evaluation.tasks import local_task

    task = local_task(_beir(tmp_path / "task", qrels=[("q1", "d1", 1), ("q2", "d2", 1), ("q2", "d9", 0)]))
    task.load_data()
    assert task.local_size == 2


# --- evaluation: NaN, unwritable --out, unwritable cache -------------------------------------------------------------


class ConstantEmbedder(Embedder):
    """Every text gets the same vector: STS similarities are all equal, so their Spearman correlation is NaN."""

    loaded = True

    def __init__(self):
        import torch

        self.name, self.max_len, self.append_eos, self.pooling, self.dimension = "constant", 64, False, "mean", 4
        self.model = torch.nn.Linear(2, 2)
        self.seen: list[str] = []

    def encode(self, texts, batch_size=32, show_progress=True, desc=""):
        self.seen.extend(texts)
        return np.tile(np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32), (len(texts), 1))


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


STS_PAIRS = [("A cat sleeps.", "A cat naps.", 4.5), ("Rain falls.", "Stocks rose.", 0.2), ("He runs.", "He jogs.", 4.0)]


def test_a_nan_score_is_written_as_null_with_the_reason(tmp_path, capsys):
    out = tmp_path / "results.json"
    results = evaluate_model("constant", [str(_sts(tmp_path / "sts", STS_PAIRS))], embedder=ConstantEmbedder(),
                             out=out, cache_dir=tmp_path / "c", show_progress=False)  # fmt: skip
    assert np.isnan(results["tasks"][0]["main_score"])  # in memory still a float
    written = _strict_json(out.read_text())  # bare NaN would raise here
    assert written["tasks"][0]["main_score"] is None and written["averages"]["average"] is None
    note = written["non_finite_scores"]
    assert "tasks[0].main_score" in note["where"] and "same embedding" in note["why"]
    assert "NaN" in capsys.readouterr().err


def test_write_json_atomic_always_writes_strict_json(tmp_path):
    path = write_json_atomic(tmp_path / "x.json", {"a": float("nan"), "b": [1.5, float("inf")], "c": (2, 3)})
    assert _strict_json(path.read_text()) == {"a": None, "b": [1.5, None], "c": [2, 3]}
    assert without_non_finite({"s": [{"x": float("-inf")}]})[1] == ["s[0].x"]


def test_an_unwritable_out_is_found_before_any_task_runs(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    embedder = ConstantEmbedder()
    with pytest.raises(SynthembedError, match="--out .*cannot write there"):
        evaluate_model("constant", [str(_sts(tmp_path / "sts", STS_PAIRS))], embedder=embedder,
                       out=blocker / "results.json", cache_dir=tmp_path / "c", show_progress=False)  # fmt: skip
    assert embedder.seen == []  # nothing was encoded
    with pytest.raises(SynthembedError, match="cannot write there"):
        check_writable(blocker / "deeper" / "r.json", "--out")
    check_writable(tmp_path / "new" / "deeper" / "r.json", "--out")  # absent folders are fine: they can be made
    assert not (tmp_path / "new").exists()  # and the check makes none


def test_an_unwritable_cache_falls_back_to_no_cache(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    results = evaluate_model("constant", [str(_sts(tmp_path / "sts", STS_PAIRS))], embedder=ConstantEmbedder(),
                             cache_dir=blocker, show_progress=False)  # fmt: skip
    assert results["embedding_cache"] is None and len(results["tasks"]) == 1
    assert "without the embedding cache" in capsys.readouterr().err


def test_a_cache_write_that_fails_midway_stops_caching(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = EmbeddingCache(blocker, "ab" * 32)  # its folder cannot be made under a file
    cache.put(["a"], np.ones((1, 2), dtype=np.float32))
    cache.put(["b"], np.ones((1, 2), dtype=np.float32))
    assert cache.read_only and cache.misses == 2 and cache.get(["a"]) is None
    assert capsys.readouterr().err.count("not caching further") == 1
