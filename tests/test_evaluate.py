"""The mteb wrapper, local tasks, the embedding cache, result tables and bad input (small fixtures; fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthembed.cli import main
from synthembed.errors import SynthembedError
from synthembed.evaluation.cache import EmbeddingCache
from synthembed.evaluation.encoder import MtebEncoder
from synthembed.evaluation.run import evaluate_model, resolve_tasks, split_task_list
from synthembed.evaluation.tables import (
    averages,
    category_table,
    evaluation_summary,
    model_table,
    task_table,
    to_markdown,
)
from synthembed.evaluation.task_files import detect_kind, label_ids
from synthembed.evaluation.tasks import LocalRetrievalTask, LocalSTSTask, local_task
from synthembed.model import Embedder
from synthembed.reference import PAPER_TABLE1, PUBLISHED

DOCS = [
    ("d1", "Cats", "Cats are small domesticated carnivorous mammals that purr."),
    ("d2", "Rust", "Rust is a systems programming language focused on memory safety."),
    ("d3", "Paris", "Paris is the capital and largest city of France."),
    ("d4", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into sugar."),
    ("d5", "Volcano", "A volcano is a rupture in the crust where lava escapes."),
    ("d6", "Football", "Association football is played by two teams of eleven players."),
]
QUERIES = [
    ("q1", "which pet animal purrs"),
    ("q2", "memory safe programming language"),
    ("q3", "what is the capital of France"),
    ("q4", "how do plants make sugar"),
]


def make_beir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in DOCS)
    )
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": x}) + "\n" for i, x in QUERIES))
    rows = ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t1", "q3\td3\t1", "q4\td4\t1"]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


def make_sts(root: Path) -> Path:
    root.mkdir(parents=True)
    pairs = [
        ("A man is playing a guitar.", "A person plays the guitar.", 4.6),
        ("A woman is slicing an onion.", "Someone cuts an onion.", 4.2),
        ("A dog runs in the park.", "The stock market fell today.", 0.2),
        ("Kids are playing football.", "Children play soccer outside.", 4.0),
        ("The sun is shining.", "A cat sleeps on the sofa.", 0.4),
        ("He drives a red car.", "A man is driving a car.", 3.1),
    ]
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}" for i, (a, b, s) in enumerate(pairs)]
    (root / "sts-test.csv").write_text("\n".join(lines) + "\n")
    return root


def make_tatoeba(root: Path) -> Path:
    root.mkdir(parents=True)
    eng = ["Good morning.", "Where is the station?", "I like green tea.", "The house is big."]
    deu = ["Guten Morgen.", "Wo ist der Bahnhof?", "Ich mag grünen Tee.", "Das Haus ist groß."]
    fra = ["Bonjour.", "Où est la gare ?", "J'aime le thé vert.", "La maison est grande."]
    for code, side in (("deu", deu), ("fra", fra)):
        (root / f"tatoeba.{code}-eng.{code}").write_text("\n".join(side) + "\n")
        (root / f"tatoeba.{code}-eng.eng").write_text("\n".join(eng) + "\n")
    return root


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    return make_beir(tmp_path_factory.mktemp("local") / "mini_beir")


@pytest.fixture(scope="module")
def minilm_embedder(minilm):
    from synthembed.model import load_embedder

    return load_embedder(str(minilm), device="cpu")


class RecordingEmbedder(Embedder):
    """Records what it is asked to encode; deterministic vectors from the text's hash (no model needed)."""

    loaded = True

    def __init__(self):
        self.name = "recorder"
        self.seen: list[str] = []
        self.max_len = 64
        self.append_eos = False
        self.pooling = "mean"
        self.dimension = 8
        import torch

        self.model = torch.nn.Linear(2, 2)

    def encode(self, texts, batch_size=32, show_progress=True, desc=""):
        self.seen.extend(texts)
        rng = [np.random.default_rng(abs(hash(t)) % (2**32)) for t in texts]
        reps = np.stack([r.standard_normal(self.dimension) for r in rng]).astype(np.float32)
        return reps / np.linalg.norm(reps, axis=1, keepdims=True)


