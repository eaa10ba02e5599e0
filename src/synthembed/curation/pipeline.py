"""curate(): a generation run's examples through the filters, in order, into a curated copy that training reads.

    from synthembed.curation.pipeline import CurateConfig, curate
    stats = curate("runs/gen", "runs/curated", CurateConfig(embedder="all-MiniLM-L6-v2", decontaminate=("../shared/data",)))
    # synthembed train --data runs/curated ...

The filters, in priority order (an example is dropped by the first that fires, and counted there):
1. near_duplicate: MinHash-LSH over word shingles of query and positive (`near_dup_threshold`, Jaccard); with an
   embedder and `embedding_dup_threshold`, cosine similarity too;
2. contamination: a query, positive or negative sharing an n-gram with an evaluation set (`decontaminate` folders);
3. false_negative: with an embedder, the negative outscoring the positive by more than `margin`;
then, optionally, 4. mining: negatives mined from the run's own documents, positive-aware (training/mining.py), filling
examples without one or replacing every one; and 5. judge: an LLM's grades (judge.py), which drop or relabel.

The output folder holds examples.jsonl (the kept examples, in the run's order and format; a relabelled or re-mined one
says so in meta.curation), dropped.jsonl (each dropped example with its filter, reason and detail), scores.jsonl (the
embedder's cosines and margin per example) and curation.json (the settings and every count). Running again on the same
folder rewrites it; the judge's replies come back from its response cache (judge_cache.sqlite), so nothing is paid twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..data import Example, read_examples
from ..errors import SynthembedError
from ..files import replace_atomic, write_json_atomic
from ..generation import rundir
from .contamination import EvalIndex
from .dedup import embedding_duplicates, minhash_duplicates
from .report import CURATION_FILE, DROPPED_FILE, JUDGE_CACHE_FILE, SCORES_FILE
from .scoring import margin_summary, triplet_scores, uses_instructions

FILTERS = ("near_duplicate", "contamination", "false_negative", "judge")
MINE_MODES = ("none", "fill", "replace")


@dataclass
class CurateConfig:
    """Every setting of a curation (`synthembed curate --help` says the same)."""

    near_dup_threshold: float | None = 0.8  # Jaccard of word-shingle sets; None: no MinHash pass
    shingle_size: int = 3  # words per shingle
    num_perm: int = 128  # MinHash permutations
    embedder: str | None = None  # a model load_embedder accepts; needed by the three settings below
    embedding_dup_threshold: float | None = None  # cosine of (query + positive) embeddings; None: no embedding dedup
    margin: float | None = 0.0  # drop where negative cosine > positive cosine + margin; None: no false-negative filter
    instructions: bool | None = None  # queries with their instruction; None: as the embedder was trained (ours) or not
    decontaminate: tuple[str, ...] = ()  # evaluation folders (or folders of them)
    ngram: int = 13  # words in an n-gram that counts as overlap
    ngram_min_words: int = 8  # evaluation texts shorter than this are ignored; shorter than ngram, matched whole
    mine: str = "none"  # "fill" examples without a negative, "replace" every negative, from the run's own documents
    mine_ratio: float | None = 0.95  # a mined negative scores at most this fraction of its positive (TopK-PercPos)
    mine_skip: int = 0  # the rank window [mine_skip, mine_depth) mined negatives are drawn from
    mine_depth: int = 10
    judge_model: str | None = None  # the LLM that judges; None: no judge pass
    judge_min_relevance: int = 2  # the grade (0-3) a positive needs
    judge_max_tokens: int | None = 200
    judge_max_cost: float | None = None  # USD; the pass stops sending at this budget (unjudged examples are kept)
    seed: int = 0
    batch_size: int = 64
    max_len: int = 256  # tokens per text for the embedder

    def check(self) -> None:
        """A SynthembedError naming the setting that is out of range."""

        def bad(name: str, why: str) -> SynthembedError:
            return SynthembedError(f"curation setting {name}={getattr(self, name)!r}: {why}")

        for name in ("near_dup_threshold", "embedding_dup_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise bad(name, "a similarity threshold in (0, 1], or none")
        if self.embedding_dup_threshold is not None and not self.embedder:
            raise bad("embedding_dup_threshold", "needs an embedder (--embedder)")
        if self.mine not in MINE_MODES:
            raise bad("mine", f"one of {', '.join(MINE_MODES)}")
        if self.mine != "none" and not self.embedder:
            raise bad("mine", "mining needs an embedder (--embedder)")
        if not 0 <= self.mine_skip < self.mine_depth:
            raise bad("mine_skip", f"need 0 <= mine_skip < mine_depth ({self.mine_depth})")
        if self.mine_ratio is not None and not 0 < self.mine_ratio <= 1:
            raise bad("mine_ratio", "a fraction in (0, 1], or none")
        if self.shingle_size < 1 or self.num_perm < 16:
            raise bad("shingle_size" if self.shingle_size < 1 else "num_perm", "too small")
        if not 1 <= self.ngram_min_words <= self.ngram:
            raise bad("ngram_min_words", f"need 1 <= ngram_min_words <= ngram ({self.ngram})")
        if not 0 <= self.judge_min_relevance <= 3:
            raise bad("judge_min_relevance", "a grade from 0 to 3")


@dataclass
class _State:
    """The examples and what happened to each: `fate[i]` is None while kept, else (filter, reason, detail)."""

    examples: list[Example]
    fate: list[tuple[str, str, dict] | None] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)  # meta.curation of each example (relabel, mined negative)

    def __post_init__(self) -> None:
        self.fate = [None] * len(self.examples)
        self.notes = [{} for _ in self.examples]

    def alive(self) -> list[int]:
        return [i for i, f in enumerate(self.fate) if f is None]

    def drop(self, i: int, filter_name: str, reason: str, detail: dict | None = None) -> None:
        if self.fate[i] is None:
            self.fate[i] = (filter_name, reason, detail or {})


def read_source(source: str | Path) -> list[Example]:
    """The examples of a generation run directory or an examples.jsonl file, validated."""
    path = Path(source).expanduser()
    if path.is_file():
        return read_examples(path)
    examples = []
    for number, row in enumerate(rundir.read_examples(path), start=1):
        try:
            examples.append(Example.model_validate(row))
        except ValidationError as err:
            first = err.errors()[0]
            raise SynthembedError(
                f"{path / rundir.EXAMPLES_FILE}, example {number}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None
    return examples


def check_out(source: Path, out: Path) -> None:
    """`out` must be new, empty, or an earlier curation (rewritten); never the run itself."""
    if out.resolve() == source.resolve() or (source.is_file() and out.resolve() == source.parent.resolve()):
        raise SynthembedError(f"--out {out}: that is the run being curated; write the curated copy elsewhere")
    if out.exists() and (
        not out.is_dir()
        or (any(out.iterdir()) and not (out / CURATION_FILE).is_file() and not (out / JUDGE_CACHE_FILE).is_file())
    ):
        raise SynthembedError(f"--out {out} exists and is not a curation folder (no {CURATION_FILE}); choose a new one")


def curate(
    source: str | Path,
    out: str | Path,
    config: CurateConfig | None = None,
    *,
    embedder=None,
    judge_backend=None,
    judge_cache: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Curate the run (or examples.jsonl) `source` into the folder `out`; returns the stats written to curation.json.
    `embedder` (an Embedder) replaces loading `config.embedder`; `judge_backend` (a generation backend) is what the
    judge's requests go to when `config.judge_model` is set."""
    config = config or CurateConfig()
    config.check()
    source, out = Path(source).expanduser(), Path(out).expanduser()
    check_out(source, out)
    if config.judge_model and judge_backend is None:
        raise SynthembedError("the judge pass (judge_model) needs an LLM backend to send its requests to")
    state = _State(read_source(source))
    if not state.examples:
        raise SynthembedError(f"{source}: no examples to curate")
    if embedder is None and config.embedder:
        from ..model import load_embedder

        embedder = load_embedder(config.embedder, max_len=config.max_len)
    instructions = uses_instructions(config.embedder or "", config.instructions, embedder) if embedder is not None else None
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {
        "source": str(source),
        "config": {**asdict(config), "decontaminate": list(config.decontaminate)},
        "instructions": instructions,
        "input": len(state.examples),
        "filters": {},
    }
    stats["filters"]["near_duplicate"] = _near_duplicates(state, config, embedder, progress)
    stats["filters"]["contamination"] = _contamination(state, config)
    scores: list[dict] = []
    stats["filters"]["false_negative"] = _false_negatives(state, config, embedder, instructions, scores, progress)
    stats["filters"]["mining"] = _mine(state, config, embedder, instructions, progress)
    stats["filters"]["judge"] = _judge(
        state, config, judge_backend, Path(judge_cache or out / JUDGE_CACHE_FILE), progress
    )
    _write(state, out, scores, stats)
    return stats


