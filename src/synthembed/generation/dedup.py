"""Duplicate examples within a task group: exact (same query, positive and negative) and near (the same query and positive
after normalize_text). The paper removes exact duplicates (section 3.1); near ones differ only in case or punctuation.

    from synthembed.generation.dedup import Deduplicator
    dedup = Deduplicator()
    dedup.check("sts", "A cat sat.", "A cat sat down.", "Dogs bark.")   # None: new, and remembered
    dedup.check("sts", "a CAT sat", "A cat, sat down", "Birds sing.")   # 'near_duplicate'
"""

from __future__ import annotations

import json
import re
import unicodedata

from .digests import DigestSet

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Case, accents' composition, punctuation and spacing removed: texts equal after this are near-duplicates.

    >>> normalize_text("  Hello,   WORLD! ") == normalize_text("hello world")
    True
    """
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class Deduplicator:
    """Exact duplicates (same query, positive and negative) and near-duplicates (same after `normalize_text` of query
    and positive), within a task group."""

    def __init__(self) -> None:
        # 64-bit digests of the keys, not the texts: a run of 500k examples would otherwise hold every text twice
        # (gigabytes); DigestSet keeps them in about 8 bytes each (digests.py says why that is safe).
        self.exact = DigestSet()
        self.near = DigestSet()

    @staticmethod
    def _keys(task_type: str, query: str, positive: str, negative: str | None) -> tuple[str, str]:
        exact = json.dumps([task_type, query, positive, negative], ensure_ascii=False)
        near = json.dumps([task_type, normalize_text(query), normalize_text(positive)], ensure_ascii=False)
        return exact, near

    def check(self, task_type: str, query: str, positive: str, negative: str | None) -> str | None:
        """None when new (and remembered), else "duplicate" or "near_duplicate"."""
        exact, near = self._keys(task_type, query, positive, negative)
        if exact in self.exact:
            return "duplicate"
        if near in self.near:
            return "near_duplicate"
        self.exact.add(exact)
        self.near.add(near)
        return None
