"""The embedding-based false-negative filter: score each (query, positive, negative) with an embedder and flag the
examples whose negative outscores their positive by more than a margin.

    from synthembed.curation.scoring import triplet_scores
    positive, negative = triplet_scores(embedder, examples, instructions=False)   # cosines; NaN where no negative
    margin = positive - negative                                                  # < -M: a likely false negative

An LLM asked for a hard negative sometimes writes a document that answers the query as well as the positive does, or
better; trained on as a negative it teaches the model the opposite of the truth. Where an independent embedder ranks
the negative clearly above the positive, the example is dropped (the margin is a setting: 0 drops every example whose
negative wins at all).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import model_config
from ..data import Example, format_query


def uses_instructions(model: str, setting: bool | None, embedder=None) -> bool:
    """Whether queries get their instruction (`Instruct: {task}\nQuery: ...`): the setting where given, else the
    project's one rule (model_config.uses_instructions, which evaluation and the miner follow too)."""
    if setting is not None:
        return setting
    return model_config.uses_instructions(model, embedder)


def triplet_scores(
    embedder, examples: Sequence[Example], instructions: bool = False, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine of query and positive, cosine of query and negative) per example; NaN where the example has no
    negative. Each distinct text is embedded once."""
    queries = [format_query(e.task if instructions else None, e.query) for e in examples]
    documents = list(dict.fromkeys([e.positive for e in examples] + [e.negative for e in examples if e.negative]))
    where = {text: i for i, text in enumerate(documents)}
    q = embedder.encode(queries, batch_size=batch_size, show_progress=progress, desc="queries")
    d = embedder.encode(documents, batch_size=batch_size, show_progress=progress, desc="documents")
    positive = np.einsum("nd,nd->n", q, d[[where[e.positive] for e in examples]])
    negative = np.full(len(examples), np.nan, dtype=np.float32)
    with_negative = [i for i, e in enumerate(examples) if e.negative]
    if with_negative:
        rows = d[[where[examples[i].negative] for i in with_negative]]
        negative[with_negative] = np.einsum("nd,nd->n", q[with_negative], rows)
    return positive.astype(np.float32), negative


def margin_summary(margins: np.ndarray) -> dict[str, float | int]:
    """Count and quantiles of the positive-minus-negative margins (NaN, examples without a negative, left out)."""
    values = margins[~np.isnan(margins)]
    if not values.size:
        return {"count": 0}
    quantiles = np.quantile(values, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    names = ("min", "p05", "p25", "median", "p75", "p95", "max")
    return {
        "count": int(values.size),
        "negative_wins": int((values < 0).sum()),
        **{k: round(float(v), 4) for k, v in zip(names, quantiles, strict=True)},
    }