def _near_duplicates(state: _State, config: CurateConfig, embedder, progress: bool) -> dict[str, Any]:
    by_method: Counter = Counter()
    if config.near_dup_threshold is not None:
        alive = state.alive()
        texts = [f"{state.examples[i].query}\n{state.examples[i].positive}" for i in alive]
        found = minhash_duplicates(
            texts,
            [state.examples[i].task_type for i in alive],
            config.near_dup_threshold,
            config.shingle_size,
            config.num_perm,
            seed=config.seed + 1,
        )
        for k, (j, similarity) in found.items():
            state.drop(
                alive[k],
                "near_duplicate",
                "minhash",
                {"duplicate_of": state.examples[alive[j]].id, "jaccard": round(similarity, 4)},
            )
            by_method["minhash"] += 1
    if config.embedding_dup_threshold is not None:
        alive = state.alive()
        texts = [f"{state.examples[i].query}\n{state.examples[i].positive}" for i in alive]
        vectors = embedder.encode(texts, batch_size=config.batch_size, show_progress=progress, desc="dedup")
        found = embedding_duplicates(
            vectors, [state.examples[i].task_type for i in alive], config.embedding_dup_threshold
        )
        for k, (j, cosine) in found.items():
            state.drop(
                alive[k], "near_duplicate", "embedding", {"duplicate_of": state.examples[alive[j]].id, "cosine": cosine}
            )
            by_method["embedding"] += 1
    ran = config.near_dup_threshold is not None or config.embedding_dup_threshold is not None
    return {"ran": ran, "dropped": sum(by_method.values()), "by_method": dict(by_method)}


