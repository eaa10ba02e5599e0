"""Local copies of benchmark data as mteb tasks: mteb's own task classes and evaluators, only the data loading replaced.

    from synthembed.evaluation.tasks import local_task
    task = local_task("../shared/data/beir/scifact")            # -> mteb's SciFact, read from the BEIR files
    task = local_task("../shared/data/multilingual/tatoeba", languages=["deu", "fra"])
    mteb.evaluate(model, [task], cache=None)

A directory's kind is read from its files (DESIGN.md, "Command line"): retrieval = BEIR (corpus.jsonl, queries.jsonl,
qrels/test.tsv); STS = sts-test.csv or SICK.txt; classification = train.csv + test.csv; bitext = Tatoeba files
(tatoeba.<xxx>-eng.<xxx>) or FLORES files (<lang_Script>.devtest). Where the folder is a copy of an official mteb task
(scifact, stsbenchmark, sick-r, banking77, tatoeba, flores200) that task's class is subclassed, so its metadata and
protocol settings (main score, STS score range, classification undersampling, k values, ...) are mteb's exactly; any
other folder gets metadata built here on the abstract class of its kind.
"""

from __future__ import annotations

import hashlib
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

# mteb task type -> our kind name (the JSON's "kind"); types we have no local loader for still get a kind
MTEB_TYPE_TO_KIND = {
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


def detect_kind(path: str | Path) -> str:
    """The kind of a local task folder, read from its files; a clear error when it is none of them.

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


def content_hash(path: str | Path) -> str:
    """sha256 over the names and bytes of the files in a task folder (recorded with results; the data's identity)."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --- loaders: files -> the dataset structure each mteb abstract class expects -------------------------------------


def spread(rows: list, n: int) -> list:
    """`n` rows evenly spaced through `rows`, in order: files sorted by label or score still give a mixed subset.

    >>> spread(list(range(10)), 3)
    [0, 3, 6]
    """
    if n >= len(rows):
        return list(rows)
    return [rows[(i * len(rows)) // n] for i in range(n)]


def _load_retrieval(path: Path, split: str, limit: int | None) -> dict[str, Any]:
    """{"default": {split: RetrievalSplitData}}; with `limit`, the first `limit` queries and a corpus cut to their
    relevant documents plus the first 20 * limit others (small, fast, still a real ranking problem)."""
    from datasets import Dataset

    corpus, queries, qrels = read_beir(path, split=split)
    if not queries:
        raise SynthembedError(f"{path}: no query in queries.jsonl has judgements in qrels/{split}.tsv")
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


def _sts_file(path: Path) -> Path:
    for name in ("sts-test.csv", "SICK.txt"):
        if (path / name).is_file():
            return path / name
    raise SynthembedError(f"{path}: no sts-test.csv or SICK.txt")


def _load_sts(path: Path, split: str, limit: int | None):
    """DatasetDict {split: (sentence1, sentence2, score)} in file order (scores stay on the file's scale; mteb's
    task normalizes them with its min_score / max_score)."""
    from datasets import Dataset, DatasetDict

    rows = read_sts(_sts_file(path))
    if limit:
        rows = spread(rows, limit)
    if not rows:
        raise SynthembedError(f"{_sts_file(path)}: no sentence pairs")
    s1, s2, scores = zip(*rows, strict=True)
    return DatasetDict(
        {split: Dataset.from_dict({"sentence1": list(s1), "sentence2": list(s2), "score": list(scores)})}
    )


def label_ids(categories) -> dict[str, int]:
    """Category name -> label id by sorting names case-insensitively: the ids mteb's Banking77 data carries, which its
    seeded undersampling depends on (../shared/data/README.md)."""
    return {name: i for i, name in enumerate(sorted(set(categories), key=lambda c: (c.lower(), c)))}


def _load_classification(path: Path, split: str, limit: int | None):
    """DatasetDict {"train", split: (text, label)} with rows in CSV order (the undersampling is order dependent)."""
    from datasets import Dataset, DatasetDict

    for needed in ("train.csv", f"{split}.csv"):
        if not (path / needed).is_file():
            raise SynthembedError(f"{path} is not a classification folder: {needed} is missing")
    train = read_classification(path / "train.csv")
    test = read_classification(path / f"{split}.csv")
    if limit:
        train, test = spread(train, 4 * limit), spread(test, limit)
    if not train or not test:
        raise SynthembedError(f"{path}: train.csv and {split}.csv need at least one row each")
    ids = label_ids([c for _, c in train] + [c for _, c in test])

    def as_dataset(rows):
        return Dataset.from_dict({"text": [t for t, _ in rows], "label": [ids[c] for _, c in rows]})

    return DatasetDict({"train": as_dataset(train), split: as_dataset(test)})


def _flores_dir(path: Path) -> Path:
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
    codes = sorted(p.name[: -len(".devtest")] for p in _flores_dir(path).glob("*.devtest"))
    if FLORES_ENGLISH not in codes:
        raise SynthembedError(f"{_flores_dir(path)}: no {FLORES_ENGLISH}.devtest to mine against")
    return [f"{c}-{FLORES_ENGLISH}" for c in codes if c != FLORES_ENGLISH and _wanted(c, languages)]


def _load_tatoeba(path: Path, split: str, subsets: list[str], limit: int | None):
    """{"xxx-eng": DatasetDict {split: (sentence1 = xxx, sentence2 = eng)}}, as mteb's Tatoeba data is laid out."""
    from datasets import Dataset, DatasetDict

    pairs = read_tatoeba(path)
    dataset = {}
    for subset in subsets:
        left, right = pairs[subset.split("-")[0]]
        if limit:
            left, right = left[:limit], right[:limit]
        dataset[subset] = DatasetDict({split: Dataset.from_dict({"sentence1": left, "sentence2": right})})
    return dataset


def _load_flores(path: Path, split: str, subsets: list[str], limit: int | None):
    """DatasetDict {split: one column per language}: mteb's FLORES layout (parallel subsets, pairs named by column)."""
    from datasets import Dataset, DatasetDict

    sentences = read_flores(_flores_dir(path), split="devtest")
    needed = sorted({lang for subset in subsets for lang in subset.split("-")})
    columns = {lang: sentences[lang][:limit] if limit else sentences[lang] for lang in needed}
    return DatasetDict({split: Dataset.from_dict(columns)})


# --- tasks ---------------------------------------------------------------------------------------------------------


def _generic_metadata(kind: str, name: str, path: Path, languages: list[str] | None):
    """TaskMetadata for a folder with no official mteb counterpart, on the abstract class of its kind."""
    from mteb.abstasks.task_metadata import TaskMetadata

    type_, main_score = {
        "retrieval": ("Retrieval", "ndcg_at_10"),
        "sts": ("STS", "cosine_spearman"),
        "classification": ("Classification", "accuracy"),
        "bitext": ("BitextMining", "f1"),
    }[kind]
    return TaskMetadata(
        name=name,
        dataset={"path": str(path), "revision": "local"},
        description=f"local {kind} task read from {path}",
        type=type_,
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score=main_score,
    )


def _abstract_class(kind: str):
    from mteb.abstasks import AbsTaskBitextMining, AbsTaskClassification, AbsTaskRetrieval, AbsTaskSTS

    return {
        "retrieval": AbsTaskRetrieval,
        "sts": AbsTaskSTS,
        "classification": AbsTaskClassification,
        "bitext": AbsTaskBitextMining,
    }[kind]


def local_task(
    path: str | Path,
    kind: str | None = None,
    languages: list[str] | None = None,
    name: str | None = None,
    limit: int | None = None,
):
    """An mteb task (an instance of mteb's own task class) that reads its data from a local folder.

    Args:
        path: a folder in one of the shared data layouts (module docstring).
        kind: "retrieval", "sts", "classification" or "bitext"; default read from the files.
        languages: bitext only: the languages to mine (Tatoeba `deu`, FLORES `deu_Latn` or `deu`); default all on disk.
            Scores come back per language (one mteb subset each: `deu-eng`, `deu_Latn-eng_Latn`).
        name: the official mteb task this folder is a copy of (default: guessed from the folder name); a name mteb does
            not know names a task built on the abstract class of its kind.
        limit: a small subset for quick runs: the first `limit` queries (retrieval, corpus cut to their relevant
            documents + 20 * limit others), `limit` pairs spread through the file (STS), `limit` test rows and
            4 * limit train rows spread through the files (classification), or the first `limit` lines per language.

    Example:
        >>> task = local_task("../shared/data/sts/stsbenchmark")  # doctest: +SKIP
        >>> task.metadata.name, task.metadata.main_score  # doctest: +SKIP
        ('STSBenchmark', 'cosine_spearman')
    """
    import mteb

    path = Path(path).expanduser()
    detected = detect_kind(path)
    kind = kind or detected
    if kind not in KINDS:
        raise SynthembedError(f"unknown local task kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != detected:
        raise SynthembedError(f"{path} holds a {detected} task, not {kind}")
    if limit is not None and limit < 1:
        raise SynthembedError(f"limit must be at least 1, got {limit}")

    official = name or official_name(path)
    base = None
    if official:
        try:
            base = mteb.get_task(official)
        except (KeyError, ValueError):
            base = None
    if base is not None:
        base_cls = type(base)
        if _abstract_class(kind) not in base_cls.__mro__:
            raise SynthembedError(f"{path} holds a {kind} task but mteb's {official} is a {base.metadata.type} task")
        metadata = base.metadata
    else:
        base_cls = _abstract_class(kind)
        metadata = _generic_metadata(kind, name or f"local:{path.resolve().name}", path.resolve(), languages)

    split = metadata.eval_splits[0]
    subsets: list[str] | None = None
    is_flores = False
    if kind == "bitext":
        is_flores = any(_flores_dir(path).glob("*.devtest"))
        subsets = flores_subsets(path, languages) if is_flores else tatoeba_subsets(path, languages)
        if not subsets:
            raise SynthembedError(f"{path}: none of the languages {languages} is on disk")

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        if kind == "retrieval":
            self.dataset = _load_retrieval(path, split, limit)
        elif kind == "sts":
            self.dataset = _load_sts(path, split, limit)
        elif kind == "classification":
            self.dataset = _load_classification(path, split, limit)
        elif is_flores:
            self.dataset = _load_flores(path, split, subsets, limit)
        else:
            self.dataset = _load_tatoeba(path, split, subsets, limit)
        self.data_loaded = True

    attrs: dict[str, Any] = {"metadata": metadata, "load_data": load_data, "__module__": __name__}
    if kind == "bitext":
        # FLORES is one table with a column per language (pairs named by column), Tatoeba one subset per language
        attrs["parallel_subsets"] = is_flores
    cls = type(f"Local{base_cls.__name__}", (base_cls,), attrs)
    task = cls()
    if subsets is not None:
        task.hf_subsets = subsets
    task.local_path = str(path)
    task.local_limit = limit
    return task