def test_split_task_list_keeps_benchmark_names_whole():
    assert split_task_list("MTEB(eng, v2),SciFact, ./data/x") == ["MTEB(eng, v2)", "SciFact", "./data/x"]
    assert split_task_list(["a,b", "c"]) == ["a", "b", "c"]


def test_detect_kind_reads_the_files(tmp_path, beir_dir):
    assert detect_kind(beir_dir) == "retrieval"
    assert detect_kind(make_sts(tmp_path / "sts")) == "sts"
    assert detect_kind(make_tatoeba(tmp_path / "tat")) == "bitext"
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "train.csv").write_text("text,category\na,x\n")
    (tmp_path / "cls" / "test.csv").write_text("text,category\nb,x\n")
    assert detect_kind(tmp_path / "cls") == "classification"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(SynthembedError, match="junk"):
        detect_kind(tmp_path / "junk")


def test_label_ids_sort_case_insensitively():
    assert label_ids(["b", "A", "c", "a_x"]) == {"A": 0, "a_x": 1, "b": 2, "c": 3}


def test_official_copies_get_mteb_protocol(tmp_path):
    task = local_task(make_sts(tmp_path / "stsbenchmark"))
    assert task.metadata.name == "STSBenchmark" and task.metadata.main_score == "cosine_spearman"
    assert (task.min_score, task.max_score) == (0, 5)
    task.load_data()
    assert task.dataset["test"].column_names == ["sentence1", "sentence2", "score"]


def test_local_retrieval_matches_plain_mteb_with_sentence_transformers(beir_dir, minilm, minilm_embedder, tmp_path):
    """Our wrapper over our encode() scores what mteb scores with the sentence-transformers model itself."""
    import mteb
    from sentence_transformers import SentenceTransformer

    ours = evaluate_model(
        str(minilm), [str(beir_dir)], embedder=minilm_embedder, cache_dir=tmp_path, show_progress=False
    )
    reference = mteb.evaluate(
        SentenceTransformer(str(minilm), device="cpu"), local_task(beir_dir), cache=None, show_progress_bar=False
    )
    ref_scores = reference.task_results[0].scores["test"][0]
    entry = ours["tasks"][0]
    assert entry["kind"] == "retrieval" and entry["main_score_name"] == "ndcg_at_10"
    assert entry["main_score"] == pytest.approx(ref_scores["ndcg_at_10"], abs=1e-6)
    assert entry["scores"]["scores"]["test"][0]["recall_at_1"] == pytest.approx(ref_scores["recall_at_1"], abs=1e-6)
    assert 0.5 < entry["main_score"] <= 1.0  # an easy task for a real model


def test_embedding_cache_reuses_only_the_same_model(beir_dir, minilm, minilm_embedder, tmp_path):
    first = evaluate_model(
        str(minilm), [str(beir_dir)], embedder=minilm_embedder, cache_dir=tmp_path, show_progress=False
    )
    again = evaluate_model(
        str(minilm), [str(beir_dir)], embedder=minilm_embedder, cache_dir=tmp_path, show_progress=False
    )
    assert first["embedding_cache"] == {"hits": 0, "misses": 2}  # queries + corpus
    assert again["embedding_cache"] == {"hits": 2, "misses": 0}
    assert again["tasks"][0]["main_score"] == first["tasks"][0]["main_score"]
    # another pooling is another model: its own hash, nothing served from the first model's cache
    from synthembed.model import load_embedder

    cls = load_embedder(str(minilm), pooling="cls", device="cpu")
    changed = evaluate_model(str(minilm), [str(beir_dir)], embedder=cls, cache_dir=tmp_path, show_progress=False)
    assert changed["model_hash"] != first["model_hash"]
    assert changed["embedding_cache"]["hits"] == 0


