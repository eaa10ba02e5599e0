"""Local copies of benchmark data: which task kind a folder holds, which official mteb task it copies, and its files
read into the datasets mteb's task classes expect (tasks.py builds the tasks on them).

    from synthembed.evaluation.task_files import detect_kind, load_sts
    detect_kind("../shared/data/sts/sick-r")                    # 'sts'
    load_sts(Path("../shared/data/sts/sick-r"), "test", limit=40)  # DatasetDict {"test": (sentence1, sentence2, score)}

A folder's kind is read from its files (docs/design.md, "Data formats"): retrieval = BEIR (corpus.jsonl, queries.jsonl,
qrels/test.tsv); STS = sts-test.csv or SICK.txt; classification = train.csv + test.csv; bitext = Tatoeba files
(tatoeba.<xxx>-eng.<xxx>) or FLORES files (<lang_Script>.devtest). Task kinds are our word for what mteb calls a task's
type; MTEB_KINDS translates.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data import read_beir, read_classification, read_flores, read_sts, read_tatoeba
from ..errors import SynthembedError

KINDS = ("retrieval", "sts", "classification", "bitext")

# folder name (lower case) -> the official mteb task it is a copy of (../shared/data/README.md)
OFFICIAL_TASKS = {
    "scifact": "SciFact",
    "stsbenchmark": "STSBenchmark",
    "sick-r": "SICK-R",
    "sickr": "SICK-R",
    "banking77": "Banking77Classification",
    "tatoeba": "Tatoeba",
    "flores200": "FloresBitextMining",
    "flores": "FloresBitextMining",
}

# mteb's name for a task kind (its metadata's `type`) -> ours (the results' "kind"); kinds we have no local loader for
# still get a name
MTEB_KINDS = {
    "Retrieval": "retrieval",
    "STS": "sts",
    "Classification": "classification",
    "BitextMining": "bitext",
    "Clustering": "clustering",
    "PairClassification": "pair-classification",
    "Reranking": "reranking",
    "Summarization": "summarization",
    "MultilabelClassification": "classification",
    "InstructionRetrieval": "retrieval",
}

FLORES_ENGLISH = "eng_Latn"


def kind_of(task) -> str:
    """Our task kind of an mteb task (from its metadata's type).

    >>> kind_of(mteb.get_task("SciFact"))  # doctest: +SKIP
    'retrieval'
    """
    return MTEB_KINDS.get(task.metadata.type, task.metadata.type.lower())


def detect_kind(path: str | Path) -> str:
    """The task kind of a local task folder, read from its files; a clear error when it is none of them.

    >>> detect_kind("../shared/data/sts/sick-r")  # doctest: +SKIP
    'sts'
    """
    path = Path(path)
    if not path.exists():
        raise SynthembedError(f"task directory {path} does not exist")
    if not path.is_dir():
        raise SynthembedError(f"{path} is not a directory (a local task is a folder in one of the shared data layouts)")
    if (path / "corpus.jsonl").is_file() or (path / "queries.jsonl").is_file() or (path / "qrels").is_dir():
        return "retrieval"
    if (path / "sts-test.csv").is_file() or (path / "SICK.txt").is_file():
        return "sts"
    if (path / "train.csv").is_file() or (path / "test.csv").is_file():
        return "classification"
    if any(path.glob("tatoeba.*-eng.*")) or any(path.glob("*.devtest")) or (path / "devtest").is_dir():
        return "bitext"
    raise SynthembedError(
        f"{path}: not a task folder: expected BEIR files (corpus.jsonl, queries.jsonl, qrels/test.tsv), "
        "sts-test.csv or SICK.txt, train.csv + test.csv, tatoeba.<xxx>-eng.<xxx> or FLORES <lang>.devtest files"
    )


def official_name(path: str | Path) -> str | None:
    """The official mteb task a folder is a copy of, by folder name (and for FLORES the folder above devtest/)."""
    path = Path(path).resolve()
    for part in (path.name, path.parent.name if path.name == "devtest" else ""):
        name = OFFICIAL_TASKS.get(part.lower())
        if name:
            return name
    if (path / "SICK.txt").is_file():
        return "SICK-R"
    return None


def spread(rows: list, n: int) -> list:
    """`n` rows evenly spaced through `rows`, in order: files sorted by label or score still give a mixed subset.

    >>> spread(list(range(10)), 3)
    [0, 3, 6]
    """
    if n >= len(rows):
        return list(rows)
    return [rows[(i * len(rows)) // n] for i in range(n)]


def refuse_empty(texts: Iterable[tuple[str, str]], file: Path, what: str) -> None:
    """A SynthembedError naming `file` and the first few labels of the (label, text) pairs whose text is empty: mteb
    would embed "" like any text and score the task, quietly, lower.

    >>> refuse_empty([("q1", "a"), ("q2", " ")], Path("queries.jsonl"), "queries")
    Traceback (most recent call last):
    synthembed.errors.SynthembedError: queries.jsonl: 1 empty queries (q2)
    """
    empty = [label for label, text in texts if not text.strip()]
    if empty:
        raise SynthembedError(f"{file}: {len(empty)} empty {what} ({_first(empty)})")


def _first(labels: list[str], n: int = 5) -> str:
    return ", ".join(labels[:n]) + (", ..." if len(labels) > n else "")


def check_retrieval(path: Path, split: str, corpus: dict, queries: dict, qrels: dict) -> None:
    """Refuse BEIR files that would score without error but mean nothing: no documents, empty texts, and judgements
    naming a query or a relevant document that is not in the files (the documents to find would be missing, so every
    model scores lower, down to 0). A judgement of score 0 naming a missing document changes no score and is allowed."""
    qrels_file = path / "qrels" / f"{split}.tsv"
    if not corpus:
        raise SynthembedError(f"{path / 'corpus.jsonl'}: no documents")
    if not queries:
        raise SynthembedError(f"{path}: no query in queries.jsonl has judgements in qrels/{split}.tsv")
    unknown = [qid for qid in qrels if qid not in queries]
    if unknown:
        raise SynthembedError(f"{qrels_file}: {len(unknown)} judged queries are not in queries.jsonl ({_first(unknown)})")
    missing = sorted({did for judged in qrels.values() for did, score in judged.items() if score > 0 and did not in corpus})
    if missing:
        raise SynthembedError(
            f"{qrels_file}: {len(missing)} relevant documents are not in corpus.jsonl ({_first(missing)})"
        )
    refuse_empty(((did, doc["title"] + doc["text"]) for did, doc in corpus.items()), path / "corpus.jsonl", "documents")
    refuse_empty(queries.items(), path / "queries.jsonl", "queries")


def load_retrieval(path: Path, split: str, limit: int | None) -> dict[str, Any]:
    """{"default": {split: RetrievalSplitData}}; with `limit`, the first `limit` queries and a corpus cut to their
    relevant documents plus the first 20 * limit others (small, fast, still a real ranking problem)."""
    from datasets import Dataset

    corpus, queries, qrels = read_beir(path, split=split)
    check_retrieval(path, split, corpus, queries, qrels)
    if limit:
        keep = list(queries)[:limit]
        queries = {qid: queries[qid] for qid in keep}
        qrels = {qid: qrels[qid] for qid in keep}
        relevant = {did for qid in keep for did in qrels[qid]}
        others = [did for did in corpus if did not in relevant][: 20 * limit]
        wanted = relevant | set(others)
        corpus = {did: doc for did, doc in corpus.items() if did in wanted}  # file order kept
    corpus_ds = Dataset.from_dict(
        {
            "id": list(corpus),
            "title": [d["title"] for d in corpus.values()],
            "text": [d["text"] for d in corpus.values()],
        }
    )
    queries_ds = Dataset.from_dict({"id": list(queries), "text": list(queries.values())})
    split_data = {"corpus": corpus_ds, "queries": queries_ds, "relevant_docs": qrels, "top_ranked": None}
    return {"default": {split: split_data}}


def sts_file(path: Path, split: str) -> Path | None:
    """The file holding an STS split: sts-<split>.csv (STS Benchmark's sts-dev.csv, sts-test.csv), or SICK.txt, whose
    pairs are all test (SICK-R scores all 9,927); None where the folder has no such file."""
    for candidate in (path / f"sts-{split}.csv", path / "SICK.txt" if split == "test" else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def load_sts(path: Path, split: str, limit: int | None):
    """DatasetDict {split: (sentence1, sentence2, score)} in file order (scores stay on the file's scale; mteb's
    task normalizes them with its min_score / max_score)."""
    from datasets import Dataset, DatasetDict

    file = sts_file(path, split)
    if file is None:
        raise SynthembedError(f"{path}: no sts-{split}.csv" + (" or SICK.txt" if split == "test" else ""))
    rows = read_sts(file)
    if limit:
        rows = spread(rows, limit)
    if not rows:
        raise SynthembedError(f"{file}: no sentence pairs")
    sentences = [(f"pair {i + 1}", text) for i, (s1, s2, _) in enumerate(rows) for text in (s1, s2)]
    refuse_empty(sentences, file, "sentences")
    s1, s2, scores = zip(*rows, strict=True)
    return DatasetDict(
        {split: Dataset.from_dict({"sentence1": list(s1), "sentence2": list(s2), "score": list(scores)})}
    )


def label_ids(categories) -> dict[str, int]:
    """Category name -> label id by sorting names case-insensitively: the ids mteb's Banking77 data carries, which its
    seeded undersampling depends on (../shared/data/README.md)."""
    return {name: i for i, name in enumerate(sorted(set(categories), key=lambda c: (c.lower(), c)))}


def load_classification(path: Path, split: str, limit: int | None):
    """DatasetDict {"train", split: (text, label)} with rows in CSV order (the undersampling is order dependent)."""
    from datasets import Dataset, DatasetDict

    for needed in ("train.csv", f"{split}.csv"):
        if not (path / needed).is_file():
            raise SynthembedError(f"{path} is not a classification folder: {needed} is missing")
    train = read_classification(path / "train.csv")
    test = read_classification(path / f"{split}.csv")
    for name, rows in (("train.csv", train), (f"{split}.csv", test)):
        refuse_empty(((f"row {i + 1}", text) for i, (text, _) in enumerate(rows)), path / name, "texts")
    if limit:
        train, test = spread(train, 4 * limit), spread(test, limit)
    if not train or not test:
        raise SynthembedError(f"{path}: train.csv and {split}.csv need at least one row each")
    ids = label_ids([c for _, c in train] + [c for _, c in test])

    def as_dataset(rows):
        return Dataset.from_dict({"text": [t for t, _ in rows], "label": [ids[c] for _, c in rows]})

    return DatasetDict({"train": as_dataset(train), split: as_dataset(test)})


def flores_dir(path: Path) -> Path:
    return path / "devtest" if (path / "devtest").is_dir() else path


def _wanted(code: str, languages: list[str] | None) -> bool:
    """`deu` matches Tatoeba's deu and FLORES's deu_Latn; `deu_Latn` matches only that."""
    if not languages:
        return True
    return any(code == lang or code.split("_")[0] == lang for lang in languages)


def tatoeba_subsets(path: Path, languages: list[str] | None) -> list[str]:
    """Subsets `xxx-eng` present on disk (and asked for)."""
    codes = sorted({p.name.split(".")[1].split("-")[0] for p in Path(path).glob("tatoeba.*-eng.*")})
    return [f"{c}-eng" for c in codes if _wanted(c, languages)]


def flores_subsets(path: Path, languages: list[str] | None) -> list[str]:
    """Subsets `xxx_Script-eng_Latn`: every language present on disk (and asked for) mined against English."""
    codes = sorted(p.name[: -len(".devtest")] for p in flores_dir(path).glob("*.devtest"))
    if FLORES_ENGLISH not in codes:
        raise SynthembedError(f"{flores_dir(path)}: no {FLORES_ENGLISH}.devtest to mine against")
    return [f"{c}-{FLORES_ENGLISH}" for c in codes if c != FLORES_ENGLISH and _wanted(c, languages)]


def load_tatoeba(path: Path, split: str, subsets: list[str], limit: int | None):
    """{"xxx-eng": DatasetDict {split: (sentence1 = xxx, sentence2 = eng)}}, as mteb's Tatoeba data is laid out."""
    from datasets import Dataset, DatasetDict

    pairs = read_tatoeba(path)
    dataset = {}
    for subset in subsets:
        lang = subset.split("-")[0]
        left, right = pairs[lang]
        for side, sentences in ((lang, left), ("eng", right)):
            lines = ((f"line {i + 1}", text) for i, text in enumerate(sentences))
            refuse_empty(lines, path / f"tatoeba.{lang}-eng.{side}", "sentences")
        if limit:
            left, right = left[:limit], right[:limit]
        dataset[subset] = DatasetDict({split: Dataset.from_dict({"sentence1": left, "sentence2": right})})
    return dataset


def load_flores(path: Path, split: str, subsets: list[str], limit: int | None):
    """DatasetDict {split: one column per language}: mteb's FLORES layout (parallel subsets, pairs named by column)."""
    from datasets import Dataset, DatasetDict

    sentences = read_flores(flores_dir(path), split="devtest")
    needed = sorted({lang for subset in subsets for lang in subset.split("-")})
    for lang in needed:
        lines = ((f"line {i + 1}", text) for i, text in enumerate(sentences[lang]))
        refuse_empty(lines, flores_dir(path) / f"{lang}.devtest", "sentences")
    columns = {lang: sentences[lang][:limit] if limit else sentences[lang] for lang in needed}
    return DatasetDict({split: Dataset.from_dict(columns)})