def _contamination(state: _State, config: CurateConfig) -> dict[str, Any]:
    if not config.decontaminate:
        return {"ran": False, "dropped": 0}
    index = EvalIndex.from_folders(config.decontaminate, n=config.ngram, min_words=config.ngram_min_words)
    by_set: Counter = Counter()
    by_field: Counter = Counter()
    for i in state.alive():
        example = state.examples[i]
        hits = {
            name: index.matches(text)
            for name, text in (
                ("query", example.query),
                ("positive", example.positive),
                ("negative", example.negative or ""),
            )
        }
        matched = sorted({s for sets in hits.values() for s in sets})
        if matched:
            fields = [name for name, sets in hits.items() if sets]
            state.drop(i, "contamination", matched[0], {"eval_sets": matched, "fields": fields})
            by_set.update(matched)
            by_field.update(fields)
    dropped = sum(1 for f in state.fate if f and f[0] == "contamination")
    return {
        "ran": True,
        "dropped": dropped,
        "by_eval_set": dict(by_set),
        "by_field": dict(by_field),
        "ngram": config.ngram,
        "eval_sets": index.summary(),
    }


def _false_negatives(state, config, embedder, instructions, scores: list[dict], progress) -> dict[str, Any]:
    if embedder is None or config.margin is None:
        return {"ran": False, "dropped": 0}
    alive = state.alive()
    examples = [state.examples[i] for i in alive]
    positive, negative = triplet_scores(embedder, examples, instructions, config.batch_size, progress)
    margins = positive - negative
    for i, example, p, n, m in zip(alive, examples, positive, negative, margins, strict=True):
        row = {
            "id": example.id,
            "task_type": example.task_type,
            "positive": round(float(p), 4),
            "negative": None if np.isnan(n) else round(float(n), 4),
            "margin": None if np.isnan(m) else round(float(m), 4),
        }
        row["dropped"] = bool(not np.isnan(m) and m < -config.margin)
        if row["dropped"]:
            state.drop(
                i, "false_negative", "negative_outscores_positive", {k: row[k] for k in ("positive", "negative")}
            )
        scores.append(row)
    by_group = Counter(r["task_type"] for r in scores if r["dropped"])
    return {
        "ran": True,
        "dropped": sum(by_group.values()),
        "margin": config.margin,
        "scored": len(scores),
        "by_task_type": dict(by_group),
        "margins": margin_summary(margins),
    }


