"""Personalized passkey retrieval over context lengths and RoPE settings (the paper's "Long context" study, Figure 5).

Each candidate document is deterministic filler text with one person's name and pass key inserted at a random sentence
boundary; a query asks "what is the pass key for <name>?" and must rank that person's document first among the
candidates. Lengths are counted with the model's own tokenizer. The RoPE base (`rope_theta`) and the sliding window are
changed in the model's config before loading, and the settings that took effect are read back from the loaded model.

    from synthembed.evaluation.passkey import make_passkey_set, run_passkey_grid, PasskeySetting
    grid = run_passkey_grid("runs/tiny-mistral", lengths=[256, 512],
                            settings=[PasskeySetting(1e4, 4096), PasskeySetting(1e5, None)])
    synthembed passkey --model runs/tiny-mistral --lengths 256,512 --rope-bases 10000,100000 --out runs/passkey

A pool of `n_candidates` documents is built per length and every one of the `n_queries` queries is ranked against the
whole pool (as LongEmbed's passkey task does): 100 candidates per query, 50 queries per length, top-1 accuracy.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import gc
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from .metrics import top1_accuracy

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

PAPER_LENGTHS: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

# The paper's Figure 5 as PAPER.md states it (top-1 accuracy, %). Only the points it gives are here; for RoPE base 10^5
# it gives "at least 88% at every length" (kept as a band) and 92% at 32k; for 10^6, a band of 36 to 88%.
PAPER_FIGURE5: dict[str, dict[str, Any]] = {
    "window 4k, base 1e4": {
        "rope_theta": 1e4, "sliding_window": 4096,
        "points": {256: 100.0, 512: 100.0, 1024: 100.0, 2048: 100.0, 4096: 100.0, 8192: 70.0, 16384: 30.0, 32768: 26.0},
    },
    "window 32k, base 1e4": {"rope_theta": 1e4, "sliding_window": 32768, "points": {16384: 0.0, 32768: 0.0}},
    "window 32k, base 1e5": {"rope_theta": 1e5, "sliding_window": 32768, "points": {32768: 92.0}, "band": (88.0, 100.0)},
    "window 32k, base 1e6": {"rope_theta": 1e6, "sliding_window": 32768, "points": {}, "band": (36.0, 88.0)},
}  # fmt: skip


# --- the task -----------------------------------------------------------------------------------------------------


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


# --- settings: RoPE base and sliding window ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PasskeySetting:
    """A RoPE base and sliding window to load the model with. None keeps the model's own; sliding_window=0 turns the
    window off (full causal attention)."""

    rope_theta: float | None = None
    sliding_window: int | None = None

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rope_theta is not None:
            out["rope_theta"] = float(self.rope_theta)
        if self.sliding_window is not None:
            out["sliding_window"] = int(self.sliding_window) or None  # None in the config = no window
        return out

    @property
    def label(self) -> str:
        window = "model's window" if self.sliding_window is None else f"window {_short(self.sliding_window)}"
        base = "model's base" if self.rope_theta is None else f"base {_base(self.rope_theta)}"
        return f"{window}, {base}"


def _short(n: int | None) -> str:
    """4096 -> '4k'; 0 / None -> 'none'."""
    if not n:
        return "none"
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _base(theta: float) -> str:
    """1e5 -> '1e5'; other values as %g."""
    exp = math.log10(theta) if theta > 0 else 0.5
    return f"1e{round(exp)}" if abs(exp - round(exp)) < 1e-9 else f"{theta:g}"


def grid_settings(
    rope_bases: Sequence[float | None], sliding_windows: Sequence[int | None] = (None,)
) -> list[PasskeySetting]:
    """Every (window, base) pair, windows outermost: the rows of the accuracy grid."""
    return [PasskeySetting(base, window) for window in sliding_windows for base in rope_bases]


def rope_theta_in_attention(model) -> float | None:
    """The RoPE base the rotary embedding actually uses, recovered from its inverse frequencies.

    inv_freq[i] = base ** (-2 i / dim) for i < dim / 2, so the last one gives base = inv_freq[-1] ** (-dim / (dim - 2)).
    Reading it back from the module (not the config) shows an override reached the attention. None when there is none.
    """
    for module in model.modules():
        inv_freq = getattr(module, "inv_freq", None)
        if inv_freq is None or getattr(module, "rope_type", "default") != "default" or inv_freq.numel() < 2:
            continue
        dim = 2 * inv_freq.numel()
        last = float(inv_freq.detach().double()[-1])
        return float(f"{last ** (-dim / (dim - 2)):.3g}")  # rounded: inv_freq may be stored in bf16
    return None


def effective_settings(emb) -> dict[str, Any]:
    """The settings that took effect in a loaded Embedder: config values and what the attention really uses."""
    from ..model import rope_theta_of

    config = emb.model.config
    return {
        "rope_theta": rope_theta_of(config),
        "rope_theta_in_attention": rope_theta_in_attention(emb.model),
        "sliding_window": getattr(config, "sliding_window", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "dtype": str(next(emb.model.parameters()).dtype).replace("torch.", ""),
        "device": str(emb.device),
    }


# --- scoring ----------------------------------------------------------------------------------------------------------


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_passkey_set(emb, pset: PasskeySet, max_tokens_per_batch: int = 32768, show_progress: bool = True) -> dict:
    """Encode one length's candidates and queries, return {accuracy, seconds, docs_per_s, batch_size}.

    Documents are encoded in batches of about `max_tokens_per_batch` tokens (at least one document), so a 32k-token
    document goes alone while 256-token ones go 128 at a time.
    """
    import numpy as np

    if emb.max_len < pset.length + 1:
        raise SynthembedError(
            f"the model was loaded with max_len {emb.max_len}, too short for {pset.length}-token documents"
        )
    batch_size = max(1, max_tokens_per_batch // (pset.length + 1))
    started = time.perf_counter()
    p_reps = emb.encode_documents(
        [d.text for d in pset.documents],
        batch_size=batch_size,
        show_progress=show_progress,
        desc=f"{pset.length} tokens",
    )  # (N, D)
    seconds = time.perf_counter() - started
    q_reps = emb.encode_queries(pset.queries, task=PASSKEY_TASK, batch_size=64, show_progress=False)  # (Q, D)
    return {
        "accuracy": top1_accuracy(np.asarray(q_reps) @ np.asarray(p_reps).T, pset.gold),
        "encode_seconds": round(seconds, 3),
        "docs_per_s": round(len(pset.documents) / seconds, 3) if seconds > 0 else None,
        "batch_size": batch_size,
    }


# --- the grid ---------------------------------------------------------------------------------------------------------


@dataclass
class PasskeyGrid:
    """Top-1 accuracy for every (setting, length): `rows` are plain dicts, one per cell; `effective` per setting."""

    model: str
    lengths: list[int]
    settings: list[PasskeySetting]
    rows: list[dict[str, Any]] = field(default_factory=list)
    effective: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_queries: int = 50
    n_candidates: int = 100
    seed: int = 0

    def frame(self):
        """The rows as a DataFrame (one row per cell)."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def table(self):
        """Accuracy in % with settings as rows and lengths as columns (NaN where a length did not fit)."""
        df = self.frame()
        table = df.pivot(index="setting", columns="length", values="accuracy") * 100
        return table.reindex([s.label for s in self.settings])

    def accuracy(self) -> dict[str, dict[str, float | None]]:
        """{setting label: {length as str: top-1 accuracy, None where it did not fit}} (JSON-ready)."""
        out: dict[str, dict[str, float | None]] = {s.label: {} for s in self.settings}
        for row in self.rows:
            out[row["setting"]][str(row["length"])] = row["accuracy"]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "lengths": self.lengths,
            "settings": [asdict(s) | {"label": s.label} for s in self.settings],
            "effective": self.effective,
            "n_queries": self.n_queries,
            "n_candidates": self.n_candidates,
            "seed": self.seed,
            "rows": self.rows,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write grid.json and grid.csv into `out_dir`; returns the JSON path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "grid.json").write_text(json.dumps(self.to_json(), indent=2))
        columns = list(self.rows[0]) if self.rows else ["setting", "length", "accuracy"]
        with open(out / "grid.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        return out / "grid.json"


def run_passkey_grid(
    model: str,
    lengths: Sequence[int],
    settings: Sequence[PasskeySetting] = (PasskeySetting(),),
    n_queries: int = 50,
    n_candidates: int = 100,
    seed: int = 0,
    max_tokens_per_batch: int = 32768,
    device: str | None = None,
    dtype: str | None = None,
    show_progress: bool = True,
    attn_implementation: str = "sdpa",
) -> PasskeyGrid:
    """Top-1 passkey accuracy of `model` for every setting and length.

    The model is loaded once per setting, with the setting applied to its config before the weights load; the data are
    built once per length with the model's own tokenizer and shared by every setting. A length that does not fit in
    memory is recorded with status "does not fit" and a message, and the grid goes on.
    """
    from transformers import AutoTokenizer

    from ..model import load_embedder
    from ..paths import resolve_model_path

    lengths = sorted({int(n) for n in lengths})
    if not lengths or lengths[0] < 16:
        raise SynthembedError(f"lengths must be at least 16 tokens, got {list(lengths)}")
    if not settings:
        raise SynthembedError("no settings to evaluate")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model))
    except OSError as err:
        raise SynthembedError(f"cannot load the tokenizer of {model!r}: {str(err).splitlines()[0]}") from None
    sets = {n: make_passkey_set(tokenizer, n, n_queries, n_candidates, seed) for n in lengths}
    grid = PasskeyGrid(model=str(model), lengths=lengths, settings=list(settings), n_queries=n_queries,
                       n_candidates=n_candidates, seed=seed)  # fmt: skip
    for setting in settings:
        emb = load_embedder(
            model,
            max_len=lengths[-1] + 8,
            device=device,
            dtype=dtype,
            config_overrides=setting.overrides(),
            attn_implementation=attn_implementation,
        )
        effective = effective_settings(emb)
        _check_took_effect(setting, effective)
        grid.effective[setting.label] = effective
        if show_progress:
            print(f"[passkey] {setting.label}: in effect {effective}", flush=True)
        for n in lengths:
            row: dict[str, Any] = {"setting": setting.label, "rope_theta": effective["rope_theta"],
                                   "sliding_window": effective["sliding_window"], "length": n}  # fmt: skip
            try:
                row |= {"status": "ok", "message": ""} | score_passkey_set(
                    emb, sets[n], max_tokens_per_batch, show_progress
                )
            except Exception as err:  # noqa: BLE001 - only running out of memory is turned into a result
                if not _is_out_of_memory(err):
                    raise
                _free_memory()
                message = f"{n}-token documents do not fit in memory on {effective['device']} ({type(err).__name__})"
                print(f"[passkey] {setting.label}: {message}; skipped", flush=True)
                row |= {"status": "does not fit", "message": message, "accuracy": None}
            grid.rows.append(row)
        del emb
        _free_memory()
    return grid