def test_rerun_from_cache_never_loads_the_model(beir_dir, minilm, tmp_path):
    """Re-running the same model is answered from its cached embeddings without loading the weights; other load
    settings (another pooling) make another hash and encode afresh."""
    first = evaluate_model(str(minilm), [str(beir_dir)], cache_dir=tmp_path, show_progress=False)
    again = evaluate_model(str(minilm), [str(beir_dir)], cache_dir=tmp_path, show_progress=False)
    assert first["model_loaded"] is True and again["model_loaded"] is False
    assert again["embedding_cache"] == {"hits": 2, "misses": 0}
    assert again["tasks"][0]["scores"]["scores"] == first["tasks"][0]["scores"]["scores"]
    other = evaluate_model(str(minilm), [str(beir_dir)], cache_dir=tmp_path, pooling="cls", show_progress=False)
    assert other["model_hash"] != first["model_hash"] and other["embedding_cache"]["hits"] == 0
    assert other["pooling"] == "cls" and first["pooling"] == "mean"


def test_cache_file_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path, "abc" * 20)
    reps = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert cache.get(["a", "b", "c"]) is None
    cache.put(["a", "b", "c"], reps)
    np.testing.assert_array_equal(cache.get(["a", "b", "c"]), reps)
    assert cache.get(["a", "c", "b"]) is None  # order is part of the key
    assert not list(cache.dir.glob("*.tmp"))


def test_instructions_on_queries_only(beir_dir, tmp_path):
    """Paper section 4.1: queries get `Instruct: {task}\\nQuery: ...` (SciFact's own prompt), documents stay plain."""
    import mteb

    emb = RecordingEmbedder()
    wrapper = MtebEncoder(emb, name="local/recorder", instructions=True, model_hash="0" * 64, show_progress=False)
    task = local_task(beir_dir, name="SciFact")
    mteb.evaluate(wrapper, task, cache=None, show_progress_bar=False)
    scifact_prompt = mteb.get_task("SciFact").metadata.prompt["query"]
    queries = [t for t in emb.seen if t.startswith("Instruct:")]
    assert queries == [f"Instruct: {scifact_prompt}\nQuery: {q}" for _, q in QUERIES]
    assert sorted(t for t in emb.seen if not t.startswith("Instruct:")) == sorted(f"{t} {x}" for _, t, x in DOCS)

    emb = RecordingEmbedder()
    wrapper = MtebEncoder(
        emb, name="local/recorder", instructions=True, overrides={"SciFact": "Find evidence"}, show_progress=False
    )
    mteb.evaluate(wrapper, local_task(beir_dir, name="SciFact"), cache=None, show_progress_bar=False)
    assert sum(t.startswith("Instruct: Find evidence\nQuery: ") for t in emb.seen) == len(QUERIES)

    emb = RecordingEmbedder()
    wrapper = MtebEncoder(emb, name="local/recorder", instructions=False, show_progress=False)
    mteb.evaluate(wrapper, local_task(beir_dir, name="SciFact"), cache=None, show_progress_bar=False)
    assert not any(t.startswith("Instruct:") for t in emb.seen)


def test_symmetric_tasks_instruct_both_sides(tmp_path):
    import mteb

    emb = RecordingEmbedder()
    wrapper = MtebEncoder(emb, name="local/recorder", instructions=True, show_progress=False)
    mteb.evaluate(wrapper, local_task(make_sts(tmp_path / "stsbenchmark")), cache=None, show_progress_bar=False)
    assert emb.seen and all(t.startswith("Instruct: Retrieve semantically similar text.\nQuery: ") for t in emb.seen)


