"""Curation (synthembed curate): each filter on a small hand-made set with known answers, the filters' order, the
curated copy read back by training, and the judge through generation's client and cache."""

from __future__ import annotations

import asyncio
import doctest
import importlib
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from synthembed.cli import main
from synthembed.curation.contamination import EvalIndex
from synthembed.curation.dedup import embedding_duplicates, minhash_duplicates
from synthembed.curation.ngrams import jaccard, shingles, tokens
from synthembed.curation.pipeline import CurateConfig, curate
from synthembed.curation.report import DROPPED_FILE, SCORES_FILE, counts_table, read_curation, read_jsonl
from synthembed.data import Example, read_examples
from synthembed.errors import SynthembedError
from synthembed.generation.llm import ChatResponse

TASK = "Given a question, retrieve passages that answer it"
BEES = (
    "Honey bees perform a waggle dance inside the hive: the angle of the dance relative to vertical gives the "
    "direction of the food source relative to the sun, and the length of the waggle run encodes its distance."
)
# A sentence of the planted evaluation set below: 14 words, so it is one 13-gram window and more.
EVAL_LONG = "A man in a red jacket is slowly riding a brown horse along the sandy beach."
EVAL_SHORT = "Two children are flying a green kite in the park."  # 10 words: matched whole
EVAL_TINY = "A dog barks loudly."  # under ngram_min_words: ignored


def example(
    i: int,
    query: str,
    positive: str,
    negative: str | None = None,
    task_type: str = "short-long",
    language: str = "English",
    **meta,
) -> dict:
    return {
        "id": f"ex-{i}",
        "task_type": task_type,
        "task": TASK,
        "language": language,
        "query": query,
        "positive": positive,
        "negative": negative,
        "fields": {},
        "meta": {"placeholders": meta},
    }