def _mine(state: _State, config: CurateConfig, embedder, instructions, progress: bool) -> dict[str, Any]:
    if config.mine == "none":
        return {"ran": False}
    from ..training.mining import mine_synthetic

    alive = state.alive()
    # the examples under their position as id: mined negatives come back by id, and a run's ids need not be unique
    renamed = [state.examples[i].model_copy(update={"id": str(i)}) for i in alive]
    mined = mine_synthetic(
        embedder,
        renamed,
        instructions=bool(instructions),
        depth=config.mine_depth,
        skip=config.mine_skip,
        max_positive_ratio=config.mine_ratio,
        seed=config.seed,
        show_progress=progress,
    )
    counts: Counter = Counter()
    for i in alive:
        example = state.examples[i]
        if config.mine == "fill" and example.negative is not None:
            continue
        if not mined.get(str(i)):
            counts["no_candidate"] += 1
            continue
        counts["replaced" if example.negative is not None else "filled"] += 1
        state.notes[i]["negative"] = {"mined": True, "was": example.negative}
        state.examples[i] = example.model_copy(update={"negative": mined[str(i)][0]})
    return {
        "ran": True,
        "mode": config.mine,
        "ratio": config.mine_ratio,
        "window": [config.mine_skip, config.mine_depth],
        **{k: counts.get(k, 0) for k in ("filled", "replaced", "no_candidate")},
    }


def _judge(state: _State, config: CurateConfig, backend, cache_path: Path, progress: bool) -> dict[str, Any]:
    if not config.judge_model:
        return {"ran": False, "dropped": 0, "relabelled": 0}
    from ..generation.cache import ResponseCache
    from ..generation.llm import LLMClient
    from .judge import judge_requests, verdicts

    alive = state.alive()
    examples = [state.examples[i] for i in alive]
    requests, flipped = judge_requests(
        examples, config.judge_model, seed=config.seed, max_tokens=config.judge_max_tokens
    )
    cache = ResponseCache(cache_path)
    try:
        client = LLMClient(backend, cache=cache, max_cost=config.judge_max_cost, seed=config.seed)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc="judge", unit="example")
        replies = client.run(requests, progress=bar)
        if bar is not None:
            bar.close()
    finally:
        cache.close()
    reasons: Counter = Counter()
    for i, (action, reason, verdict) in zip(
        alive, verdicts(examples, replies, flipped, config.judge_min_relevance), strict=True
    ):
        reasons[reason] += 1
        grades = {"positive": verdict.positive, "negative": verdict.negative}
        if action == "drop":
            state.drop(i, "judge", reason, grades)
        elif action == "relabel":
            example = state.examples[i]
            state.examples[i] = example.model_copy(update={"positive": example.negative, "negative": example.positive})
            state.notes[i]["relabelled"] = {"by": "judge", "reason": reason, **grades}
    usage = client.usage
    return {
        "ran": True,
        "model": config.judge_model,
        "dropped": sum(1 for f in state.fate if f and f[0] == "judge"),
        "relabelled": reasons.get("negative_preferred", 0),
        "by_reason": dict(reasons),
        "requests": usage.requests,
        "cache_hits": usage.cache_hits,
        "cost_usd": round(usage.cost_usd, 6),
        "stopped": client.stopped,
    }


def _write(state: _State, out: Path, scores: list[dict], stats: dict[str, Any]) -> None:
    kept, dropped = [], []
    for example, fate, note in zip(state.examples, state.fate, state.notes, strict=True):
        record = example.model_dump(mode="json")
        if note:
            record["meta"]["curation"] = note
        if fate is None:
            kept.append(record)
        else:
            dropped.append(
                {
                    "id": example.id,
                    "task_type": example.task_type,
                    "filter": fate[0],
                    "reason": fate[1],
                    "detail": fate[2],
                    "example": record,
                }
            )
    for name, rows in ((rundir.EXAMPLES_FILE, kept), (DROPPED_FILE, dropped), (SCORES_FILE, scores)):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        replace_atomic(out / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    by_group: dict[str, Counter] = {}
    for example, fate in zip(state.examples, state.fate, strict=True):
        by_group.setdefault(example.task_type, Counter())["kept" if fate is None else "dropped"] += 1
    stats.update(
        {
            "kept": len(kept),
            "dropped": len(dropped),
            "relabelled": sum(
                1 for n, f in zip(state.notes, state.fate, strict=True) if f is None and "relabelled" in n
            ),
            "dropped_by_filter": {name: sum(1 for f in state.fate if f and f[0] == name) for name in FILTERS},
            "by_task_type": {g: {"kept": c["kept"], "dropped": c["dropped"]} for g, c in sorted(by_group.items())},
        }
    )
    write_json_atomic(out / CURATION_FILE, stats)