def _check_took_effect(setting: PasskeySetting, effective: dict[str, Any]) -> None:
    """Fail loudly when the loaded model does not use the RoPE base or window asked for."""
    if setting.rope_theta is not None:
        for key in ("rope_theta", "rope_theta_in_attention"):
            got = effective[key]
            if got is not None and not math.isclose(got, setting.rope_theta, rel_tol=0.02):
                raise SynthembedError(f"asked for RoPE base {setting.rope_theta:g}, but the model's {key} is {got:g}")
    if setting.sliding_window is not None and effective["sliding_window"] != (setting.sliding_window or None):
        raise SynthembedError(
            f"asked for sliding window {setting.sliding_window}, the model has {effective['sliding_window']}"
        )


# --- mteb's LEMBPasskeyRetrieval (LongEmbed) --------------------------------------------------------------------------

LEMB_TASK = "LEMBPasskeyRetrieval"


def lemb_passkey_status() -> tuple[bool, str]:
    """Whether mteb's LEMBPasskeyRetrieval data can be read here: (available, reason in words).

    Offline (HF_HUB_OFFLINE) the data must already be in the Hugging Face cache; online the hub must answer.
    """
    import mteb

    try:
        task = mteb.get_task(LEMB_TASK)
    except Exception as err:  # noqa: BLE001 - an mteb without the task is a reason, not a crash
        return False, f"this mteb ({mteb.__version__}) has no {LEMB_TASK}: {err}"
    repo, revision = task.metadata.dataset["path"], task.metadata.dataset.get("revision")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_OFFLINE

    try:
        snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True)
        return True, f"{repo}@{(revision or 'main')[:8]} is in the local Hugging Face cache"
    except Exception:  # noqa: BLE001 - not cached; whether the hub is reachable decides
        pass
    if HF_HUB_OFFLINE:
        return False, f"offline (HF_HUB_OFFLINE=1) and {repo} is not in the local Hugging Face cache"
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(repo, revision=revision, timeout=10)
    except Exception as err:  # noqa: BLE001 - any network failure means "not reachable"
        return False, f"the Hugging Face hub is not reachable for {repo}: {type(err).__name__}"
    return True, f"{repo} is reachable on the Hugging Face hub"


