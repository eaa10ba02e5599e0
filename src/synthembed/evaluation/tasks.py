"""Local copies of benchmark data as mteb tasks: mteb's own abstract task classes and evaluators, only the data loading
replaced. One declared class per task kind.

    from synthembed.evaluation.tasks import local_task
    task = local_task("../shared/data/beir/scifact")            # -> a LocalRetrievalTask with SciFact's metadata
    task = local_task("../shared/data/multilingual/tatoeba", languages=["deu", "fra"])
    mteb.evaluate(model, [task], cache=None)

Where the folder is a copy of an official mteb task (scifact, stsbenchmark, sick-r, banking77, tatoeba, flores200) the
task carries that task's metadata and the protocol settings its class adds (STS score range, FLORES's parallel subsets),
so main score, undersampling, k values and the rest are mteb's exactly; any other folder gets metadata built here
(`local_metadata`) for the abstract class of its kind. How a folder's files are read is task_files.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mteb
from mteb.abstasks import AbsTask, AbsTaskBitextMining, AbsTaskClassification, AbsTaskRetrieval, AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from ..errors import SynthembedError
from .task_files import (
    KINDS,
    MTEB_KINDS,
    detect_kind,
    flores_dir,
    flores_subsets,
    kind_of,
    load_classification,
    load_flores,
    load_retrieval,
    load_sts,
    load_tatoeba,
    official_name,
    sts_file,
    tatoeba_subsets,
)

LOCAL_REVISION = "local"  # the dataset revision in the metadata of a folder with no mteb counterpart


class _PublishedMetadata:
    """A task's published metadata, per instance. mteb keeps it on the task's class (each mteb task is a class of its
    own) and lets an instance carry a filtered copy in its __dict__, dropped again by unload_data; one declared class
    serves many folders here, so the published metadata lives on the instance and this (non-data) descriptor serves it
    wherever the instance holds no copy. On the class it is None, as on mteb's abstract classes."""

    def __get__(self, task, owner=None):
        return None if task is None else task.published_metadata


class LocalTask:
    """What every local task adds to its mteb abstract class: metadata given per instance, data read from `path`.

    Args:
        path: the folder.
        metadata: the official task's metadata, or `local_metadata`'s.
        limit: a small subset for quick runs (see local_task).
        settings: protocol settings set on the task before mteb's own initialisation (an official class's additions).
    """

    def __init__(
        self, path: Path, metadata: TaskMetadata, limit: int | None = None, settings: dict[str, Any] | None = None
    ):
        self.published_metadata = metadata
        for key, value in (settings or {}).items():
            setattr(self, key, value)
        super().__init__()  # mteb's AbsTask: seed, hf_subsets from the metadata
        self.local_path = str(path)
        self.local_limit = limit
        self.local_size: int | None = None  # what the data held when it was last read (size())
        self.local_subset: str | None = None  # the official task's subset the folder is scored as (bind_subset)
        held = [split for split in metadata.eval_splits if self.holds(Path(path), split)]
        if not held:
            raise SynthembedError(f"{path} holds none of {metadata.name}'s evaluation splits "
                                  f"({', '.join(metadata.eval_splits)}): {self.split_files}")  # fmt: skip
        self.filter_eval_splits(held)  # mteb scores these splits only: an official split the folder lacks is not faked

    @property
    def local_split(self) -> str:
        return self.eval_splits[0]

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        parts = [self.read_files(Path(self.local_path), split) for split in self.eval_splits]
        dataset = parts[0]
        for part in parts[1:]:  # {split: ...}, or under the subset key ({"default": {split: ...}}) for retrieval
            for key, value in part.items():
                dataset[key] = {**dataset[key], **value} if self.subset_keyed else value
        # counted here because mteb unloads the data once the task is scored; tables name a subset by this count
        self.local_size = self.size(dataset)
        if self.local_subset is not None:  # the folder's data under the official subset's name
            dataset = {self.local_subset: dataset["default"] if self.subset_keyed else dataset}
        self.dataset = dataset
        self.data_loaded = True

    metadata = _PublishedMetadata()
    size_unit = ""  # what size() counts
    subset_keyed = False  # read_files gives {subset: {split: ...}} rather than {split: ...}
    split_files = ""  # which file holds a split, for the message when a folder holds none of a task's splits

    def holds(self, path: Path, split: str) -> bool:
        """Whether the folder has the data of `split` (one file per split: sts-dev.csv, test.csv, qrels/test.tsv)."""
        return split == self.published_metadata.eval_splits[0]  # a layout without split files: the first split

    def read_files(self, path: Path, split: str):
        raise NotImplementedError

    def size(self, dataset) -> int:
        """How many of the scored items (size_unit) `dataset`, as read_files returns it, holds."""
        raise NotImplementedError