def test_local_tasks_mteb_does_not_know_get_their_kinds_instruction(beir_dir, tmp_path):
    """A folder with no mteb counterpart gets its kind's abstract-class instruction (mteb finds that by task name among
    its own classes, where such a task is not); an override by name, then one by kind, still wins."""
    import mteb
    from mteb.abstasks import AbsTaskRetrieval, AbsTaskSTS

    def queries_of(task, overrides=None):
        emb = RecordingEmbedder()
        wrapper = MtebEncoder(emb, name="local/recorder", instructions=True, overrides=overrides, show_progress=False)
        mteb.evaluate(wrapper, task, cache=None, show_progress_bar=False)
        return {t.split("\nQuery: ")[0] for t in emb.seen if t.startswith("Instruct:")}

    task = local_task(beir_dir)
    assert task.metadata.name == "local:mini_beir"
    assert queries_of(task) == {f"Instruct: {AbsTaskRetrieval.abstask_prompt}"}
    assert queries_of(local_task(beir_dir), {"Retrieval": "By kind"}) == {"Instruct: By kind"}
    assert queries_of(local_task(beir_dir), {"Retrieval": "By kind", "local:mini_beir": "By name"}) == {"Instruct: By name"}
    assert queries_of(local_task(make_sts(tmp_path / "my-sts"))) == {f"Instruct: {AbsTaskSTS.abstask_prompt}"}


def test_local_tasks_are_declared_classes(beir_dir, tmp_path):
    from mteb.abstasks import AbsTask

    def subclasses(cls):
        return set(cls.__subclasses__()).union(*(subclasses(c) for c in cls.__subclasses__()))

    before = subclasses(AbsTask)
    assert type(local_task(beir_dir)) is LocalRetrievalTask
    sts = local_task(make_sts(tmp_path / "stsbenchmark"))
    assert type(sts) is LocalSTSTask and sts.metadata.name == "STSBenchmark"
    assert subclasses(AbsTask) == before  # no class made per task


def test_bitext_scores_per_language(tmp_path, minilm, minilm_embedder):
    tat = make_tatoeba(tmp_path / "tatoeba")
    results = evaluate_model(str(minilm), [str(tat)], embedder=minilm_embedder, use_cache=False, show_progress=False)
    entry = results["tasks"][0]
    assert entry["name"] == "Tatoeba" and entry["kind"] == "bitext"
    assert set(entry["languages"]) == {"deu", "fra"}
    assert entry["main_score"] == pytest.approx(np.mean(list(entry["languages"].values())))
    only = local_task(tat, languages=["fra"])
    assert only.hf_subsets == ["fra-eng"]


def test_resolve_tasks_names_dirs_and_copies(tmp_path, beir_dir):
    make_sts(tmp_path / "data" / "sts" / "stsbenchmark")
    tasks = resolve_tasks(["STSBenchmark", str(beir_dir)], data_dir=tmp_path / "data")
    assert [t.metadata.name for t in tasks] == ["STSBenchmark", "local:mini_beir"]
    assert tasks[0].local_path.endswith("stsbenchmark")
    hub = resolve_tasks(["NFCorpus"])  # no local copy: mteb's own task (data from the hub when it runs)
    assert hub[0].metadata.name == "NFCorpus" and not hasattr(hub[0], "local_path")
    with pytest.raises(SynthembedError, match="SciFactt.*Did you mean.*SciFact"):
        resolve_tasks(["SciFactt"])


def test_tables_side_by_side_with_the_paper():
    run = {
        "tasks": [
            {"name": "SciFact", "kind": "retrieval", "main_score": 0.6451, "main_score_name": "ndcg_at_10"},
            {"name": "STSBenchmark", "kind": "sts", "main_score": 0.8203, "main_score_name": "cosine_spearman"},
            {"name": "SICK-R", "kind": "sts", "main_score": 0.7758, "main_score_name": "cosine_spearman"},
        ]
    }
    run["averages"] = averages(run["tasks"])
    assert run["averages"]["sts"] == pytest.approx((0.8203 + 0.7758) / 2)
    assert run["averages"]["average"] == pytest.approx((0.6451 + 0.8203 + 0.7758) / 3)
    tasks = task_table({"baseline": run})
    row = tasks.set_index("task").loc["SciFact"]
    assert row["baseline"] == 64.51 and row["all-MiniLM-L6-v2 (published)"] == PUBLISHED["all-MiniLM-L6-v2"]["SciFact"]
    cats = category_table({"baseline": run}).set_index("category")
    assert cats.loc["retrieval", "E5-mistral full data (paper)"] == PAPER_TABLE1["E5-mistral full data"]["retrieval"]
    assert cats.loc["sts", "baseline"] == pytest.approx(79.805, abs=0.01)
    md = to_markdown(tasks)
    assert md.splitlines()[0].startswith("| task | kind | metric | baseline") and "| SciFact | retrieval |" in md


