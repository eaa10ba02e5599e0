"""Hard-negative mining for labeled retrieval data: the documents a retriever ranks high that are not relevant.

    from synthembed.training.mining import mine_bm25, mine_negatives
    negatives = mine_bm25(corpus, queries, qrels, n_negatives=1)   # {query id: [document id, ...]}
    negatives = mine_negatives("embedding:all-MiniLM-L6-v2", corpus, queries, qrels, task="Given a claim, ...")

The paper mines hard negatives (top 100) with a smaller embedding model where a dataset has none (section 4.1); here a
retriever is either BM25 (bm25s, no model needed) or any embedding model `load_embedder` accepts.

The top of a ranking is where unlabeled positives hide, so a miner that takes it trains on false negatives. Two guards,
both off by default: a rank window (`skip` leaves out the first non-relevant hits, negatives are drawn from ranks
[skip, depth)), and a positive-aware ceiling (`max_positive_ratio`, NV-Retriever's TopK-PercPos: a document scoring
above that fraction of the query's positive, e.g. 0.95, is never a negative). `mine_synthetic` mines a synthetic run's
own documents for its examples, with the same guards.
"""

from __future__ import annotations

import random

import numpy as np

from ..data import Example, beir_document, format_query
from ..errors import SynthembedError
from ..model_config import uses_instructions


def _pick(ranked: list[str], excluded: set[str], n_negatives: int, depth: int, skip: int, rng: random.Random) -> list[str]:
    """Sample n negatives among ranks [skip, depth) of the documents not `excluded` (the relevant ones, and those above
    the positive-aware ceiling); the very top ones are the likeliest unlabeled positives, so `skip` can leave them out."""
    candidates = [did for did in ranked if did not in excluded][skip:depth]
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


def _check_guards(depth: int, skip: int, ratio: float | None) -> None:
    if not 0 <= skip < depth:
        raise SynthembedError(f"mining window: need 0 <= skip ({skip}) < depth ({depth})")
    if ratio is not None and not 0 < ratio <= 1:
        raise SynthembedError(f"max_positive_ratio {ratio}: a fraction of the positive's score, in (0, 1]")


def too_close(doc_ids: list[str], scores: np.ndarray, relevant: set[str], ratio: float | None) -> set[str]:
    """Documents scoring above `ratio` x the lowest score among the query's relevant documents (NV-Retriever's
    TopK-PercPos); empty without a ratio. The lowest positive is the conservative choice where a query has several.

    >>> sorted(too_close(["p", "a", "b"], np.array([0.8, 0.79, 0.5]), {"p"}, 0.95))
    ['a', 'p']
    """
    if ratio is None:
        return set()
    position = {did: i for i, did in enumerate(doc_ids)}
    rows = [position[did] for did in relevant if did in position]
    if not rows:
        return set()
    ceiling = ratio * float(np.min(scores[rows]))
    return {doc_ids[i] for i in np.flatnonzero(scores > ceiling)}


def mine_bm25(
    corpus: dict[str, dict[str, str]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    n_negatives: int = 1,
    depth: int = 30,
    skip: int = 0,
    seed: int = 0,
    show_progress: bool = True,
    max_positive_ratio: float | None = None,
) -> dict[str, list[str]]:
    """BM25 hard negatives: for each judged query, `n_negatives` of the top-`depth` BM25 documents that are not relevant
    (ranks [skip, depth), none above `max_positive_ratio` x the positive's BM25 score when that is given).

    >>> mine_bm25({"a": {"title": "", "text": "cats purr"}, "b": {"title": "", "text": "cats sleep"}},
    ...           {"q": "cats"}, {"q": {"a": 1}}, show_progress=False)
    {'q': ['b']}
    """
    import bm25s

    asked = _check(corpus, queries, qrels)
    _check_guards(depth, skip, max_positive_ratio)
    doc_ids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([beir_document(corpus[d]) for d in doc_ids], show_progress=False), show_progress=False)
    rng = random.Random(seed)
    if max_positive_ratio is not None:  # the positive's score is needed, wherever it ranks: score every document
        words = bm25s.tokenize([queries[q] for q in asked], return_ids=False, show_progress=False)
        out = {}
        for qid, query_words in zip(asked, words, strict=True):
            scores = retriever.get_scores(list(query_words))
            excluded = set(qrels[qid]) | too_close(doc_ids, scores, set(qrels[qid]), max_positive_ratio)
            ranked = [doc_ids[i] for i in np.argsort(-scores, kind="stable")[: depth + len(excluded)]]
            out[qid] = _pick(ranked, excluded, n_negatives, depth, skip, rng)
        return out
    k = min(len(doc_ids), depth + max(len(qrels[q]) for q in asked))
    tokens = bm25s.tokenize([queries[q] for q in asked], show_progress=False)
    ranks, _ = retriever.retrieve(tokens, k=k, show_progress=show_progress, n_threads=0)  # (Q, k) indices into doc_ids
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
    max_positive_ratio: float | None = None,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """Dense hard negatives from an embedding model (a synthembed Embedder): cosine ranks [skip, depth) minus the
    relevant ones, and minus those above `max_positive_ratio` x the positive's cosine when that is given."""
    asked = _check(corpus, queries, qrels)
    _check_guards(depth, skip, max_positive_ratio)
    doc_ids = list(corpus)
    progress = {} if show_progress else {"show_progress": False}  # the Embedder's own default otherwise
    d_reps = embedder.encode_documents([beir_document(corpus[d]) for d in doc_ids], **progress)  # (N, D)
    q_reps = embedder.encode_queries([queries[q] for q in asked], task=task, **progress)  # (Q, D)
    k = min(len(doc_ids), depth + max(len(qrels[q]) for q in asked))
    rng = random.Random(seed)
    out = {}
    for start in range(0, len(asked), batch_size):
        scores = q_reps[start : start + batch_size] @ d_reps.T  # (b, N)
        order = np.argsort(-scores, axis=1, kind="stable")  # (b, N)
        for row, qid in enumerate(asked[start : start + batch_size]):
            excluded = set(qrels[qid]) | too_close(doc_ids, scores[row], set(qrels[qid]), max_positive_ratio)
            top = order[row, : max(k, depth + len(excluded))]
            out[qid] = _pick([doc_ids[i] for i in top], excluded, n_negatives, depth, skip, rng)
    return out


