"""Personalized passkey retrieval, the data (the paper's "Long context" study, Figure 5): candidate documents of exact
token lengths, each holding one person's pass key, and the queries that ask for them. The grid over lengths and RoPE
settings is passkey_grid.py.

Each candidate document is deterministic filler text with one person's name and pass key inserted at a random sentence
boundary; a query asks "what is the pass key for <name>?" and must rank that person's document first among the
candidates. Lengths are counted with the model's own tokenizer.

    from synthembed.evaluation.passkey import make_passkey_set
    pset = make_passkey_set(tokenizer, 512, n_queries=50, n_candidates=100)
    pset.documents[pset.gold[0]].passkey  # the key the first query asks for

A pool of `n_candidates` documents is built per length and every one of the `n_queries` queries is ranked against the
whole pool (as LongEmbed's passkey task does): 100 candidates per query, 50 queries per length, top-1 accuracy.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SynthembedError

# The query instruction (section 3.1's `Instruct: {task}\nQuery: {query}`), in our own words.
PASSKEY_TASK = "Given a person's name, retrieve the passage that states the pass key of that person"
PASSKEY_QUERY = "what is the pass key for {name}?"
NEEDLE = "{name}'s pass key is {passkey}. Remember it: {passkey} is the pass key of {name}."

# Filler: plain, uniform sentences (written for this project) that carry no information about anyone.
FILLER_SENTENCES: tuple[str, ...] = (
    "The river keeps running toward the sea.",
    "A small boat rests near the old stone bridge.",
    "Morning light falls softly on the quiet hills.",
    "The baker opens the shop long before sunrise.",
    "Leaves turn orange when the days grow short.",
    "A slow train crosses the valley twice a day.",
    "The library smells of paper, wood and dust.",
    "Clouds gather over the harbor in the evening.",
    "Children fly bright kites in the open field.",
    "The clock in the square rings every hour.",
    "Bees move from flower to flower in the garden.",
    "Snow covers the mountain road in winter.",
)

FIRST_NAMES: tuple[str, ...] = (
    "Amara", "Bruno", "Celia", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kavya", "Lorenzo",
    "Maren", "Nikolai", "Olga", "Pavel", "Quentin", "Rosa", "Sanjay", "Tamsin", "Umar", "Vera", "Wendell", "Ximena",
    "Yusuf", "Zofia", "Anselm", "Beatriz", "Cyrus", "Delphine", "Emeka", "Freya", "Gustavo", "Halima", "Ivo", "Juno",
)  # fmt: skip
SURNAMES: tuple[str, ...] = (
    "Abernathy", "Bergstrom", "Castellano", "Dufresne", "Eriksen", "Fairweather", "Gallagher", "Hollister", "Ivanova",
    "Jablonski", "Kowalczyk", "Lindqvist", "Montgomery", "Nakamura", "Okonkwo", "Pemberton", "Quiroga", "Rasmussen",
    "Sorensen", "Thornbury", "Underhill", "Valdivia", "Whitcombe", "Yamamoto", "Zeller", "Achterberg", "Blackwood",
    "Carrington", "Delacroix", "Esposito",
)  # fmt: skip


# --- the task ---------------------------------------------------------------------------------------------------------


@dataclass
class PasskeyDocument:
    """One candidate: `text` holds `name`'s `passkey` in the needle sentence at text[needle_start:needle_end]."""

    text: str
    name: str
    passkey: str
    needle_start: int
    needle_end: int
    n_tokens: int  # as the model's tokenizer counts it, special tokens (BOS) included, EOS not


@dataclass
class PasskeySet:
    """The candidates for one length and the queries that rank them; gold[i] indexes the document query i asks for."""

    length: int
    documents: list[PasskeyDocument]
    queries: list[str]  # plain questions; the instruction is added at encoding time
    gold: list[int]
    seed: int = 0

    @property
    def names(self) -> list[str]:
        return [doc.name for doc in self.documents]


def count_tokens(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens per text as the model sees them: with the tokenizer's special tokens (BOS), before EOS is appended."""
    # verbose=False: a 32k-token document is the point here, not an accident worth a warning
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]]


def _special_count(tokenizer) -> int:
    return len(tokenizer("", add_special_tokens=True)["input_ids"])