def test_evaluation_summary_records_notebook_04s_numbers():
    def run(scores, instructions):
        tasks = [{"name": n, "kind": "sts", "main_score": v, "main_score_name": "cosine_spearman"} for n, v in scores]
        return {"tasks": tasks, "averages": averages(tasks), "instructions": instructions}

    runs = {"all-MiniLM-L6-v2": run([("STSBenchmark", 0.820345), ("SICK-R", 0.7758)], False),
            "ours: synthetic": run([("STSBenchmark", 0.5), ("SICK-R", 0.25)], True)}  # fmt: skip
    summary = evaluation_summary(runs, {"synthetic": "ours: synthetic"})
    assert summary["baseline"] == "all-MiniLM-L6-v2" and summary["tasks"] == ["STSBenchmark", "SICK-R"]
    assert summary["baseline_scores"] == {"STSBenchmark": 0.8203, "SICK-R": 0.7758}
    assert summary["trained_models"] == ["synthetic"]
    assert summary["trained_scores"] == {"synthetic": {"STSBenchmark": 0.5, "SICK-R": 0.25}}
    assert summary["averages"]["ours: synthetic"] == {"sts": 0.375, "average": 0.375}
    assert summary["instructions"] == {"all-MiniLM-L6-v2": False, "ours: synthetic": True}
    assert summary["paper_table1_average"] == PAPER_TABLE1["E5-mistral full data"]["average"]
    assert evaluation_summary(runs, {}, baseline="ours: synthetic")["baseline_scores"]["SICK-R"] == 0.25


def test_cli_bad_input_fails_clearly_and_writes_nothing(tmp_path, beir_dir, minilm, capsys):
    out = tmp_path / "r.json"
    code = main(["evaluate", "--model", str(tmp_path / "no-model"), "--tasks", str(beir_dir), "--out", str(out)])
    assert code == 2 and "no-model" in capsys.readouterr().err and not out.exists()

    code = main(["evaluate", "--model", str(minilm), "--tasks", "NoSuchTask123", "--out", str(out)])
    assert code == 2 and "NoSuchTask123" in capsys.readouterr().err and not out.exists()

    code = main(["evaluate", "--model", str(minilm), "--tasks", str(tmp_path / "missing_dir"), "--out", str(out)])
    assert code == 2 and "missing_dir" in capsys.readouterr().err and not out.exists()

    broken = make_beir(tmp_path / "broken")
    with (broken / "corpus.jsonl").open("a") as handle:
        handle.write("{not json\n")
    cache = tmp_path / "cache"
    args = ["--model", str(minilm), "--out", str(out), "--cache-dir", str(cache)]
    code = main(["evaluate", "--tasks", f"{beir_dir},{broken}", *args])
    err = capsys.readouterr().err
    assert code == 2 and "corpus.jsonl" in err and "line 7" in err
    assert not out.exists() and not list(tmp_path.glob(".r.json*"))  # no partial result, no stray temp file

    assert main(["evaluate", "--tasks", str(beir_dir), *args]) == 0
    written = json.loads(out.read_text())
    assert [t["name"] for t in written["tasks"]] == ["local:mini_beir"]
    assert 0 <= written["tasks"][0]["main_score"] <= 1 and written["tasks"][0]["kind"] == "retrieval"
    code = main(["evaluate", "--tasks", str(beir_dir), *args])  # finished results are not overwritten silently
    assert code == 2 and "--overwrite" in capsys.readouterr().err