class LocalRetrievalTask(LocalTask, AbsTaskRetrieval):
    """BEIR files (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""

    size_unit = "queries"
    subset_keyed = True
    split_files = "qrels/<split>.tsv"

    def holds(self, path: Path, split: str) -> bool:
        return (path / "qrels" / f"{split}.tsv").is_file()

    def read_files(self, path: Path, split: str):
        return load_retrieval(path, split, self.local_limit)

    def size(self, dataset) -> int:
        return len(dataset["default"][self.local_split]["queries"])


class LocalSTSTask(LocalTask, AbsTaskSTS):
    """sts-test.csv (STS Benchmark) or SICK.txt; scores on the file's scale, normalized by mteb with min/max_score."""

    size_unit = "pairs"
    split_files = "sts-<split>.csv, or SICK.txt for test"

    def holds(self, path: Path, split: str) -> bool:
        return sts_file(path, split) is not None

    def read_files(self, path: Path, split: str):
        return load_sts(path, split, self.local_limit)

    def size(self, dataset) -> int:
        return len(dataset[self.local_split])


class LocalClassificationTask(LocalTask, AbsTaskClassification):
    """train.csv + test.csv (text, category), rows in file order (mteb's undersampling depends on it)."""

    size_unit = "test rows"  # the classifier's train rows are cut too (4x), but accuracy is over these
    split_files = "<split>.csv beside train.csv"

    def holds(self, path: Path, split: str) -> bool:
        return (path / f"{split}.csv").is_file()

    def read_files(self, path: Path, split: str):
        return load_classification(path, split, self.local_limit)

    def size(self, dataset) -> int:
        return len(dataset[self.local_split])


class LocalBitextTask(LocalTask, AbsTaskBitextMining):
    """Tatoeba files (one subset per language) or FLORES files (one table, a column per language: parallel subsets)."""

    def __init__(self, path: Path, metadata: TaskMetadata, subsets: list[str], limit: int | None = None,
                 settings: dict[str, Any] | None = None):  # fmt: skip
        super().__init__(path, metadata, limit, settings)
        self.parallel_subsets = any(flores_dir(path).glob("*.devtest"))
        self.hf_subsets = subsets

    def read_files(self, path: Path, split: str):
        if self.parallel_subsets:
            return load_flores(path, split, self.hf_subsets, self.local_limit)
        return load_tatoeba(path, split, self.hf_subsets, self.local_limit)

    size_unit = "pairs per language"

    def size(self, dataset) -> int:
        if self.parallel_subsets:  # one table, a column per language
            return len(dataset[self.local_split])
        return max(len(languages[self.local_split]) for languages in dataset.values())


TASK_CLASSES: dict[str, type[LocalTask]] = {
    "retrieval": LocalRetrievalTask,
    "sts": LocalSTSTask,
    "classification": LocalClassificationTask,
    "bitext": LocalBitextTask,
}
# The abstract mteb class of each kind; and for local_metadata mteb's name for the kind and its usual main score
_ABSTRACT = {
    "retrieval": AbsTaskRetrieval, "sts": AbsTaskSTS, "classification": AbsTaskClassification,
    "bitext": AbsTaskBitextMining,
}  # fmt: skip
_MTEB_NAME_AND_SCORE = {
    "retrieval": ("Retrieval", "ndcg_at_10"), "sts": ("STS", "cosine_spearman"),
    "classification": ("Classification", "accuracy"), "bitext": ("BitextMining", "f1"),
}  # fmt: skip


def local_metadata(kind: str, name: str, path: Path) -> TaskMetadata:
    """TaskMetadata for a folder with no official mteb counterpart, for the abstract class of its kind."""
    mteb_name, main_score = _MTEB_NAME_AND_SCORE[kind]
    return TaskMetadata(
        name=name,
        dataset={"path": str(path), "revision": LOCAL_REVISION},
        description=f"local {kind} task read from {path}",
        type=mteb_name,
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score=main_score,
    )