# --- command line -----------------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    """'256,1k,32k' -> [256, 1024, 32768]."""
    out = []
    for item in (t.strip().lower() for t in text.split(",")):
        if not item:
            continue
        try:
            out.append(int(float(item[:-1]) * 1024) if item.endswith("k") else int(item))
        except ValueError:
            raise SynthembedError(f"not a token count: {item!r} (use e.g. 256,4096,32k)") from None
    if not out:
        raise SynthembedError("empty list of lengths")
    return out


def _base_list(text: str) -> list[float | None]:
    """'1e4,100000,model' -> [10000.0, 100000.0, None]."""
    out: list[float | None] = []
    for item in (t.strip().lower() for t in text.split(",")):
        if item in ("model", "default"):
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise SynthembedError(f"not a RoPE base: {item!r} (use e.g. 1e4,1e5 or 'model')") from None
        if value <= 1:
            raise SynthembedError(f"a RoPE base must be greater than 1, got {item}")
        out.append(value)
    return out


def _window_list(text: str) -> list[int | None]:
    """'4096,32k,none,model' -> [4096, 32768, 0, None] (0 = no window, None = the model's own)."""
    out: list[int | None] = []
    for item in (t.strip().lower() for t in text.split(",")):
        if item in ("model", "default"):
            out.append(None)
        elif item in ("none", "off", "0"):
            out.append(0)
        else:
            out.extend(_int_list(item))
    return out


