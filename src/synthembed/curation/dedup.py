"""Near-duplicates beyond normalized equality: MinHash with LSH over word shingles, and optionally cosine similarity of
embeddings. Generation already drops exact copies and copies equal after normalization (generation/dedup.py); these
catch the rewordings an LLM produces when it is asked the same thing many times.

    from synthembed.curation.dedup import minhash_duplicates
    found = minhash_duplicates(texts, groups, threshold=0.8)   # {index: (index of the earlier copy it repeats, similarity)}

Both walk the examples in file order and keep the first of each cluster: an example is a duplicate when it is close
enough to one that was kept before it, within its task group (groups differ in form: an sts sentence beside a
short-long query means nothing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .ngrams import jaccard, shingles, tokens

# LSH is approximate: it may miss a pair just above the threshold. Its buckets are tuned a little below the threshold
# asked for, and every candidate is then checked with the exact Jaccard similarity of the shingle sets, so the decision
# itself is exact and only the search is approximate.
LSH_SLACK = 0.1


def minhash_duplicates(
    texts: Sequence[str],
    groups: Sequence[str],
    threshold: float = 0.8,
    shingle_size: int = 3,
    num_perm: int = 128,
    seed: int = 1,
) -> dict[int, tuple[int, float]]:
    """{index: (index of the earlier kept text it repeats, Jaccard similarity)} for every text whose word-shingle set
    has Jaccard similarity >= `threshold` with an earlier kept text of the same group.

    >>> minhash_duplicates(["the cat sat on the mat today", "The cat sat on the mat, today!", "dogs bark"], ["a"] * 3)
    {1: (0, 1.0)}
    """
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(tokens(text), shingle_size) for text in texts]
    hashes = MinHash.bulk(
        [[s.encode("utf-8") for s in sorted(shingle_set)] for shingle_set in sets], num_perm=num_perm, seed=seed
    )
    indexes: dict[str, MinHashLSH] = {}
    found: dict[int, tuple[int, float]] = {}
    for i, (group, shingle_set, minhash) in enumerate(zip(groups, sets, hashes, strict=True)):
        if not shingle_set:
            continue  # an empty text has nothing to compare
        lsh = indexes.get(group)
        if lsh is None:
            lsh = indexes[group] = MinHashLSH(threshold=max(0.05, threshold - LSH_SLACK), num_perm=num_perm)
        best = max(((jaccard(shingle_set, sets[j]), -j) for j in map(int, lsh.query(minhash))), default=None)
        if best is not None and best[0] >= threshold:
            found[i] = (-best[1], best[0])
        else:
            lsh.insert(str(i), minhash)
    return found


def embedding_duplicates(
    vectors: np.ndarray, groups: Sequence[str], threshold: float = 0.95, block: int = 1024
) -> dict[int, tuple[int, float]]:
    """{index: (index of the earlier kept row it repeats, cosine)} for rows of L2-normalized `vectors` whose cosine
    with an earlier kept row of the same group is >= `threshold`. Exact (every pair is scored, a block at a time):
    quadratic in the size of a group, which is seconds for tens of thousands of examples.

    >>> v = np.array([[1.0, 0.0], [0.999, 0.045], [0.0, 1.0]])
    >>> embedding_duplicates(v / np.linalg.norm(v, axis=1, keepdims=True), ["a"] * 3)
    {1: (0, 0.999)}
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    found: dict[int, tuple[int, float]] = {}
    for rows in members.values():
        group_vectors = vectors[rows]
        kept = np.zeros(len(rows), dtype=bool)
        for start in range(0, len(rows), block):
            sims = group_vectors[start : start + block] @ group_vectors[: start + block].T  # (b, start + b)
            for offset in range(sims.shape[0]):
                i = start + offset
                earlier = np.where(kept[:i], sims[offset, :i], -np.inf)
                j = int(np.argmax(earlier)) if i else -1
                if i and earlier[j] >= threshold:
                    found[rows[i]] = (rows[j], round(float(earlier[j]), 4))
                else:
                    kept[i] = True
    return found
