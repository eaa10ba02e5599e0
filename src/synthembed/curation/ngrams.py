"""Word tokens, shingles and n-gram hashes: what the near-duplicate and contamination filters compare.

    from synthembed.curation.ngrams import tokens, shingles
    tokens("The cat sat, on THE mat!")      # ['the', 'cat', 'sat', 'on', 'the', 'mat']
    tokens("我们去公园")                      # ['我', '们', '去', '公', '园']: one token per character of a space-less script
    shingles(["a", "b", "c", "d"], 3)      # {'a b c', 'b c d'}

Texts are compared after case folding and NFKC, with punctuation dropped, so "Hello, world" and "hello world" share
every n-gram. Scripts written without spaces (CJK, Thai, Lao, Khmer, Myanmar, Tibetan) have no words to split on: each
of their characters is one token, which is how n-gram overlap is usually measured for them.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

# One token per character of a space-less script, else runs of letters and digits.
_UNSPACED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\U00020000-\U0003ffff"
)
_TOKEN = re.compile(rf"[{_UNSPACED}]|[^\W_{_UNSPACED}]+", re.UNICODE)


def tokens(text: str) -> list[str]:
    """Case-folded word tokens of `text`; each character of a space-less script is a token of its own.

    >>> tokens("Hello, WORLD -- it's 2024!")
    ['hello', 'world', 'it', 's', '2024']
    """
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def shingles(words: list[str], size: int) -> set[str]:
    """The set of `size`-word windows of `words`; a text shorter than `size` is one shingle (itself), an empty one none.

    >>> sorted(shingles(["a", "b", "c"], 2)), shingles(["a"], 3)
    (['a b', 'b c'], {'a'})
    """
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def ngram_hashes(words: list[str], size: int) -> np.ndarray:
    """64-bit hashes of every `size`-word window of `words` (empty where the text is shorter), for set lookups.

    Python's hash of a tuple of strings is stable within one process, which is all a lookup table built and queried in
    the same run needs (it is salted across processes, so the hashes are never stored).
    """
    if len(words) < size:
        return np.empty(0, dtype=np.int64)
    return np.fromiter((hash(tuple(words[i : i + size])) for i in range(len(words) - size + 1)), dtype=np.int64)


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b| (0 for two empty sets).

    >>> jaccard({"x", "y"}, {"y", "z"})
    0.3333333333333333
    """
    union = len(a | b)
    return len(a & b) / union if union else 0.0