def kind_prompt(metadata: TaskMetadata) -> str | None:
    """The instruction of the abstract class of a local task mteb does not know (local_metadata's), None for any other.

    mteb looks an abstract class's prompt up by task name among its own task classes; a folder with no mteb counterpart
    is not among them, so its kind answers instead.
    """
    if metadata.dataset.get("revision") != LOCAL_REVISION:
        return None
    return _ABSTRACT[MTEB_KINDS[metadata.type]].abstask_prompt


def protocol_settings(official: AbsTask, kind: str) -> dict[str, Any]:
    """The plain class attributes an official task's class adds on top of its kind's abstract class (SICK-R's
    min_score / max_score, FLORES's parallel_subsets, ...): the settings a local copy needs to score as mteb does."""
    mro = type(official).__mro__
    settings: dict[str, Any] = {}
    for cls in reversed(mro[: mro.index(_ABSTRACT[kind])]):
        for key, value in vars(cls).items():
            descriptor = callable(value) or isinstance(value, property | classmethod | staticmethod)
            if not (key.startswith("_") or key == "metadata" or descriptor):
                settings[key] = value
    return settings


def local_task(
    path: str | Path,
    kind: str | None = None,
    languages: list[str] | None = None,
    name: str | None = None,
    limit: int | None = None,
    subset: str | None = None,
) -> LocalTask:
    """An mteb task (an instance of one of mteb's abstract task classes) that reads its data from a local folder.

    Args:
        path: a folder in one of the shared data layouts (task_files.py).
        kind: "retrieval", "sts", "classification" or "bitext"; default read from the files.
        languages: bitext only: the languages to mine (Tatoeba `deu`, FLORES `deu_Latn` or `deu`); default all on disk.
            Scores come back per language (one mteb subset each: `deu-eng`, `deu_Latn-eng_Latn`).
        name: the official mteb task this folder is a copy of (default: guessed from the folder name); a name mteb does
            not know names a task built on the abstract class of its kind.
        limit: a small subset for quick runs: the first `limit` queries (retrieval, corpus cut to their relevant
            documents + 20 * limit others), `limit` pairs spread through the file (STS), `limit` test rows and
            4 * limit train rows spread through the files (classification), or the first `limit` lines per language.
        subset: the official task's subset (mteb's hf_subset, e.g. `en`) the folder holds, for a task with several;
            default its one English subset (bind_subset). Only the official splits the folder has files for are scored.

    Example:
        >>> task = local_task("../shared/data/sts/stsbenchmark")  # doctest: +SKIP
        >>> task.metadata.name, task.metadata.main_score  # doctest: +SKIP
        ('STSBenchmark', 'cosine_spearman')
    """
    path = Path(path).expanduser()
    detected = detect_kind(path)
    kind = kind or detected
    if kind not in KINDS:
        raise SynthembedError(f"unknown local task kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != detected:
        raise SynthembedError(f"{path} holds a {detected} task, not {kind}")
    if limit is not None and limit < 1:
        raise SynthembedError(f"limit must be at least 1, got {limit}")

    official = _official_task(name or official_name(path))
    if official is not None:
        if not isinstance(official, _ABSTRACT[kind]):
            raise SynthembedError(f"{path} holds a {kind} task but mteb's {official.metadata.name} is a "
                                  f"{official.metadata.type} task")  # fmt: skip
        metadata, settings = official.metadata, protocol_settings(official, kind)
    else:
        metadata, settings = local_metadata(kind, name or f"local:{path.resolve().name}", path.resolve()), {}
    if kind != "bitext":
        return bind_subset(TASK_CLASSES[kind](path, metadata, limit, settings), subset)
    is_flores = any(flores_dir(path).glob("*.devtest"))
    subsets = flores_subsets(path, languages) if is_flores else tatoeba_subsets(path, languages)
    if not subsets:
        raise SynthembedError(f"{path}: none of the languages {languages} is on disk")
    task = LocalBitextTask(path, metadata, subsets, limit, settings)
    if subset is not None:  # a bitext folder's subsets are its language files: pick one of them
        if subset not in subsets:
            raise SynthembedError(f"{path}: no subset {subset!r} on disk (there: {', '.join(subsets[:8])}, ...)")
        task.hf_subsets = [subset]
    return task


def bind_subset(task: LocalTask, subset: str | None) -> LocalTask:
    """Score the folder as one subset of an official task that has several (STSBenchmarkMultilingualSTS's `en`): the
    named one, else the task's only English subset; a task with none or several English ones needs the name
    (`NAME:SUBSET=DIR`). A task of one subset takes none."""
    metadata = task.published_metadata
    subsets = metadata.hf_subsets_to_langscripts if isinstance(metadata.eval_langs, dict) else {}
    if not subsets:
        if subset is not None:
            raise SynthembedError(f"{metadata.name} has no subsets; bind the folder as {metadata.name}=DIR")
        return task
    if subset is None:
        english = [name for name, langs in subsets.items() if langs and all(lang.startswith("eng-") for lang in langs)]
        if len(english) != 1:
            raise SynthembedError(f"{metadata.name} has the subsets {', '.join(subsets)}; name the folder's: "
                                  f"{metadata.name}:SUBSET={task.local_path}")  # fmt: skip
        subset = english[0]
    if subset not in subsets:
        raise SynthembedError(f"{metadata.name} has no subset {subset!r} (it has {', '.join(subsets)})")
    task.local_subset = subset
    task.hf_subsets = [subset]
    return task


# What the protocol of each kind is made of: the attributes that change a score when they change
_PROTOCOL_ATTRIBUTES = {
    "classification": ("n_experiments", "samples_per_label", "train_split", "is_cross_validation"),
    "sts": ("min_score", "max_score"),
    "retrieval": ("ignore_identical_ids",),
    "bitext": (),
}


def protocol_of(task) -> dict[str, Any]:
    """How a task is scored, for the results JSON and the tables: the official mteb task whose protocol it follows
    ("bound_to"; None for a folder with no official counterpart, scored by its kind's abstract class with mteb's
    defaults), and the settings that decide its score (classification: experiments, samples per label, classifier).

    >>> protocol_of(local_task("../shared/data/sts/sickr"))  # doctest: +SKIP
    {'bound_to': 'SICK-R', 'min_score': 1, 'max_score': 5}
    """
    kind = kind_of(task)
    official = task.metadata.dataset.get("revision") != LOCAL_REVISION
    protocol: dict[str, Any] = {"bound_to": task.metadata.name if official else None}
    if getattr(task, "local_subset", None):
        protocol["subset"] = task.local_subset
    if official and list(task.eval_splits) != list(task.metadata.eval_splits):  # the folder holds only these
        protocol["splits"] = list(task.eval_splits)
    for attribute in _PROTOCOL_ATTRIBUTES.get(kind, ()):
        if hasattr(task, attribute):
            protocol[attribute] = getattr(task, attribute)
    if kind == "classification":
        model = task.evaluator_model
        params = {k: v for k, v in model.get_params().items() if k in ("max_iter", "C", "n_neighbors")}
        protocol["classifier"] = type(model).__name__ + (f"({', '.join(f'{k}={v}' for k, v in params.items())})"
                                                        if params else "")  # fmt: skip
    return protocol


def bound_task(
    name: str, path: str | Path, languages: list[str] | None = None, limit: int | None = None, subset: str | None = None
) -> LocalTask:
    """A local folder bound to the official mteb task `name` (`--tasks NAME=DIR`, `NAME:SUBSET=DIR`): read from the
    folder, scored with exactly that task's protocol, as `subset` of a task with several (bind_subset). Unlike
    local_task's guess from a folder name, a name mteb does not know is an error."""
    if _official_task(name) is None:
        import difflib

        close = difflib.get_close_matches(name, [t.metadata.name for t in mteb.get_tasks()], n=3)
        raise SynthembedError(f"{name}={path}: mteb has no task named {name!r}"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))  # fmt: skip
    return local_task(path, languages=languages, name=name, limit=limit, subset=subset)


def _official_task(name: str | None) -> AbsTask | None:
    if not name:
        return None
    try:
        return mteb.get_task(name)
    except (KeyError, ValueError):
        return None
