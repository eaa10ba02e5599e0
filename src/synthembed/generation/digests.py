"""A set of 64-bit digests in about 8 bytes an entry: what a generation run remembers per request (the requests done,
the accepted texts for deduplication), so that its memory stays flat as the run grows to the paper's 500k examples.

    from synthembed.generation.digests import DigestSet
    done = DigestSet()
    done.add("generate/sts/0003/0001")
    "generate/sts/0003/0001" in done      # True

A Python set of the same strings costs about 120 bytes an entry (the str object and its slot), a set of 16-byte digests
about 80: at 507k requests, with three such sets, that was the 0.5 KB a request the scale benchmark saw growing. Here
new digests go to a small Python set, merged into a sorted numpy array once it holds MERGE_AT of them (a merge costs one
pass over the array, so adding n items costs O(n log n) in all); membership is a look-up in the small set, then a
binary search in the array. Two different keys share a 64-bit blake2b digest with odds of about n^2 / 2^65: 7e-9 at
500k keys, far below any other failure of a run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

MERGE_AT = 16_384


def digest64(key: str | bytes) -> int:
    """The 64-bit blake2b digest of `key` (a str as UTF-8, lone surrogates kept) as an unsigned int.

    >>> digest64("a") == digest64(b"a")
    True
    """
    data = key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class DigestSet:
    """Set semantics (add, in, len) over the 64-bit digests of str or bytes keys; the keys themselves are not kept.

    >>> s = DigestSet(["x", "y"])
    >>> ("x" in s, "z" in s, len(s))
    (True, False, 2)
    """

    def __init__(self, keys: Iterable[str | bytes] = ()):
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        for key in keys:
            self.add(key)

    def add(self, key: str | bytes) -> bool:
        """Remember `key`; False if it was there already."""
        value = digest64(key)
        if self._has(value):
            return False
        self._recent.add(value)
        if len(self._recent) >= MERGE_AT:
            self._merge()
        return True

    def _has(self, value: int) -> bool:
        if value in self._recent:
            return True
        where = int(np.searchsorted(self._sorted, np.uint64(value)))
        return where < len(self._sorted) and int(self._sorted[where]) == value

    def _merge(self) -> None:
        recent = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        self._sorted = np.union1d(self._sorted, recent)  # sorted, and no value is in both
        self._recent = set()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | bytes) and self._has(digest64(key))

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __bool__(self) -> bool:
        return len(self) > 0

    @property
    def nbytes(self) -> int:
        """About what the set holds in memory: 8 bytes per merged digest, about 60 per recent one."""
        return self._sorted.nbytes + 60 * len(self._recent)
