"""Training pairs: synthetic examples and BEIR data -> (instructed query, positive, hard negative, task_type); BM25
mining; mixing by ratios."""

from __future__ import annotations

import json

import pytest

from synthembed.data import Example, format_query, read_beir, write_jsonl
from synthembed.errors import SynthembedError
from synthembed.training.data import TrainingPair, beir_to_pairs, examples_to_pairs, load_pairs, mix_pairs
from synthembed.training.mining import mine_bm25


def _example(i, task_type="short-long", negative="neg"):
    return Example(id=str(i), task_type=task_type, task=f"task {i}", language="English", query=f"q{i}",
                   positive=f"p{i}", negative=negative)


def test_examples_become_instructed_pairs():
    pairs = examples_to_pairs([_example(0), _example(1, "short-short", None)], source="x.jsonl")
    assert pairs[0].query == "Instruct: task 0\nQuery: q0" == format_query("task 0", "q0")
    assert (pairs[0].positive, pairs[0].negative, pairs[0].task_type) == ("p0", "neg", "short-long")
    assert pairs[1].negative is None and pairs[1].task_type == "short-short" and pairs[1].source == "x.jsonl"


@pytest.fixture()
def tiny_beir(tmp_path):
    docs = {
        "d1": ("Cats", "cats purr when they are content"),
        "d2": ("Dogs", "dogs bark at cats and at the mail carrier"),
        "d3": ("Cats and dogs", "cats and dogs can live together"),
        "d4": ("Ocean", "the ocean is deep and blue"),
        "d5": ("Trees", "trees grow slowly in the forest"),
    }
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in docs.items())
    )
    (tmp_path / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "why do cats purr"}) + "\n" + json.dumps({"_id": "q2", "text": "deep ocean"}) + "\n"
    )
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td4\t1\nq2\td5\t0\n")
    return tmp_path


def test_beir_pairs_with_bm25_negatives(tiny_beir):
    corpus, queries, qrels = read_beir(tiny_beir, "train")
    negatives = mine_bm25(corpus, queries, qrels, n_negatives=1, depth=1, show_progress=False)
    # the top non-relevant BM25 document for "why do cats purr" shares "cats"; never the relevant one
    assert negatives["q1"][0] in {"d2", "d3"} and negatives["q1"] != ["d1"]
    assert "d4" not in negatives["q2"] and "d5" not in negatives["q2"]  # judged documents (even score 0) are excluded
    pairs = beir_to_pairs(corpus, queries, qrels, negatives=negatives, task="Find cat facts")
    assert len(pairs) == 2  # score-0 judgements are not positives
    q1 = next(p for p in pairs if p.query.endswith("why do cats purr"))
    assert q1.query == "Instruct: Find cat facts\nQuery: why do cats purr"
    assert q1.positive == "Cats cats purr when they are content"  # MTEB's "title text"
    assert q1.negative == " ".join(read_beir(tiny_beir, "train")[0][negatives["q1"][0]].values())
    plain = beir_to_pairs(corpus, queries, qrels, task=None)
    assert plain[0].query in {"why do cats purr", "deep ocean"} and plain[0].negative is None


def test_load_pairs_mines_once_and_reads_the_mined_negatives_back(tiny_beir, tmp_path):
    examples = tmp_path / "examples.jsonl"
    write_jsonl(examples, [_example(0), _example(1, "short-short", None)])
    mined = {}
    settings = dict(seed=1, beir_instruction="Find facts", hard_negatives="bm25", mine_depth=1, progress=False)
    pairs = load_pairs([str(examples), str(tiny_beir)], mix=[1, 1], mined=mined, **settings)
    assert len(pairs) == 4 and {p.source for p in pairs} == {str(examples), str(tiny_beir)}
    beir = [p for p in pairs if p.source == str(tiny_beir)]
    assert all(p.query.startswith("Instruct: Find facts\nQuery: ") and p.negative for p in beir)
    (name, negatives), = mined.items()
    assert name == f"negatives-{tiny_beir.name}-train-bm25.json"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / name).write_text(json.dumps({"q1": ["d5"], "q2": ["d5"]}))  # read back instead of mining again
    again = {}
    reread = load_pairs([str(tiny_beir)], cache_dir=cache, mined=again, **settings)
    assert again == {} and {p.negative for p in reread} == {"Trees trees grow slowly in the forest"}
    plain = load_pairs([str(tiny_beir)], beir_instruction="none", hard_negatives="none")
    assert all(not p.instructed and p.negative is None for p in plain)
    with pytest.raises(SynthembedError, match="no such file or folder"):
        load_pairs([str(tmp_path / "nowhere")])


def test_mixing_by_ratios_is_seeded():
    a = [TrainingPair(query=f"a{i}", positive="p") for i in range(10)]
    b = [TrainingPair(query=f"b{i}", positive="p") for i in range(4)]
    mixed = mix_pairs([a, b], [0.5, 2.5], seed=1)
    assert sum(p.query.startswith("a") for p in mixed) == 5
    assert sum(p.query.startswith("b") for p in mixed) == 10  # twice over, then 2 sampled
    assert {p.query for p in mixed if p.query.startswith("b")} == {p.query for p in b}
    assert mixed == mix_pairs([a, b], [0.5, 2.5], seed=1) and mixed != mix_pairs([a, b], [0.5, 2.5], seed=2)
    assert len(mix_pairs([a, b])) == 14
    with pytest.raises(SynthembedError, match="2 data source"):
        mix_pairs([a, b], [1.0])


@pytest.mark.realdata
def test_scifact_train_pairs(shared_data):
    corpus, queries, qrels = read_beir(shared_data / "beir" / "scifact", "train")
    negatives = mine_bm25(corpus, queries, qrels, show_progress=False)
    pairs = beir_to_pairs(corpus, queries, qrels, negatives=negatives)
    assert len(queries) == 809 and len(pairs) == 919  # the train qrels' rows (data README)
    for qid, mined in negatives.items():
        assert mined and not set(mined) & set(qrels[qid])
    assert all(p.negative and p.negative != p.positive for p in pairs)