def test_find_trained_models_prefers_merged_and_skips_checkpoints(tmp_path):
    from synthembed.evaluation.run import find_trained_model, find_trained_models

    for sub in ("synthetic/merged", "synthetic/adapter", "synthetic/checkpoints/step-000002", "msmarco/adapter"):
        (tmp_path / "train" / sub).mkdir(parents=True)
        (tmp_path / "train" / sub / "synthembed_config.json").write_text("{}")
    found = find_trained_models(tmp_path / "train")
    assert found == {"msmarco": tmp_path / "train/msmarco/adapter", "synthetic": tmp_path / "train/synthetic/merged"}
    assert find_trained_models(tmp_path / "nothing") == {}
    assert find_trained_model(tmp_path / "train" / "synthetic") == tmp_path / "train/synthetic/merged"
    assert find_trained_model(tmp_path / "train" / "msmarco") == tmp_path / "train/msmarco/adapter"
    assert find_trained_model(tmp_path / "nothing") is None
    # notebooks 05 and 06 take one of them by name, or the first
    from synthembed.evaluation.specs import pick_trained_model

    assert pick_trained_model(tmp_path / "train", "synthetic") == tmp_path / "train/synthetic/merged"
    assert pick_trained_model(tmp_path / "train") == tmp_path / "train/msmarco/adapter"
    assert pick_trained_model(tmp_path / "nothing") is None
    with pytest.raises(SynthembedError, match=r"'synthetic\+labeled' is not among .*\['msmarco', 'synthetic'\]"):
        pick_trained_model(tmp_path / "train", "synthetic+labeled")
    with pytest.raises(SynthembedError, match="none \\(run notebook 03 first\\)"):
        pick_trained_model(tmp_path / "nothing", "synthetic")


def test_flores_layout_mines_each_language_against_english(tmp_path, minilm_embedder, minilm):
    devtest = tmp_path / "flores200" / "devtest"
    devtest.mkdir(parents=True)
    lines = {
        "eng_Latn": ["Good morning.", "Where is the station?", "I like green tea."],
        "deu_Latn": ["Guten Morgen.", "Wo ist der Bahnhof?", "Ich mag grünen Tee."],
        "spa_Latn": ["Buenos días.", "¿Dónde está la estación?", "Me gusta el té verde."],
    }
    for code, text in lines.items():
        (devtest / f"{code}.devtest").write_text("\n".join(text) + "\n")
    task = local_task(tmp_path / "flores200", languages=["deu", "spa_Latn"])
    assert task.metadata.name == "FloresBitextMining"
    assert task.hf_subsets == ["deu_Latn-eng_Latn", "spa_Latn-eng_Latn"]
    results = evaluate_model(str(minilm), [task], embedder=minilm_embedder, use_cache=False, show_progress=False)
    entry = results["tasks"][0]
    assert set(entry["languages"]) == {"deu_Latn", "spa_Latn"}
    assert all(0.0 <= v <= 1.0 for v in entry["languages"].values())


def test_a_null_score_stays_missing_in_every_table():
    """A results file holds null where mteb returned NaN (a collapsed model); the tables show it missing, never 0,
    and the means over it are missing too rather than silently averaging the other tasks."""
    tasks = [{"name": "STSBenchmark", "kind": "sts", "main_score": None, "main_score_name": "cosine_spearman"},
             {"name": "SICK-R", "kind": "sts", "main_score": 0.5, "main_score_name": "cosine_spearman"},
             {"name": "SciFact", "kind": "retrieval", "main_score": 0.25, "main_score_name": "ndcg_at_10"}]  # fmt: skip
    run = {"model": "m", "tasks": tasks, "averages": averages(tasks), "instructions": True}
    assert np.isnan(run["averages"]["sts"]) and np.isnan(run["averages"]["average"])
    assert run["averages"]["retrieval"] == 0.25
    written = json.loads(json.dumps(run["averages"]).replace("NaN", "null"))  # as write_json_atomic stores it
    stored = {**run, "averages": written}
    assert task_table({"m": stored}).set_index("task").loc["STSBenchmark", "m"] != 0
    assert np.isnan(task_table({"m": stored}).set_index("task").loc["STSBenchmark", "m"])
    models = model_table({"m": stored}).set_index("model")
    assert np.isnan(models.loc["m", "STSBenchmark"]) and models.loc["m", "SICK-R"] == 50.0
    assert np.isnan(models.loc["m", "sts"]) and models.loc["m", "retrieval"] == 25.0
    assert np.isnan(category_table({"m": stored}).set_index("category").loc["sts", "m"])
    summary = evaluation_summary({"m": stored}, {})
    assert summary["baseline_scores"] == {"STSBenchmark": None, "SICK-R": 0.5, "SciFact": 0.25}
    assert summary["averages"]["m"]["sts"] is None
    json.dumps(summary, allow_nan=False)  # valid JSON: no NaN anywhere
    assert "|  |" in to_markdown(task_table({"m": stored}))