def write_run(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return directory


def write_sts_eval(directory: Path) -> Path:
    """A tiny STS Benchmark copy (sts-test.csv: score in column 5, sentences in 6 and 7)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [(EVAL_LONG, "A person rides a horse on a beach."), (EVAL_SHORT, EVAL_TINY)]
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t3.0\t{a}\t{b}" for i, (a, b) in enumerate(rows)]
    (directory / "sts-test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


HAND_MADE = [
    example(
        0,
        "how do honey bees tell each other where flowers are",
        BEES,
        "Bumblebees are larger and hairier than honey bees and nest in small colonies in the ground.",
    ),
    # a rewording of example 0: case, punctuation and one word changed -> a near-duplicate (MinHash), dropped
    example(
        1,
        "How do honey bees tell each other where flowers are?",
        BEES.replace("inside", "within"),
        "Wasps build paper nests from chewed wood fibres.",
    ),
    # a false negative: the negative answers the query, the positive does not
    example(
        2,
        "what is the boiling point of water at sea level",
        "The Eiffel Tower was completed in 1889 as the entrance arch of the World's Fair in Paris.",
        "At sea level, pure water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.",
    ),
    # contaminated: the positive quotes the evaluation set's long sentence (with other case and punctuation)
    example(
        3,
        "find a description of a beach scene",
        "Photo caption: a man in a red jacket is slowly riding a brown horse along the sandy beach, at dawn.",
        "A lighthouse stands on a rocky cliff above a stormy sea.",
    ),
    # contaminated through the query: a short evaluation sentence, whole
    example(
        4,
        "two children are flying a green kite in the park",
        "Kites fly best in steady winds of 10 to 20 km/h.",
        "Parks in the city close at ten in the evening.",
    ),
    # a tiny evaluation text inside a generated one: too common to count, kept
    example(
        5,
        "why do dogs bark at night",
        "A dog barks loudly when it hears unfamiliar sounds near its territory.",
        "Cats are mostly active at dawn and dusk.",
    ),
    # the same text as example 0 in another task group: groups are deduplicated apart, kept
    example(6, "how do honey bees tell each other where flowers are", BEES, None, task_type="short-short"),
    # without a negative too. With mine="fill" each has one candidate, the other's positive: ex-7 gets BEES (MiniLM: 0.49
    # against its positive's 0.76), but ex-6 gets none, since MiniLM scores ex-7's positive 0.66 for ex-6's query, above
    # 0.95 x its own positive's 0.62: the positive-aware ceiling refuses a likely false negative
    example(7, "what do bees make from nectar", "Bees turn flower nectar into honey.", None, task_type="short-short"),
]


# --- near-duplicates -------------------------------------------------------------------------------------------------


def _greedy_exact(texts: list[str], groups: list[str], threshold: float, size: int) -> dict[int, tuple[int, float]]:
    """The reference: every pair compared exactly, first of each cluster kept."""
    sets = [shingles(tokens(t), size) for t in texts]
    kept: list[int] = []
    found = {}
    for i in range(len(texts)):
        best = max(((jaccard(sets[i], sets[j]), -j) for j in kept if groups[j] == groups[i]), default=None)
        if best is not None and best[0] >= threshold:
            found[i] = (-best[1], best[0])
        else:
            kept.append(i)
    return found


def test_minhash_lsh_finds_what_an_exact_pairwise_search_finds():
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(300)]
    bases = [[rng.choice(vocabulary) for _ in range(40)] for _ in range(30)]
    texts, groups = [], []
    for n, base in enumerate(bases):  # each base with 0-3 variants that change 0 to 7 of its 40 words
        for _ in range(rng.randint(1, 4)):
            words = list(base)
            for position in rng.sample(range(40), rng.randint(0, 7)):
                words[position] = rng.choice(vocabulary)
            texts.append(" ".join(words))
            groups.append(["sts", "short-long"][n % 2] if rng.random() < 0.9 else "bitext")  # a few in another group
    found = minhash_duplicates(texts, groups, threshold=0.6, shingle_size=2)
    assert found == _greedy_exact(texts, groups, 0.6, 2)
    assert 10 < len(found) < len(texts) - 30  # the set has both: near-duplicates and texts kept


def test_embedding_duplicates_match_a_pairwise_search():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 16))
    vectors[30:40] = vectors[:10] + 0.05 * rng.normal(size=(10, 16))  # near copies of the first ten
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = ["a"] * 35 + ["b"] * 25  # copies 35..39 fall in another group than their originals: not duplicates
    found = embedding_duplicates(vectors, groups, threshold=0.95, block=7)  # blocks smaller than the groups
    expected = {i: i - 30 for i in range(30, 35)}
    assert {i: j for i, (j, _) in found.items()} == expected
    for i, (j, cosine) in found.items():
        assert cosine == pytest.approx(float(vectors[i] @ vectors[j]), abs=1e-4)


# --- decontamination -------------------------------------------------------------------------------------------------


def test_planted_evaluation_sentences_are_flagged(tmp_path):
    index = EvalIndex.from_folders([write_sts_eval(tmp_path / "sts" / "stsbenchmark")], n=13, min_words=8)
    assert [s.name for s in index.sets] == ["STSBenchmark"]  # the official name of the folder
    assert index.matches("Seen today: A MAN in a red jacket is slowly riding a brown horse along the sandy beach!") == [
        "STSBenchmark"
    ]
    assert index.matches("two children are flying a green kite in the park, said the report") == ["STSBenchmark"]
    assert index.matches("two children are flying a kite in the park near the lake") == []  # a word short of it
    assert index.matches("in the morning a dog barks loudly at the postman every day") == []  # too short to count
    assert index.matches("A man in a red jacket is slowly riding a brown horse") == []  # 11 words of a 15-word text


def test_cjk_evaluation_text_is_matched_per_character(tmp_path):
    folder = tmp_path / "tatoeba"
    folder.mkdir()
    (folder / "tatoeba.cmn-eng.cmn").write_text("我们今天下午去公园散步了\n", encoding="utf-8")
    (folder / "tatoeba.cmn-eng.eng").write_text("We went for a walk in the park this afternoon.\n", encoding="utf-8")
    index = EvalIndex.from_folders([tmp_path], n=13, min_words=8)  # found one level down
    assert index.matches("他说我们今天下午去公园散步了。") == ["Tatoeba"]
    assert index.matches("We went for a walk in the park this afternoon, he said.") == ["Tatoeba"]
    assert index.matches("我们明天去学校") == []


def test_a_folder_without_task_data_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthembedError, match="no evaluation task folder"):
        EvalIndex.from_folders([tmp_path / "empty"])


@pytest.mark.realdata
def test_a_planted_scifact_sentence_is_flagged(shared_data, tmp_path):
    corpus = shared_data / "beir" / "scifact" / "corpus.jsonl"
    document = json.loads(corpus.read_text(encoding="utf-8").splitlines()[10])["text"]
    quoted = " ".join(document.split()[5:25])
    index = EvalIndex.from_folders([shared_data / "beir" / "scifact"])
    assert index.matches(f"As a recent abstract puts it, {quoted}; this matters.") == ["SciFact"]
    assert index.matches("Vitamin D levels were measured in a new cohort of adults this year.") == []


# --- the whole curation, with MiniLM -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_embedder():
    from synthembed.model import load_embedder

    return load_embedder("all-MiniLM-L6-v2", max_len=128)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, minilm_embedder):
    root = tmp_path_factory.mktemp("curation")
    run = write_run(root / "run", HAND_MADE)
    evaluation = write_sts_eval(root / "eval" / "stsbenchmark")
    config = CurateConfig(embedder="all-MiniLM-L6-v2", margin=0.0, decontaminate=(str(evaluation),), mine="fill")
    stats = curate(run, root / "curated", config, embedder=minilm_embedder, progress=False)
    return root, stats


def test_each_filter_drops_its_known_example(curated):
    root, stats = curated
    dropped = {
        row["id"]: (row["filter"], row["reason"], row["detail"]) for row in read_jsonl(root / "curated", DROPPED_FILE)
    }
    assert dropped["ex-1"][:2] == ("near_duplicate", "minhash") and dropped["ex-1"][2]["duplicate_of"] == "ex-0"
    assert dropped["ex-2"][:2] == ("false_negative", "negative_outscores_positive")
    assert dropped["ex-3"][:2] == ("contamination", "STSBenchmark") and dropped["ex-3"][2]["fields"] == ["positive"]
    assert dropped["ex-4"][:2] == ("contamination", "STSBenchmark") and dropped["ex-4"][2]["fields"] == ["query"]
    assert set(dropped) == {"ex-1", "ex-2", "ex-3", "ex-4"}
    kept = read_examples(root / "curated" / "examples.jsonl")
    assert [e.id for e in kept] == ["ex-0", "ex-5", "ex-6", "ex-7"]  # the run's order and format
    assert stats == read_curation(root / "curated")
    assert stats["dropped_by_filter"] == {"near_duplicate": 1, "contamination": 2, "false_negative": 1, "judge": 0}
    assert stats["filters"]["contamination"]["by_eval_set"] == {"STSBenchmark": 2}
    assert (stats["input"], stats["kept"], stats["dropped"]) == (8, 4, 4)
    # mining: ex-7 filled from its group's documents, ex-6 left without (the ceiling); the others kept theirs
    mining = stats["filters"]["mining"]
    assert (mining["filled"], mining["replaced"], mining["no_candidate"]) == (1, 0, 1)
    assert (kept[2].negative, kept[3].negative) == (None, BEES)
    assert kept[3].meta.model_extra["curation"]["negative"] == {"mined": True, "was": None}
    assert kept[0].negative == HAND_MADE[0]["negative"] and "curation" not in kept[0].meta.model_extra
    rows = {(r["filter"], r["reason"]): r["examples"] for r in counts_table(stats)}
    assert rows[("near_duplicate", "minhash")] == 1 and rows[("false_negative", "short-long")] == 1


def test_margins_are_the_cosines_sentence_transformers_computes(curated, minilm):
    """The filter's scores against sentence-transformers' own MiniLM (the reference implementation)."""
    from sentence_transformers import SentenceTransformer

    root, stats = curated
    scores = {row["id"]: row for row in read_jsonl(root / "curated", SCORES_FILE)}
    by_id = {row["id"]: row for row in HAND_MADE}
    # scored: what survived the filters before it (ex-1, ex-3 and ex-4 were already dropped)
    assert set(scores) == {"ex-0", "ex-2", "ex-5", "ex-6", "ex-7"}
    model = SentenceTransformer(str(minilm), device="cpu")
    for id_, row in scores.items():
        texts = [by_id[id_]["query"], by_id[id_]["positive"], by_id[id_]["negative"] or ""]
        q, p, n = model.encode(texts, normalize_embeddings=True)
        assert row["positive"] == pytest.approx(float(q @ p), abs=2e-3)
        if by_id[id_]["negative"] is None:
            assert row["negative"] is None and row["margin"] is None
        else:
            assert row["margin"] == pytest.approx(float(q @ p - q @ n), abs=4e-3)
    assert scores["ex-2"]["margin"] < -0.5  # the known false negative, by far
    assert scores["ex-0"]["margin"] > 0 and scores["ex-5"]["margin"] > 0  # on-topic negatives, below their positives
    assert stats["filters"]["false_negative"]["margins"]["negative_wins"] == 1


def test_mined_negatives_stay_below_the_positive_aware_ceiling(minilm_embedder):
    from synthembed.training.mining import mine_synthetic

    topics = ["bees", "volcanoes", "tax law", "chess", "bread", "trains", "jazz", "comets"]
    examples = [
        Example(
            id=f"e{i}",
            task_type="short-long",
            task=TASK,
            language="English",
            query=f"question {k} about {topic}",
            positive=f"An answer about {topic}, part {k}.",
        )
        for i, (topic, k) in enumerate(itertools.product(topics, range(3)))
    ]
    mined = mine_synthetic(minilm_embedder, examples, depth=5, max_positive_ratio=0.9, seed=0)
    assert set(mined) == {e.id for e in examples}
    negatives = [mined[e.id][0] for e in examples]
    assert all(n != e.positive for n, e in zip(negatives, examples, strict=True))
    q, p, n = (
        minilm_embedder.encode(texts, show_progress=False)
        for texts in ([e.query for e in examples], [e.positive for e in examples], negatives)
    )
    assert np.all(np.einsum("nd,nd->n", q, n) <= 0.9 * np.einsum("nd,nd->n", q, p) + 1e-5)
    unguarded = mine_synthetic(minilm_embedder, examples, depth=1, max_positive_ratio=None)
    # without the ceiling, the top hit for a query is mostly its own topic's other answers (a likely false negative)
    assert sum(topic in unguarded[e.id][0] for e in examples for topic in topics if topic in e.query) >= 16


def test_positive_aware_mining_skips_documents_scoring_near_the_positive():
    from synthembed.training.mining import mine_embedding

    class Fixed:  # an embedder with chosen vectors: cosines to the query 0.9 (p), 0.88 (a), 0.6 (b), 0.3 (c)
        vectors = {"q": [1, 0], "p": [0.9, 0.436], "a": [0.88, 0.475], "b": [0.6, 0.8], "c": [0.3, 0.954]}

        def encode_documents(self, texts):
            return np.array([self.vectors[t] for t in texts])

        def encode_queries(self, texts, task=None):
            return np.array([self.vectors[t] for t in texts])

    corpus = {d: {"title": "", "text": d} for d in "pabc"}
    args = (Fixed(), corpus, {"q": "q"}, {"q": {"p": 1}})
    assert mine_embedding(*args, depth=1) == {"q": ["a"]}  # the default: the top non-relevant hit
    assert mine_embedding(*args, depth=1, max_positive_ratio=0.95) == {"q": ["b"]}  # 0.88 > 0.95 * 0.9
    assert mine_embedding(*args, depth=2, skip=1) == {"q": ["b"]}  # the window [1, 2)
    with pytest.raises(SynthembedError, match="skip"):
        mine_embedding(*args, depth=2, skip=2)


# --- the judge ---------------------------------------------------------------------------------------------------------


class ScriptedJudge:
    """A chat backend that grades by keywords in each candidate: RELEVANT 3, ONTOPIC 1, anything else 0; a query with
    GERMAN is in the wrong language, one with GARBLE gets a reply that is no verdict."""

    concurrency = 4

    def __init__(self):
        self.calls = 0

    @staticmethod
    def _grade(text: str) -> int:
        return 3 if "RELEVANT" in text else 1 if "ONTOPIC" in text else 0

    async def complete(self, requests):
        self.calls += len(requests)
        await asyncio.sleep(0)
        replies = []
        for request in requests:
            prompt = request.messages[0]["content"]
            blocks = prompt.split("<<<\n")[1:]
            query, candidates = blocks[0].split("\n>>>")[0], [b.split("\n>>>")[0] for b in blocks[1:]]
            if "GARBLE" in query:
                replies.append(ChatResponse("I would rather not grade this.", model=request.model))
                continue
            verdict = {"A": self._grade(candidates[0]), "language_ok": "GERMAN" not in query, "well_formed": True}
            if len(candidates) > 1:
                verdict["B"] = self._grade(candidates[1])
            replies.append(
                ChatResponse(
                    f"```json\n{json.dumps(verdict)}\n```", model=request.model, prompt_tokens=50, completion_tokens=20
                )
            )
        return replies


JUDGED = [
    example(0, "q0", "RELEVANT answer zero", "ONTOPIC text zero"),  # kept: ok
    example(1, "q1", "ONTOPIC text one", "RELEVANT answer one"),  # the judge prefers the negative: swapped
    example(2, "q2 GERMAN", "RELEVANT answer two", "ONTOPIC text two"),  # wrong language: dropped
    example(3, "q3", "RELEVANT answer three", "RELEVANT answer three b"),  # a false negative: dropped
    example(4, "q4 GARBLE", "RELEVANT answer four", "ONTOPIC text four"),  # no verdict: kept
    example(5, "q5", "unrelated text five", None, task_type="short-short"),  # positive not relevant: dropped
    example(6, "q6", "RELEVANT answer six", "unrelated text six"),  # an easy negative: kept, counted
    example(
        7,
        "q7",
        "ONTOPIC text seven",
        "RELEVANT answer seven",
        task_type="bitext",
        src_lang="English",
        tgt_lang="German",
    ),  # swapped
]


def test_the_judge_drops_relabels_and_resumes_from_its_cache(tmp_path):
    from synthembed.curation.judge import judge_requests

    examples = [Example.model_validate(r) for r in JUDGED]
    requests, flipped = judge_requests(examples, "judge-model", seed=0)
    assert any(flipped) and not all(flipped)  # both orders occur: the grades are mapped back from A/B
    assert "in English and the candidates in German" in requests[7].messages[0]["content"]
    run = write_run(tmp_path / "run", JUDGED)
    config = CurateConfig(near_dup_threshold=None, judge_model="judge-model")
    backend = ScriptedJudge()
    stats = curate(run, tmp_path / "out", config, judge_backend=backend, progress=False)
    judge = stats["filters"]["judge"]
    assert judge["by_reason"] == {
        "ok": 1,
        "negative_preferred": 2,
        "wrong_language": 1,
        "negative_as_relevant": 1,
        "unparsed": 1,
        "positive_not_relevant": 1,
        "negative_off_topic": 1,
    }
    assert (judge["dropped"], judge["relabelled"], stats["relabelled"]) == (3, 2, 2)
    kept = {e.id: e for e in read_examples(tmp_path / "out" / "examples.jsonl")}
    assert sorted(kept) == ["ex-0", "ex-1", "ex-4", "ex-6", "ex-7"]
    assert (kept["ex-1"].positive, kept["ex-1"].negative) == ("RELEVANT answer one", "ONTOPIC text one")
    assert kept["ex-1"].meta.model_extra["curation"]["relabelled"]["reason"] == "negative_preferred"
    assert kept["ex-0"].positive == "RELEVANT answer zero"
    assert backend.calls == 8 and judge["requests"] == 8
    again = ScriptedJudge()  # a second session: every verdict comes from the cache, nothing is sent
    rerun = curate(run, tmp_path / "out", config, judge_backend=again, progress=False)
    assert again.calls == 0 and rerun["filters"]["judge"]["cache_hits"] == 8
    assert rerun["filters"]["judge"]["by_reason"] == judge["by_reason"]


def test_the_judge_through_the_loopback_stand_in_keeps_what_it_cannot_read(tmp_path):
    from synthembed.generation.backends import OpenAIBackend
    from synthembed.testing.loopback import LoopbackServer

    run = write_run(tmp_path / "run", JUDGED[:3])
    with LoopbackServer() as server:  # it answers a plain chat with sentences, not a verdict
        backend = OpenAIBackend(base_url=server.base_url, concurrency=2, timeout=10)
        stats = curate(
            run, tmp_path / "out", CurateConfig(judge_model="loopback"), judge_backend=backend, progress=False
        )
        assert server.served["chat"] == 3
    assert stats["filters"]["judge"]["by_reason"] == {"unparsed": 3} and stats["kept"] == 3


# --- the command and training on its output ----------------------------------------------------------------------------


def test_curate_command_writes_what_training_reads(tmp_path, capsys):
    from synthembed.training.data import load_pairs

    run = write_run(tmp_path / "run", HAND_MADE)
    evaluation = write_sts_eval(tmp_path / "eval" / "stsbenchmark")
    code = main(
        ["curate", "--run", str(run), "--out", str(tmp_path / "curated"), "--decontaminate", str(evaluation), "--quiet"]
    )
    assert code == 0
    assert "8 examples -> 5 kept, 3 dropped" in capsys.readouterr().out
    pairs = load_pairs([str(tmp_path / "curated")], hard_negatives="none", progress=False)
    assert len(pairs) == 5 and all(p.query.startswith(f"Instruct: {TASK}") for p in pairs)
    assert main(["curate", "--run", str(run), "--out", str(run)]) == 2
    assert "that is the run being curated" in capsys.readouterr().err
    assert main(["curate", "--run", str(run), "--out", str(tmp_path / "x"), "--mine", "fill"]) == 2
    assert "needs an embedder" in capsys.readouterr().err


def test_margin_plot_draws_one_bar_stack_per_group():
    from synthembed import plots

    rows = [{"task_type": g, "margin": m} for g, m in [("sts", 0.2), ("sts", -0.1), ("bitext", 0.5), ("x", None)]]
    fig = plots.plot_score_margins(rows, margin=0.05)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["sts", "bitext", "drop below -0.05"]
    plots.plt.close(fig)


@pytest.mark.parametrize("name", ["curation.ngrams", "curation.dedup", "curation.judge", "training.mining"])
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(f"synthembed.{name}"))
    assert result.failed == 0 and result.attempted > 0
