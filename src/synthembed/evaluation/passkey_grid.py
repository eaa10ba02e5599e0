"""Personalized passkey retrieval over context lengths and RoPE settings (the paper's Figure 5): top-1 accuracy for
every (RoPE base, sliding window) and length, with the settings that took effect read back from the loaded model; and
mteb's related LEMBPasskeyRetrieval. The documents and queries are passkey.py.

    from synthembed.evaluation.passkey_grid import PasskeySetting, run_passkey_grid
    grid = run_passkey_grid("runs/tiny-mistral", lengths=[256, 512],
                            settings=[PasskeySetting(1e4, 4096), PasskeySetting(1e5, None)])
    synthembed passkey --model runs/tiny-mistral --lengths 256,512 --rope-bases 10000,100000 --out runs/passkey

The RoPE base (`rope_theta`) and the sliding window are changed in the model's config before loading. In a model with
global and local layers (Gemma 3) the base is the global, full-attention layers' (they read the long context) and the
window is the local layers'; see model.apply_config_overrides.
"""

from __future__ import annotations

import csv
import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SynthembedError
from ..files import write_json_atomic
from .metrics import top1_accuracy
from .passkey import PASSKEY_TASK, PasskeySet, make_passkey_set

if TYPE_CHECKING:
    from ..model import Embedder, TransformerEmbedder

# --- settings: RoPE base and sliding window ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PasskeySetting:
    """A RoPE base and sliding window to load the model with. None keeps the model's own; sliding_window=0 turns the
    window off (full causal attention), which models with local sliding-window layers (Gemma 3) refuse."""

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


def _base_from_inv_freq(inv_freq) -> float | None:
    """inv_freq[i] = base ** (-2 i / dim) for i < dim / 2, so the last one gives base = inv_freq[-1] ** (-dim / (dim - 2))."""
    if inv_freq is None or inv_freq.numel() < 2:
        return None
    dim = 2 * inv_freq.numel()
    last = float(inv_freq.detach().double()[-1])
    return float(f"{last ** (-dim / (dim - 2)):.3g}")  # rounded: inv_freq may be stored in bf16


def rope_bases_in_attention(model) -> dict[str, float]:
    """The RoPE base each rotary embedding of a loaded model actually uses, recovered from its inverse frequencies:
    {layer type: base} where one module keeps a buffer per layer type (Gemma 3's `full_attention_inv_freq` and
    `sliding_attention_inv_freq`), {"all": base} where one `inv_freq` serves every layer (Llama, Mistral, Qwen2).

    Reading it back from the module (not the config) shows an override reached the attention. Scaled RoPE types
    (linear, yarn, ...) are left out: their inverse frequencies are not base ** (-2 i / dim).
    """
    bases: dict[str, float] = {}
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        if isinstance(rope_type, dict):  # one rotary embedding, one set of buffers per layer type
            found = {kind: _base_from_inv_freq(getattr(module, f"{kind}_inv_freq", None))
                     for kind, rtype in rope_type.items() if rtype == "default"}  # fmt: skip
        elif rope_type in (None, "default"):
            found = {"all": _base_from_inv_freq(getattr(module, "inv_freq", None))}
        else:
            found = {}
        bases |= {kind: base for kind, base in found.items() if base is not None and kind not in bases}
    return bases


def rope_theta_in_attention(model) -> float | None:
    """The RoPE base the attention that reads the whole context uses: the full-attention layers' where the base is set
    per layer type (see model.apply_config_overrides), else the one every layer uses. None when there is none."""
    from ..config_overrides import GLOBAL_LAYER_TYPE

    bases = rope_bases_in_attention(model)
    return bases.get(GLOBAL_LAYER_TYPE, bases.get("all"))


def sliding_window_in_attention(model) -> int | None:
    """The widest sliding window the attention layers of a loaded model really use (None: every layer reads the whole
    context). Qwen2 and Gemma 3 attention modules keep their own window (None in full-attention layers), fixed when
    the model is built; Mistral's read `config.sliding_window` on every call, so there the config is what counts."""
    windows = [m.sliding_window for m in model.modules() if type(m).__name__.endswith("Attention")
               and hasattr(m, "sliding_window")]  # fmt: skip
    if not windows:
        return getattr(model.config, "sliding_window", None)
    return max((w for w in windows if w), default=None)