def configure_passkey_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory or hub id (a Mistral-family decoder)")
    parser.add_argument("--lengths", required=True, help="document lengths in tokens, e.g. 256,1024,4k,32k")
    parser.add_argument("--rope-bases", default="model", help="RoPE bases, e.g. 1e4,1e5,1e6; 'model' keeps its own")
    parser.add_argument(
        "--sliding-windows", default="model", help="sliding windows, e.g. 4k,32k; 'none' = full attention"
    )
    parser.add_argument("--out", required=True, help="directory for grid.json, grid.csv and the plots")
    parser.add_argument("--queries", type=int, default=50, help="queries per length (default 50)")
    parser.add_argument("--candidates", type=int, default=100, help="candidate documents per length (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens-per-batch", type=int, default=32768, help="tokens per encoding batch")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 (default: bf16 on CUDA, float32 on CPU)")
    parser.add_argument(
        "--attn", default="sdpa", help="attention implementation: sdpa (default) or flash_attention_2 where installed"
    )


def run_passkey_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "grid.json").exists():
        raise SynthembedError(
            f"{out / 'grid.json'} exists: finished results are never overwritten; choose another --out"
        )
    settings = grid_settings(_base_list(args.rope_bases), _window_list(args.sliding_windows))
    grid = run_passkey_grid(
        args.model,
        _int_list(args.lengths),
        settings,
        n_queries=args.queries,
        n_candidates=args.candidates,
        seed=args.seed,
        max_tokens_per_batch=args.max_tokens_per_batch,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
    )
    path = grid.save(out)
    from ..plots import plot_passkey_heatmap, plot_passkey_lines

    plot_passkey_heatmap(grid.table(), out / "heatmap.png")
    plot_passkey_lines(grid.table(), PAPER_FIGURE5, out / "accuracy_by_length.png", chance=1 / args.candidates)
    print(grid.table().round(1).to_string())
    print(f"[passkey] wrote {path}, {out / 'grid.csv'}, heatmap.png and accuracy_by_length.png")
    return 0


def run_lemb_passkey(
    emb, name: str, lengths: Sequence[int] | None = None, instructions: bool = True
) -> dict[int, float]:
    """mteb's LEMBPasskeyRetrieval with a loaded Embedder: {length: nDCG@1} (= top-1 accuracy, one relevant document).

    Raises SynthembedError saying why when the data cannot be read here (see `lemb_passkey_status`).
    """
    available, reason = lemb_passkey_status()
    if not available:
        raise SynthembedError(f"{LEMB_TASK} is not available: {reason}")
    import mteb

    from .run import mteb_encoder

    splits = [f"test_{int(n)}" for n in lengths] if lengths else None
    task = mteb.get_task(LEMB_TASK, eval_splits=splits)
    result = mteb.evaluate(mteb_encoder(emb, name=name, instructions=instructions), task, cache=None)
    scores = result.task_results[0].scores  # {split: [{"main_score": ..., "hf_subset": ...}, ...]}
    return {int(split.split("_")[-1]): float(entries[0]["main_score"]) for split, entries in scores.items()}


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