def mine_synthetic(
    embedder,
    examples: list[Example],
    instructions: bool = False,
    n_negatives: int = 1,
    depth: int = 30,
    skip: int = 0,
    max_positive_ratio: float | None = 0.95,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """Hard negatives for synthetic examples from the run itself: {example id: [document text, ...]}.

    The corpus of a task group is every distinct positive and negative its examples hold (documents of one form: a
    short-long query is answered by passages, not by sts sentences); each example's query (with its instruction when
    `instructions`) is ranked against it, its own positive is the relevant document, and the guards above apply. An
    example that finds no candidate is left out of the result.
    """
    out: dict[str, list[str]] = {}
    for group in sorted({e.task_type for e in examples}):
        members = [e for e in examples if e.task_type == group]
        texts = list(dict.fromkeys([e.positive for e in members] + [e.negative for e in members if e.negative]))
        if len(texts) < 2:
            continue
        doc_id = {text: f"d{i}" for i, text in enumerate(texts)}
        corpus = {doc_id[text]: {"title": "", "text": text} for text in texts}
        queries = {e.id: format_query(e.task if instructions else None, e.query) for e in members}
        qrels = {e.id: {doc_id[e.positive]: 1} for e in members}
        mined = mine_embedding(embedder, corpus, queries, qrels, n_negatives=n_negatives, depth=depth, skip=skip,
                               seed=seed, max_positive_ratio=max_positive_ratio, show_progress=show_progress)
        out.update({qid: [corpus[did]["text"] for did in dids] for qid, dids in mined.items() if dids})
    return out


def mine_negatives(
    how: str, corpus, queries, qrels, *, task: str | None = None, depth: int = 30, seed: int = 0, max_len: int = 512,
    show_progress: bool = True, skip: int = 0, max_positive_ratio: float | None = None,
) -> dict[str, list[str]]:
    """One hard negative per judged query (corpus, queries and qrels as read_beir gives them), by `how` (`synthembed
    train --hard-negatives`): "bm25", or "embedding:<model>" for any model load_embedder accepts (its inputs cut at
    min(max_len, 512) tokens), whose queries carry `task` only where that model takes instructions (model_config's
    uses_instructions: our exports as trained, decoder-only models yes, encoders like MiniLM no). `skip` and
    `max_positive_ratio` are the guards above (off by default)."""
    print(f"[train] mining hard negatives with {how} for {len(queries)} queries over {len(corpus)} documents")
    guards = {"skip": skip, "max_positive_ratio": max_positive_ratio}
    if how == "bm25":
        return mine_bm25(corpus, queries, qrels, depth=depth, seed=seed, show_progress=show_progress, **guards)
    if how.startswith("embedding:"):
        from ..model import load_embedder

        name = how.split(":", 1)[1]
        miner = load_embedder(name, max_len=min(max_len, 512))
        # the miner ranks as it was trained to: a query gets the instruction only where the miner model takes one
        # (the rule evaluation follows), so MiniLM mines with the plain queries it knows
        task = task if uses_instructions(name, miner) else None
        return mine_embedding(miner, corpus, queries, qrels, task=task, depth=depth, seed=seed, **guards)
    raise SynthembedError(f"--hard-negatives {how!r}: use bm25, none, or embedding:<model>")