def effective_settings(emb: TransformerEmbedder) -> dict[str, Any]:
    """The settings that took effect in a loaded model: config values and what the attention really uses.

    `rope_theta` is the base of the layers that read the whole context; `local_rope_theta_in_attention` is the base of
    local sliding-window layers where those have their own (Gemma 3), else None.
    """
    from ..config_overrides import rope_theta_of

    config = emb.model.config
    return {
        "rope_theta": rope_theta_of(config),
        "rope_theta_in_attention": rope_theta_in_attention(emb.model),
        "local_rope_theta_in_attention": rope_bases_in_attention(emb.model).get("sliding_attention"),
        "sliding_window": getattr(config, "sliding_window", None),
        "sliding_window_in_attention": sliding_window_in_attention(emb.model),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "dtype": str(next(emb.model.parameters()).dtype).replace("torch.", ""),
        "device": str(emb.device),
    }


# --- scoring ----------------------------------------------------------------------------------------------------------


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is running out of (GPU or CPU) memory: the one failure the grid records as a result."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_passkey_set(
    emb: Embedder, pset: PasskeySet, max_tokens_per_batch: int = 32768, show_progress: bool = True
) -> dict:
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
        write_json_atomic(out / "grid.json", self.to_json())
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
                if not is_out_of_memory(err):
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
    if setting.sliding_window is not None:
        for key in ("sliding_window", "sliding_window_in_attention"):
            if effective[key] != (setting.sliding_window or None):
                raise SynthembedError(f"asked for sliding window {setting.sliding_window}, the model's {key} is "
                                      f"{effective[key]}")  # fmt: skip


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


def run_lemb_passkey(
    emb: Embedder, name: str, lengths: Sequence[int] | None = None, instructions: bool = True
) -> dict[int, float]:
    """mteb's LEMBPasskeyRetrieval with a loaded Embedder: {length: nDCG@1} (= top-1 accuracy, one relevant document).

    Raises SynthembedError saying why when the data cannot be read here (see `lemb_passkey_status`).
    """
    available, reason = lemb_passkey_status()
    if not available:
        raise SynthembedError(f"{LEMB_TASK} is not available: {reason}")
    import mteb

    from .encoder import MtebEncoder

    splits = [f"test_{int(n)}" for n in lengths] if lengths else None
    task = mteb.get_task(LEMB_TASK, eval_splits=splits)
    result = mteb.evaluate(MtebEncoder(emb, name=name, instructions=instructions), task, cache=None)
    scores = result.task_results[0].scores  # {split: [{"main_score": ..., "hf_subset": ...}, ...]}
    return {int(split.split("_")[-1]): float(entries[0]["main_score"]) for split, entries in scores.items()}


def passkey_summary(
    grid: PasskeyGrid, set_table, model: str, lemb: tuple[bool, str, dict[int, float]] = (False, "", {})
) -> dict[str, Any]:
    """Notebook 06's numbers (what its test reads back): the grid's accuracy, status and effective settings, chance,
    how far document lengths strayed from their targets and BM25's worst top-1 (from passkey.describe_sets' table),
    and LongEmbed's availability, reason and scores (`lemb`: lemb_passkey_status() plus run_lemb_passkey's scores).

    >>> passkey_summary(grid, describe_sets(sets), model="tiny")["max_length_error"]  # doctest: +SKIP
    0
    """
    available, reason, scores = lemb
    errors = (set_table["min tokens"] - set_table["target length"]).abs().combine(
        (set_table["max tokens"] - set_table["target length"]).abs(), max
    )
    return {
        "model": str(model),
        "lengths": list(grid.lengths),
        "settings": [s.label for s in grid.settings],
        "accuracy": grid.accuracy(),  # {setting: {length: top-1}}
        "status": {f'{r["setting"]} @ {r["length"]}': r["status"] for r in grid.rows},
        "effective": grid.effective,
        "chance": 1 / grid.n_candidates,
        "max_length_error": int(errors.max()),
        "lexical_top1": float(set_table["BM25 top-1"].min()),
        "lemb_available": available,
        "lemb_reason": reason,
        "lemb_scores": {str(k): v for k, v in scores.items()},
    }
