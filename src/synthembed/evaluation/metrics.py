"""Small retrieval scores shared by notebooks and the passkey study.

    from synthembed.evaluation.metrics import pair_similarities, top1_accuracy
    top1_accuracy(pair_similarities("runs/train/synthetic/merged", pairs))  # share of queries whose own positive wins
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top1_accuracy(scores, gold: Sequence[int] | None = None) -> float:
    """Share of queries (rows of `scores`, (Q, N)) whose highest-scoring candidate is the gold one; without `gold`,
    row i's gold candidate is column i (the diagonal holds the true pairs).

    >>> top1_accuracy([[0.9, 0.1], [0.8, 0.2]])
    0.5
    >>> top1_accuracy([[0.1, 0.9]], gold=[1])
    1.0
    """
    scores = np.asarray(scores)  # (Q, N)
    gold = np.arange(len(scores)) if gold is None else np.asarray(gold)  # (Q,)
    return float(np.mean(scores.argmax(axis=1) == gold))


def pair_similarities(model: str, pairs, max_len: int | None = None) -> np.ndarray:
    """Cosine similarity of every query with every pair's positive, (n, n): the diagonal holds the true pairs.

    >>> # pair_similarities("runs/interactive/train/minilm/merged", pairs[:8]).diagonal()
    """
    from ..model import load_embedder

    emb = load_embedder(model, max_len=max_len, device="cpu")
    q_reps = emb.encode([p.query for p in pairs], show_progress=False)  # (n, D)
    p_reps = emb.encode([p.positive for p in pairs], show_progress=False)  # (n, D)
    return q_reps @ p_reps.T  # (n, n)
