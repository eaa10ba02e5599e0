"""Training data: synthetic examples and labeled BEIR folders as contrastive pairs, mixed by ratios, and the plan of
which pairs form each batch.

    from synthembed.training.data import BatchPlan, load_pairs
    pairs = load_pairs(["runs/gen/examples.jsonl", "../shared/data/beir/scifact"], mix=[1, 0.5])
    plan = BatchPlan(pairs, batch_size=2048, seed=0)
    rows = plan.batch(0)                                  # the pairs of optimizer step 0, the same on every process

A pair's query carries its instruction (`Instruct: {task}\\nQuery: {query}`, section 3.1); documents stay plain. BEIR
folders get hard negatives mined from their own corpus (training/mining.py), as the paper does where a dataset has none
(section 4.1).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..data import Example, beir_document, format_query, read_beir, read_examples
from ..errors import SynthembedError
from .args import TrainArguments
from .mining import mine_negatives

# Task instructions for labeled retrieval sets, as E5-mistral's model card lists them (a plain lookup, tevatron style).
BEIR_INSTRUCTIONS: dict[str, str] = {
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_subset": "Given a web search query, retrieve relevant passages that answer the query",
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "fiqa": "Given a financial question, retrieve user replies that best answer the question",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
}


class TrainingPair(BaseModel):
    """One contrastive training row: the instructed query, its positive, an optional hard negative, and its task group.

    >>> TrainingPair(query="Instruct: t\\nQuery: q", positive="p", negative=None, task_type="short-long").positive
    'p'
    """

    model_config = ConfigDict(frozen=True)

    query: str = Field(description="the query side, already formatted with its instruction")
    positive: str
    negative: str | None = None
    task_type: str = Field("short-long", description="the task group; batches may be drawn from one group at a time")
    source: str = Field("", description="where the row came from (file or folder), for mixing reports")
    instructed: bool = Field(False, description="whether the query carries a task instruction (the export records it)")


def examples_to_pairs(examples: Iterable[Example], source: str = "") -> list[TrainingPair]:
    """Synthetic examples as training pairs: `Instruct: {task}\\nQuery: {query}` on the query side, documents plain."""
    return [
        TrainingPair(
            query=format_query(ex.task, ex.query),
            instructed=bool(ex.task),
            positive=ex.positive,
            negative=ex.negative,
            task_type=ex.task_type,
            source=source,
        )
        for ex in examples
    ]


def beir_instruction(directory: str | Path) -> str | None:
    """The instruction for a BEIR folder by its name (scifact, msmarco, ...), None when unknown."""
    name = Path(directory).resolve().name.lower()
    return BEIR_INSTRUCTIONS.get(name)


def beir_to_pairs(
    corpus: dict[str, dict[str, str]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    negatives: dict[str, list[str]] | None = None,
    task: str | None = None,
    source: str = "",
) -> list[TrainingPair]:
    """Labeled retrieval data as pairs: one row per (query, relevant document), with the query's mined hard negatives
    used in turn (row i of a query takes negative i mod n); `task` becomes the instruction (None: plain queries).

    >>> beir_to_pairs({"d": {"title": "T", "text": "x"}}, {"q": "y"}, {"q": {"d": 1}})[0].positive
    'T x'
    """
    pairs = []
    for qid in sorted(qrels):
        if qid not in queries:
            continue
        relevant = sorted(did for did, score in qrels[qid].items() if score > 0 and did in corpus)
        mined = (negatives or {}).get(qid) or []
        for i, did in enumerate(relevant):
            negative = beir_document(corpus[mined[i % len(mined)]]) if mined else None
            pairs.append(
                TrainingPair(
                    query=format_query(task, queries[qid]),
                    instructed=bool(task),
                    positive=beir_document(corpus[did]),
                    negative=negative,
                    task_type="short-long",
                    source=source,
                )
            )
    return pairs


def mix_pairs(sources: list[list[TrainingPair]], ratios: list[float] | None = None, seed: int = 0) -> list[TrainingPair]:
    """Mix pair sets by sampling ratios, as the paper mixes its datasets (e.g. MS MARCO passage at 0.5).

    A ratio below 1 keeps that fraction (sampled without replacement); above 1 repeats the set and samples the rest;
    the result is shuffled with `seed`.

    >>> len(mix_pairs([[TrainingPair(query="q", positive="p")] * 10], [0.5]))
    5
    """
    ratios = list(ratios) if ratios is not None else [1.0] * len(sources)
    if len(ratios) != len(sources):
        raise SynthembedError(f"--mix gives {len(ratios)} ratio(s) for {len(sources)} data source(s)")
    if any(r < 0 for r in ratios):
        raise SynthembedError(f"--mix ratios must be non-negative, got {ratios}")
    rng = random.Random(seed)
    mixed: list[TrainingPair] = []
    for pairs, ratio in zip(sources, ratios, strict=True):
        wanted = round(len(pairs) * ratio)
        whole, rest = divmod(wanted, len(pairs)) if pairs else (0, 0)
        mixed.extend(list(pairs) * whole)
        mixed.extend(rng.sample(list(pairs), rest))
    rng.shuffle(mixed)
    return mixed


# --- reading --data ----------------------------------------------------------------------------------------------------


def load_pairs(
    data: list[str],
    mix: list[float] | None = None,
    seed: int = 0,
    beir_split: str = "train",
    beir_instruction: str = "auto",
    hard_negatives: str = "bm25",
    mine_depth: int = 30,
    max_len: int = 512,
    progress: bool = True,
    cache_dir: Path | None = None,
    mined: dict | None = None,
    mine_skip: int = 0,
    mine_ratio: float | None = None,
) -> list[TrainingPair]:
    """Read every data entry (examples.jsonl, a folder holding one, or a BEIR folder), mine negatives for BEIR, mix by
    `mix`. The settings are those of `synthembed train` (see TrainArguments); `max_len` bounds an embedding miner's
    inputs; `mine_skip` and `mine_ratio` are the miner's guards against false negatives (training/mining.py: the rank
    window's start and the positive-aware ceiling).

    Mined negatives are read from `cache_dir` where present there; newly mined ones are put into `mined`
    ({file name: negatives}) for the caller to save once the output directory exists.

    >>> pairs = load_pairs(["runs/gen/examples.jsonl"])  # doctest: +SKIP
    """
    miner = None
    if hard_negatives != "none":
        miner = partial(
            mine_negatives, hard_negatives, depth=mine_depth, seed=seed, max_len=max_len, show_progress=progress,
            skip=mine_skip, max_positive_ratio=mine_ratio,
        )  # fmt: skip
    sources = []
    for entry in data:
        path = Path(entry).expanduser()
        if path.is_dir() and (path / "examples.jsonl").is_file() and not (path / "corpus.jsonl").is_file():
            path = path / "examples.jsonl"  # a generation run or a curated copy of one: its examples
        if path.is_dir():
            task = _beir_task(path, beir_instruction)
            sources.append(_beir_pairs(path, beir_split, task, miner, hard_negatives, cache_dir, mined))
        elif path.is_file():
            pairs = examples_to_pairs(read_examples(path), source=str(path))
            if not pairs:
                raise SynthembedError(f"{path}: no examples (the file is empty)")
            sources.append(pairs)
        else:
            raise SynthembedError(f"--data {entry}: no such file or folder")
    pairs = mix_pairs(sources, mix, seed=seed)
    if not pairs:
        raise SynthembedError(f"--data {','.join(data)}: no training pairs (empty data, or --mix ratios of 0)")
    return pairs


def training_pairs(args: TrainArguments, cache_dir: Path | None = None, mined: dict | None = None) -> list[TrainingPair]:
    """The pairs a run with settings `args` trains on: load_pairs with every data and mining setting of `args` (what
    train() reads; `cache_dir` and `mined` as in load_pairs)."""
    return load_pairs(
        args.data, mix=args.mix, seed=args.seed, beir_split=args.beir_split, beir_instruction=args.beir_instruction,
        hard_negatives=args.hard_negatives, mine_depth=args.mine_depth, max_len=args.max_len, progress=args.progress,
        cache_dir=cache_dir, mined=mined, mine_skip=args.mine_skip, mine_ratio=args.mine_ratio,
    )  # fmt: skip


def _beir_task(path: Path, setting: str) -> str | None:
    """--beir-instruction: auto (by folder name), none, or the instruction itself."""
    if setting == "auto":
        return beir_instruction(path)
    return None if setting == "none" else setting


def _beir_pairs(
    path: Path, split: str, task: str | None, miner, how: str, cache_dir: Path | None, mined: dict | None
) -> list[TrainingPair]:
    """One BEIR folder's pairs; `miner(corpus, queries, qrels, task=...)` gives hard negatives (None: without)."""
    corpus, queries, qrels = read_beir(path, split=split)
    if not queries:
        raise SynthembedError(f"{path}: no queries with {split} relevance judgements")
    negatives = None
    if miner is not None:
        name = f"negatives-{path.name}-{split}-{how.replace('/', '_').replace(':', '_')}.json"
        if cache_dir is not None and (cache_dir / name).is_file():
            negatives = json.loads((cache_dir / name).read_text())
        else:
            negatives = miner(corpus, queries, qrels, task=task)
            if mined is not None:
                mined[name] = negatives
    return beir_to_pairs(corpus, queries, qrels, negatives=negatives, task=task, source=str(path))