class _Filler:
    """Deterministic filler text long enough for `length` tokens, with its token offsets and sentence starts."""

    def __init__(self, tokenizer, length: int):
        sentences = [" " + s for s in FILLER_SENTENCES]  # each sentence owns its leading space
        per_cycle = max(1, len(tokenizer("".join(sentences), add_special_tokens=False)["input_ids"]))
        cycles = math.ceil(length / per_cycle) + 2
        self.starts: list[int] = []  # character offset of each sentence start (its space)
        parts, pos = [], 0
        for _ in range(cycles):
            for s in sentences:
                self.starts.append(pos)
                parts.append(s)
                pos += len(s)
        self.text = "".join(parts)
        enc = tokenizer(self.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        self.token_starts = [a for a, _ in enc["offset_mapping"]]  # (T,)
        self.token_ends = [b for _, b in enc["offset_mapping"]]  # (T,)
        if not self.token_starts:
            raise SynthembedError("the tokenizer produced no tokens for the filler text")

    def tokens_before(self, char: int) -> int:
        """How many filler tokens start before character `char`."""
        return bisect.bisect_left(self.token_starts, char)

    def compose(self, boundary: int, before: int, n_after: int, needle: str) -> str:
        """Filler up to `boundary` (`before` tokens), the needle, then `n_after` more filler tokens."""
        n_after = min(max(0, n_after), len(self.token_ends) - before)
        cut = self.token_ends[before + n_after - 1] if n_after > 0 else boundary
        return (self.text[:boundary] + " " + needle + self.text[boundary:cut]).lstrip()


def make_passkey_set(
    tokenizer,
    length: int,
    n_queries: int = 50,
    n_candidates: int = 100,
    seed: int = 0,
    tolerance: int = 4,
) -> PasskeySet:
    """Build `n_candidates` documents of `length` tokens (± `tolerance`) and `n_queries` questions about them.

    Names and pass keys are distinct within the set; the needle sits at a random sentence boundary that leaves it whole.
    The same (length, seed) always gives the same set.

    >>> s = make_passkey_set(tokenizer, 512, n_queries=5, n_candidates=20)  # doctest: +SKIP
    >>> s.documents[s.gold[0]].name in s.queries[0]  # doctest: +SKIP
    True
    """
    if n_queries < 1 or n_candidates < 2:
        raise SynthembedError(f"need at least 1 query and 2 candidates, got {n_queries} and {n_candidates}")
    if n_queries > n_candidates:
        raise SynthembedError(f"{n_queries} queries need at least as many candidates, got {n_candidates}")
    if n_candidates > len(FIRST_NAMES) * len(SURNAMES):
        raise SynthembedError(f"at most {len(FIRST_NAMES) * len(SURNAMES)} distinct names, asked for {n_candidates}")
    rng = random.Random(f"passkey-{seed}-{length}")  # a string seed is hashed deterministically across runs
    full_names = [f"{f} {s}" for f in FIRST_NAMES for s in SURNAMES]
    names = rng.sample(full_names, n_candidates)
    passkeys = [str(k) for k in rng.sample(range(10_000, 100_000), n_candidates)]
    needles = [NEEDLE.format(name=n, passkey=k) for n, k in zip(names, passkeys, strict=True)]
    needle_tokens = [len(ids) for ids in tokenizer([" " + nd for nd in needles], add_special_tokens=False)["input_ids"]]
    specials = _special_count(tokenizer)
    budget = length - specials  # tokens for filler + needle
    if budget < max(needle_tokens) + 1:
        raise SynthembedError(
            f"length {length} is too short: the pass key sentence alone takes up to {max(needle_tokens) + specials} tokens"
        )
    filler = _Filler(tokenizer, length)

    # a random sentence boundary per document that leaves room for the whole needle before the document ends
    boundaries = []
    for n_needle in needle_tokens:
        room = [b for b in filler.starts if filler.tokens_before(b) + n_needle <= budget]
        boundaries.append(rng.choice(room))
    before = [filler.tokens_before(b) for b in boundaries]
    # filler tokens after the needle if tokens simply added up; corrected by the measured difference until exact.
    # The first document's correction is applied to all others (it is nearly always the same), then every unfinished
    # document is re-measured in one batched (parallel) tokenizer call per round.
    n_after = [budget - b - n for b, n in zip(before, needle_tokens, strict=True)]
    best: list[tuple[int, str] | None] = [None] * n_candidates  # (tokens, text) closest to the target so far

    def settle(pending: list[int]) -> None:
        for _ in range(6):
            texts = [filler.compose(boundaries[i], before[i], n_after[i], needles[i]) for i in pending]
            still = []
            for i, text, n_tokens in zip(pending, texts, count_tokens(tokenizer, texts), strict=True):
                if best[i] is None or abs(n_tokens - length) < abs(best[i][0] - length):
                    best[i] = (n_tokens, text)
                if n_tokens != length and not (n_after[i] <= 0 and n_tokens > length):
                    n_after[i] = max(0, n_after[i] - (n_tokens - length))
                    still.append(i)
            pending = still
            if not pending:
                return

    first_estimate = n_after[0]
    settle([0])
    drift = n_after[0] - first_estimate
    n_after[1:] = [max(0, n + drift) for n in n_after[1:]]
    settle(list(range(1, n_candidates)))

    documents = []
    for i, (n_tokens, text) in enumerate(best):
        if abs(n_tokens - length) > tolerance:
            raise SynthembedError(
                f"could not fit a document to {length} tokens (got {n_tokens}); the tokenizer is unusual"
            )
        start = text.index(needles[i])
        documents.append(PasskeyDocument(text, names[i], passkeys[i], start, start + len(needles[i]), n_tokens))

    queried = rng.sample(range(n_candidates), n_queries)
    queries = [PASSKEY_QUERY.format(name=names[i]) for i in queried]
    return PasskeySet(length=length, documents=documents, queries=queries, gold=queried, seed=seed)


def lexical_top1(pset: PasskeySet) -> float:
    """Top-1 accuracy of BM25 (bm25s) on a passkey set: a check that the task is well posed, since only the right
    document contains the asked-for name. Expect 1.0; an embedding model's accuracy is then about the model.
    """
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([d.text for d in pset.documents], stopwords="en", show_progress=False),
                    show_progress=False)  # fmt: skip
    found, _ = retriever.retrieve(bm25s.tokenize(pset.queries, stopwords="en", show_progress=False), k=1,
                                  show_progress=False)  # fmt: skip  # (Q, 1) document indices
    return float(sum(int(found[i, 0]) == g for i, g in enumerate(pset.gold)) / len(pset.gold))


def describe_sets(sets: dict[int, PasskeySet]):
    """One row per length: documents, the fewest and most tokens, where the needle sits (median share of the text) and
    BM25's top-1 accuracy (lexical_top1). -> DataFrame"""
    import pandas as pd

    return pd.DataFrame([{
        "target length": n, "documents": len(s.documents),
        "min tokens": min(d.n_tokens for d in s.documents), "max tokens": max(d.n_tokens for d in s.documents),
        "needle at (median share of text)": pd.Series([d.needle_start / len(d.text) for d in s.documents]).median(),
        "BM25 top-1": lexical_top1(s),
    } for n, s in sets.items()])  # fmt: skip
