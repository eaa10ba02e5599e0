"""Hard-negative mining for labeled retrieval data: the documents a retriever ranks high that are not relevant.

    from synthembed.training.mining import mine_bm25, mine_negatives
    negatives = mine_bm25(corpus, queries, qrels, n_negatives=1)   # {query id: [document id, ...]}
    negatives = mine_negatives("embedding:all-MiniLM-L6-v2", corpus, queries, qrels, task="Given a claim, ...")

The paper mines hard negatives (top 100) with a smaller embedding model where a dataset has none (section 4.1); here a
retriever is either BM25 (bm25s, no model needed) or any embedding model `load_embedder` accepts.
"""

from __future__ import annotations

import random

import numpy as np

from ..data import beir_document
from ..errors import SynthembedError


def _pick(ranked: list[str], relevant: set[str], n_negatives: int, depth: int, skip: int, rng: random.Random) -> list[str]:
    """Sample n negatives among ranks [skip, depth) of the non-relevant documents (the very top ones are the likeliest
    unlabeled positives, so `skip` can leave them out); the rest in rank order."""
    candidates = [did for did in ranked if did not in relevant][skip:depth]
    if len(candidates) <= n_negatives:
        return candidates
    chosen = sorted(rng.sample(range(len(candidates)), n_negatives))
    return [candidates[i] for i in chosen]


def _check(corpus, queries, qrels):
    if not corpus:
        raise SynthembedError("cannot mine negatives: the corpus is empty")
    asked = [qid for qid in qrels if qid in queries]
    if not asked:
        raise SynthembedError("cannot mine negatives: no query has relevance judgements")
    return asked


def mine_bm25(
    corpus: dict[str, dict[str, str]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    n_negatives: int = 1,
    depth: int = 30,
    skip: int = 0,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """BM25 hard negatives: for each judged query, `n_negatives` of the top-`depth` BM25 documents that are not relevant.

    >>> mine_bm25({"a": {"title": "", "text": "cats purr"}, "b": {"title": "", "text": "cats sleep"}},
    ...           {"q": "cats"}, {"q": {"a": 1}}, show_progress=False)
    {'q': ['b']}
    """
    import bm25s

    asked = _check(corpus, queries, qrels)
    doc_ids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([beir_document(corpus[d]) for d in doc_ids], show_progress=False), show_progress=False)
    k = min(len(doc_ids), depth + max(len(qrels[q]) for q in asked))
    tokens = bm25s.tokenize([queries[q] for q in asked], show_progress=False)
    ranks, _ = retriever.retrieve(tokens, k=k, show_progress=show_progress, n_threads=0)  # (Q, k) indices into doc_ids
    rng = random.Random(seed)
    return {
        qid: _pick([doc_ids[i] for i in row], set(qrels[qid]), n_negatives, depth, skip, rng)
        for qid, row in zip(asked, ranks.tolist(), strict=True)
    }


def mine_embedding(
    embedder,
    corpus: dict[str, dict[str, str]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    task: str | None = None,
    n_negatives: int = 1,
    depth: int = 30,
    skip: int = 0,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, list[str]]:
    """Dense hard negatives from an embedding model (a synthembed Embedder): cosine top-`depth` minus the relevant ones."""
    asked = _check(corpus, queries, qrels)
    doc_ids = list(corpus)
    d_reps = embedder.encode_documents([beir_document(corpus[d]) for d in doc_ids])  # (N, D)
    q_reps = embedder.encode_queries([queries[q] for q in asked], task=task)  # (Q, D)
    k = min(len(doc_ids), depth + max(len(qrels[q]) for q in asked))
    rng = random.Random(seed)
    out = {}
    for start in range(0, len(asked), batch_size):
        scores = q_reps[start : start + batch_size] @ d_reps.T  # (b, N)
        top = np.argsort(-scores, axis=1)[:, :k]  # (b, k)
        for qid, row in zip(asked[start : start + batch_size], top.tolist(), strict=True):
            out[qid] = _pick([doc_ids[i] for i in row], set(qrels[qid]), n_negatives, depth, skip, rng)
    return out


def mine_negatives(
    how: str, corpus, queries, qrels, *, task: str | None = None, depth: int = 30, seed: int = 0, max_len: int = 512,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """One hard negative per judged query (corpus, queries and qrels as read_beir gives them), by `how` (`synthembed
    train --hard-negatives`): "bm25", or "embedding:<model>" for any model load_embedder accepts (its inputs cut at
    min(max_len, 512) tokens)."""
    print(f"[train] mining hard negatives with {how} for {len(queries)} queries over {len(corpus)} documents")
    if how == "bm25":
        return mine_bm25(corpus, queries, qrels, depth=depth, seed=seed, show_progress=show_progress)
    if how.startswith("embedding:"):
        from ..model import load_embedder

        miner = load_embedder(how.split(":", 1)[1], max_len=min(max_len, 512))
        return mine_embedding(miner, corpus, queries, qrels, task=task, depth=depth, seed=seed)
    raise SynthembedError(f"--hard-negatives {how!r}: use bm25, none, or embedding:<model>")
