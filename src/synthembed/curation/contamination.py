"""Decontamination: n-gram overlap between generated texts and the evaluation sets a model will be scored on.

    from synthembed.curation.contamination import EvalIndex
    index = EvalIndex.from_folders(["../shared/data"], n=13)      # every task folder found under the path
    index.matches("a generated passage ...")                      # ['SciFact'] where it shares a 13-gram with SciFact

The check is the one GPT-3 and the E5 paper's contamination analysis use: a generated text is contaminated when it
shares an n-gram of words (13 by default) with any text the evaluation reads. Many evaluation texts are shorter than
that (Tatoeba and STS sentences, Banking77 queries): a short one counts as one n-gram of its own length, so a generated
text that contains it word for word matches; texts of fewer than `min_words` words ("Thank you.") are too common to mean
anything and are skipped.

What the evaluation reads, per task kind (evaluation/task_files.py): retrieval, every query and document (title and
text); STS, the sentences of sts-test.csv or SICK.txt; classification, train.csv and test.csv (the classifier is fit on
train embeddings); bitext, every Tatoeba or FLORES sentence of every language.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import beir_document, iter_jsonl, read_classification, read_flores, read_sts, read_tatoeba
from ..errors import SynthembedError
from ..evaluation.task_files import detect_kind, flores_dir, official_name
from .ngrams import ngram_hashes, tokens


def eval_texts(folder: Path, kind: str) -> Iterator[str]:
    """Every text the evaluation of the task folder `folder` (of task kind `kind`) embeds."""
    if kind == "retrieval":
        for name in ("queries.jsonl", "corpus.jsonl"):
            if (folder / name).is_file():
                for _, row in iter_jsonl(folder / name):
                    yield beir_document(row) if name == "corpus.jsonl" else str(row.get("text") or "")
    elif kind == "sts":
        path = folder / "sts-test.csv" if (folder / "sts-test.csv").is_file() else folder / "SICK.txt"
        for s1, s2, _ in read_sts(path):
            yield s1
            yield s2
    elif kind == "classification":
        for name in ("train.csv", "test.csv"):
            if (folder / name).is_file():
                yield from (text for text, _ in read_classification(folder / name))
    elif any(folder.glob("tatoeba.*-eng.*")):
        for left, right in read_tatoeba(folder).values():
            yield from left
            yield from right
    else:
        for sentences in read_flores(flores_dir(folder)).values():
            yield from sentences


def task_folders(path: str | Path) -> list[Path]:
    """`path` itself when it is a task folder, else the task folders under it (three levels down at most), sorted."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SynthembedError(f"--decontaminate {path}: no such folder")
    found = _find(path, depth=3)
    if not found:
        raise SynthembedError(
            f"--decontaminate {path}: no evaluation task folder in it (BEIR, STS, classification, "
            "Tatoeba or FLORES files; see docs/design.md, 'Local benchmark folders')"
        )
    return found


def _find(path: Path, depth: int) -> list[Path]:
    try:
        detect_kind(path)
        return [path]
    except SynthembedError:
        pass
    if depth == 0:
        return []
    return [found for child in sorted(p for p in path.iterdir() if p.is_dir()) for found in _find(child, depth - 1)]


@dataclass
class EvalSet:
    """One evaluation set's n-grams: `full` for texts of at least n words, `short[k]` for whole texts of k < n words."""

    name: str
    folder: str
    kind: str
    texts: int = 0
    full: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    short: dict[int, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "folder": self.folder,
            "kind": self.kind,
            "texts": self.texts,
            "ngrams": int(self.full.size + sum(a.size for a in self.short.values())),
        }


def build_eval_set(folder: Path, texts: Iterable[str], kind: str, n: int, min_words: int) -> EvalSet:
    full: list[np.ndarray] = []
    short: dict[int, list[int]] = {}
    count = 0
    for text in texts:
        count += 1
        words = tokens(text)
        if len(words) >= n:
            full.append(ngram_hashes(words, n))
        elif len(words) >= min_words:
            short.setdefault(len(words), []).append(hash(tuple(words)))
    name = official_name(folder) or folder.name
    return EvalSet(
        name=name,
        folder=str(folder),
        kind=kind,
        texts=count,
        full=np.unique(np.concatenate(full)) if full else np.empty(0, dtype=np.int64),
        short={k: np.unique(np.array(v, dtype=np.int64)) for k, v in sorted(short.items())},
    )


def _contains(sorted_set: np.ndarray, values: np.ndarray) -> bool:
    if not sorted_set.size or not values.size:
        return False
    at = np.searchsorted(sorted_set, values).clip(max=sorted_set.size - 1)
    return bool(np.any(sorted_set[at] == values))


class EvalIndex:
    """The n-grams of evaluation sets, and which of them a generated text overlaps."""

    def __init__(self, sets: Sequence[EvalSet], n: int = 13, min_words: int = 8):
        self.sets, self.n, self.min_words = list(sets), n, min_words
        self.short_lengths = sorted({k for s in self.sets for k in s.short})

    @classmethod
    def from_folders(cls, paths: Sequence[str | Path], n: int = 13, min_words: int = 8) -> EvalIndex:
        if n < 1 or not 1 <= min_words <= n:
            raise SynthembedError(f"--ngram {n} / --ngram-min-words {min_words}: need 1 <= min words <= n")
        folders = list(dict.fromkeys(folder.resolve() for path in paths for folder in task_folders(path)))
        sets = [build_eval_set(f, eval_texts(f, detect_kind(f)), detect_kind(f), n, min_words) for f in folders]
        names = [s.name for s in sets]
        for s in sets:
            if names.count(s.name) > 1:  # two folders of one name: tell them apart by their parent
                s.name = f"{Path(s.folder).parent.name}/{s.name}"
        return cls(sets, n, min_words)

    def matches(self, text: str) -> list[str]:
        """Names of the evaluation sets that share an n-gram with `text` (or that it contains a short text of)."""
        words = tokens(text)
        if len(words) < self.min_words:
            return []
        windows = {self.n: ngram_hashes(words, self.n)}
        windows.update({k: ngram_hashes(words, k) for k in self.short_lengths if k <= len(words)})
        return [
            s.name
            for s in self.sets
            if _contains(s.full, windows[self.n])
            or any(_contains(a, windows[k]) for k, a in s.short.items() if k in windows)
        ]

    def summary(self) -> dict:
        return {s.name: s.summary() for s in self.sets}