def test_a_folder_bound_by_name_is_scored_with_that_tasks_protocol(tmp_path, shared_data):
    """`--tasks NAME=DIR`: the folder's data under the official task's protocol (ToxicConversationsClassification
    trains its classifier on 16 examples per label, mteb's default is 8); an unbound folder gets the defaults, and
    the JSON and the task table say which protocol scored what."""
    import shutil

    folder = tmp_path / "intents"
    shutil.copytree(shared_data / "classification" / "banking77", folder)
    bound_name = "ToxicConversationsClassification"
    runs = {}
    for label, spec in (("unbound", str(folder)), ("bound", f"{bound_name}={folder}")):
        tasks = resolve_tasks([spec], limit=20)
        assert tasks[0].samples_per_label == (16 if label == "bound" else 8)
        runs[label] = evaluate_model("recorder", [spec], embedder=RecordingEmbedder(), limit=20, use_cache=False,
                                     show_progress=False)  # fmt: skip
    unbound, bound = runs["unbound"]["tasks"][0], runs["bound"]["tasks"][0]
    assert unbound["name"] == "local:intents" and bound["name"] == bound_name
    assert unbound["protocol"]["bound_to"] is None and unbound["protocol"]["samples_per_label"] == 8
    assert bound["protocol"]["bound_to"] == bound_name and bound["protocol"]["samples_per_label"] == 16
    table = task_table(runs, published={}).set_index("task")
    assert table.loc[bound_name, "protocol"] == f"mteb's {bound_name}"
    assert table.loc["local:intents", "protocol"].startswith("not an mteb task: n_experiments 10, samples_per_label 8")
    from synthembed import plots

    plots.plot_task_scores(table.reset_index(), tmp_path / "bars.png")  # the notes are not plotted as scores
    with pytest.raises(SynthembedError, match="no task named 'ToxicConversation'; did you mean"):
        resolve_tasks([f"ToxicConversation={folder}"])
    with pytest.raises(SynthembedError, match="holds a classification task but mteb's STSBenchmark is a STS task"):
        resolve_tasks([f"STSBenchmark={folder}"])


def _write_sts(path: Path, pairs) -> None:
    lines = [f"main-captions\tMSRvid\t2012dev\t{i:04d}\t{s}\t{a}\t{b}" for i, (a, b, s) in enumerate(pairs)]
    path.write_text("\n".join(lines) + "\n")