# --- batches -----------------------------------------------------------------------------------------------------------


class BatchPlan:
    """Which pairs form global batch number `step`: a deterministic function of (seed, step), so that the data position
    of a checkpoint is just its step. Each epoch is a fresh seeded permutation; an incomplete last batch is dropped.
    With `group_by_task_type`, batches are cut within one task group and the batches of all groups shuffled together.

    >>> plan = BatchPlan([TrainingPair(query=str(i), positive="p") for i in range(10)], batch_size=4, seed=0)
    >>> plan.steps_per_epoch, len(plan.batch(0))
    (2, 4)
    """

    def __init__(self, pairs: list[TrainingPair], batch_size: int, seed: int = 0, group_by_task_type: bool = False):
        self.pairs, self.batch_size, self.seed, self.grouped = pairs, batch_size, seed, group_by_task_type
        self._epoch, self._batches = -1, []
        self.steps_per_epoch = len(self._epoch_batches(0))
        if self.steps_per_epoch == 0:
            raise SynthembedError(
                f"{len(pairs)} training pairs do not fill one batch of --batch-size {batch_size}"
                + (" within any single task group (--group-by-task-type)" if group_by_task_type else "")
            )

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        if not self.grouped:
            order = rng.permutation(len(self.pairs)).tolist()
            return [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        batches = []
        for task_type in sorted({p.task_type for p in self.pairs}):
            members = [i for i, p in enumerate(self.pairs) if p.task_type == task_type]
            members = [members[j] for j in rng.permutation(len(members))]
            batches += [members[i : i + self.batch_size] for i in range(0, len(members) - self.batch_size + 1, self.batch_size)]
        return [batches[j] for j in rng.permutation(len(batches))]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global step `step` (counted from 0)."""
        return divmod(step, self.steps_per_epoch)

    def batch(self, step: int) -> list[TrainingPair]:
        epoch, index = self.position(step)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return [self.pairs[i] for i in self._batches[index]]


def batch_texts(rows: list[TrainingPair]) -> tuple[list[str], list[str], list[str | None] | None]:
    """(queries, positives, hard negatives) of a batch; the negatives are None when no row has one.

    >>> batch_texts([TrainingPair(query="q", positive="p")])
    (['q'], ['p'], None)
    """
    negatives = [r.negative for r in rows] if any(r.negative is not None for r in rows) else None
    return [r.query for r in rows], [r.positive for r in rows], negatives


def in_batch_flags(rows: list[TrainingPair], without: list[str] | None) -> list[bool] | None:
    """Per row: may its query use the other rows' documents as negatives? None when every row may (the default).

    >>> in_batch_flags([TrainingPair(query="q", positive="p", task_type="long-short")], ["long-short"])
    [False]
    """
    if not without:
        return None
    return [row.task_type not in without for row in rows]