def test_a_folder_bound_to_a_subset_is_scored_as_it_on_each_split_it_holds(tmp_path):
    """`STSBenchmarkMultilingualSTS=DIR`: the folder is the task's `en` subset (its one English subset), and each of the
    official splits is scored from its own file (sts-dev.csv, sts-test.csv): each split's score is the Spearman
    correlation of the cosines on that file's pairs, computed here apart from mteb."""
    from scipy.stats import spearmanr

    from synthembed.data import read_sts

    folder = make_sts(tmp_path / "stsb")
    _write_sts(folder / "sts-dev.csv", [("A bird sings.", "A bird is singing.", 4.8), ("Rain falls.", "Taxes rise.", 0.1),
                                        ("Two men talk.", "Men are talking.", 4.1), ("A boy reads.", "Ice melts.", 0.6),
                                        ("She swims.", "A woman is swimming.", 4.4)])  # fmt: skip
    embedder = RecordingEmbedder()
    run = evaluate_model("recorder", [f"STSBenchmarkMultilingualSTS={folder}"], embedder=embedder, use_cache=False,
                         show_progress=False)  # fmt: skip
    (entry,) = run["tasks"]
    assert entry["name"] == "STSBenchmarkMultilingualSTS" and entry["source"] == f"local:{folder}"
    assert entry["protocol"] == {"bound_to": "STSBenchmarkMultilingualSTS", "subset": "en", "min_score": 0,
                                 "max_score": 5}  # fmt: skip
    expected = {}
    for split in ("dev", "test"):
        rows = read_sts(folder / f"sts-{split}.csv")
        first, second = (embedder.encode([row[side] for row in rows]) for side in (0, 1))
        expected[split] = spearmanr(np.sum(first * second, axis=1), [row[2] for row in rows]).statistic
        assert entry["split_scores"][split] == {"en": pytest.approx(expected[split], abs=1e-6)}
    assert expected["dev"] != pytest.approx(expected["test"])  # the two files, not one read twice
    assert entry["main_score"] == pytest.approx((expected["dev"] + expected["test"]) / 2, abs=1e-6)  # mteb's mean
    table = task_table({"m": run}, published={}).set_index("task")
    assert table.loc["STSBenchmarkMultilingualSTS", "protocol"] == "mteb's STSBenchmarkMultilingualSTS (en)"
    assert set(entry["scores"]["scores"]) == {"dev", "test"}


def test_subset_binding_names_picks_and_refuses(tmp_path, beir_dir):
    """`NAME:SUBSET=DIR` names the subset; a folder holding only some official splits is scored on those and says so;
    a subset the task lacks, a task without subsets, or one with several English subsets and none named, is refused."""
    folder = make_sts(tmp_path / "only-test")  # sts-test.csv only
    (task,) = resolve_tasks([f"STSBenchmarkMultilingualSTS:de={folder}"])
    assert (task.hf_subsets, list(task.eval_splits), task.local_subset) == (["de"], ["test"], "de")
    from synthembed.evaluation.tasks import protocol_of

    assert protocol_of(task)["splits"] == ["test"] and protocol_of(task)["subset"] == "de"
    from synthembed.evaluation.tables import protocol_note

    assert protocol_note({"protocol": protocol_of(task)}) == "mteb's STSBenchmarkMultilingualSTS (de, test only)"
    task.load_data()
    assert list(task.dataset) == ["de"] and list(task.dataset["de"]) == ["test"]
    with pytest.raises(SynthembedError, match="has no subset 'xx'"):
        resolve_tasks([f"STSBenchmarkMultilingualSTS:xx={folder}"])
    with pytest.raises(SynthembedError, match="STSBenchmark has no subsets"):
        resolve_tasks([f"STSBenchmark:en={folder}"])
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "train.csv").write_text("text,category\na,x\nb,y\n")
    (tmp_path / "cls" / "test.csv").write_text("text,category\nc,x\nd,y\n")
    with pytest.raises(SynthembedError, match="name the folder's: AmazonCounterfactualClassification:SUBSET="):
        resolve_tasks([f"AmazonCounterfactualClassification={tmp_path / 'cls'}"])  # en and en-ext are both English
    (task,) = resolve_tasks([f"AmazonCounterfactualClassification:en-ext={tmp_path / 'cls'}"])
    assert task.hf_subsets == ["en-ext"]
    (task,) = resolve_tasks([f"Tatoeba:deu-eng={make_tatoeba(tmp_path / 'tat')}"])  # bitext: one of its files' subsets
    assert task.hf_subsets == ["deu-eng"]
    import shutil

    dev_only = shutil.copytree(beir_dir, tmp_path / "dev-only")
    (dev_only / "qrels" / "test.tsv").rename(dev_only / "qrels" / "dev.tsv")
    with pytest.raises(SynthembedError, match=r"holds none of SciFact's evaluation splits \(test\): qrels/<split>.tsv"):
        resolve_tasks([f"SciFact={dev_only}"])
