"""Load a base model and tokenizer as an embedding model, and encode text with it.

    from synthembed.model import load_embedder
    emb = load_embedder("mistralai/Mistral-7B-v0.1")                  # decoder-only: EOS appended, last-token pooling
    q = emb.encode_queries(["how do rope bases work"], task="Given a question, retrieve passages that answer it")
    d = emb.encode_documents(["RoPE rotates query and key vectors ..."])
    scores = q @ d.T                                                   # cosine: rows are L2-normalized

Decoder-only models (Mistral, Llama, Qwen, ...) get an EOS token appended to every input and are pooled at it (the
paper's section 3.2). Recent tokenizers silently drop an EOS asked for through their template, so we append the id
ourselves and check, batch by batch, that the pooled position really holds EOS. Encoders (BERT-like) keep their own
special tokens and default to mean pooling. Positions come from the attention mask, so either padding side works.

`Embedder` is what the rest of synthembed asks of an embedding model; load_embedder returns a TransformerEmbedder,
LazyEmbedder loads one on first use, DistinctTexts encodes each distinct text of a corpus once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .config_overrides import GLOBAL_LAYER_TYPE, apply_config_overrides, rope_theta_of  # noqa: F401 (public here)
from .data import format_query
from .errors import SynthembedError
from .model_config import is_decoder_only, read_model_config
from .paths import check_model_folder, fetch_hint, resolve_model_path
from .pooling import POOLING_MODES, check_pooling, last_token_index, pool

# Sentence-transformers' names for its pooling modes -> ours.
_ST_POOLING = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_weightedmean_tokens": "weighted-mean",
    "pooling_mode_cls_token": "cls",
}


@dataclass
class _Source:
    """Where the weights, the tokenizer and the defaults of a model directory or id come from."""

    weights: str
    tokenizer: str
    adapter: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SynthembedError(f"{path}: cannot read ({err})") from None


def _inspect_source(name_or_path: str) -> _Source:
    path = Path(name_or_path)
    if not path.is_dir():
        return _Source(weights=name_or_path, tokenizer=name_or_path)
    defaults: dict[str, Any] = {}
    defaults.update(read_model_config(path) or {})
    if (path / "modules.json").is_file():  # a sentence-transformers directory: read its pooling and max length
        for module in _read_json(path / "modules.json"):
            if module.get("type", "").endswith("Pooling"):
                pooling_cfg = _read_json(path / module["path"] / "config.json")
                modes = [ours for st_name, ours in _ST_POOLING.items() if pooling_cfg.get(st_name)]
                if modes:
                    defaults.setdefault("pooling", modes[0])
        if (path / "sentence_bert_config.json").is_file():
            max_len = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
            if max_len:
                defaults.setdefault("max_len", int(max_len))
    if (path / "adapter_config.json").is_file():
        adapter_cfg = _read_json(path / "adapter_config.json")
        base = defaults.get("base_model") or adapter_cfg.get("base_model_name_or_path")
        if not base:
            raise SynthembedError(f"{path}: a LoRA adapter that names no base model")
        base = resolve_model_path(base)
        tokenizer = str(path) if (path / "tokenizer_config.json").is_file() else base
        return _Source(weights=base, tokenizer=tokenizer, adapter=str(path), defaults=defaults)
    return _Source(weights=str(path), tokenizer=str(path), defaults=defaults)


class Embedder(Protocol):
    """What evaluation, the passkey study and hard-negative mining ask of an embedding model; training takes the
    TransformerEmbedder itself (it needs the tokenizer and the torch model).

    A model that loads lazily (LazyEmbedder) says so with `loaded`: before loading it knows its name, and pooling,
    max_len, append_eos and dimension are None; reading `model` or calling `encode` or `settings` loads it.

    Example:
        >>> def encode_corpus(emb: Embedder, texts): return emb.encode_documents(texts, batch_size=64)
    """

    name: str
    loaded: bool  # the weights are in memory
    pooling: str | None  # one of POOLING_MODES
    max_len: int | None  # tokens per text, the appended EOS included
    append_eos: bool | None  # decoder-only models: EOS appended and pooled at
    dimension: int | None
    model: Any  # the torch module (a lazy embedder loads it)

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True, desc: str = "encode"
    ) -> np.ndarray:
        """Embeddings (N, D) float32, L2-normalized, in input order."""
        ...

    def encode_queries(self, queries: Sequence[str], task: str | None = None, **kwargs) -> np.ndarray:
        """Queries carry the instruction (`Instruct: {task}\\nQuery: {query}`); without a task they stay plain."""
        return self.encode([format_query(task, q) for q in queries], **kwargs)

    def encode_documents(self, documents: Sequence[str], **kwargs) -> np.ndarray:
        """Documents get no instruction (the paper's section 3.1)."""
        return self.encode(list(documents), **kwargs)

    def settings(self) -> dict[str, Any]:
        """What a saved model needs to be loaded the same way again (written as synthembed_config.json)."""
        return {"pooling": self.pooling, "max_len": self.max_len, "append_eos": self.append_eos}


class TransformerEmbedder(Embedder):
    """A transformers model + tokenizer + pooling: `embed` for training (with grad), `encode` for inference (numpy).

    >>> emb = load_embedder("all-MiniLM-L6-v2"); emb.encode(["a cat"]).shape  # doctest: +SKIP
    (1, 384)
    """

    loaded = True  # built around weights already in memory

    def __init__(self, model, tokenizer, pooling: str, max_len: int, append_eos: bool, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = check_pooling(pooling)
        self.max_len = int(max_len)
        self.append_eos = append_eos
        self.name = name
        if append_eos and tokenizer.eos_token_id is None:
            raise SynthembedError(f"{name}: the tokenizer has no EOS token, so last-token pooling has nothing to pool at")
        if tokenizer.pad_token_id is None:
            # Decoder tokenizers often have no pad token; padding is masked out, so any id works. EOS is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- tokenization -------------------------------------------------------------------------------------------------

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to max_len, EOS appended for decoder-only models (no padding)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        room = self.max_len - 1 if self.append_eos else self.max_len
        ids = self.tokenizer(list(texts), truncation=True, max_length=room, add_special_tokens=True)["input_ids"]
        if self.append_eos:
            eos = self.tokenizer.eos_token_id
            ids = [row if row and row[-1] == eos else row + [eos] for row in ids]
        return ids

    def pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """Pad id lists into a batch on the model's device (the tokenizer's own padding side)."""
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.pad(self.token_ids(texts))

    def check_eos(self, batch: dict[str, torch.Tensor]) -> None:
        """Fail loudly when last-token pooling would not pool at EOS (e.g. a tokenizer that dropped it)."""
        if not (self.append_eos and self.pooling == "last"):
            return
        rows = torch.arange(batch["input_ids"].size(0), device=batch["input_ids"].device)
        pooled = batch["input_ids"][rows, last_token_index(batch["attention_mask"])]  # (B,)
        bad = (pooled != self.tokenizer.eos_token_id).nonzero().flatten().tolist()
        if bad:
            raise SynthembedError(
                f"{self.name}: the pooled token is not EOS (id {self.tokenizer.eos_token_id}) in batch rows {bad[:5]}; "
                "last-token pooling would read the wrong hidden state"
            )

    # --- embedding ----------------------------------------------------------------------------------------------------

    def embed(self, batch: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """Pooled (and by default L2-normalized) embeddings of a tokenized batch, with grad when grad is enabled. -> (B, D)"""
        self.check_eos(batch)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, D)
        reps = pool(hidden, batch["attention_mask"], self.pooling)  # (B, D)
        if reps.dtype in (torch.float16, torch.bfloat16):
            reps = reps.float()  # similarities and the loss in float32; float64 models stay float64 (gradient tests)
        return F.normalize(reps, dim=-1) if normalize else reps

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        show_progress: bool = True,
        desc: str = "encode",
        normalize: bool = True,
    ) -> np.ndarray:
        """Embeddings (N, D) float32 in input order. Texts are sorted by token length so batches pad little."""
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress, unit="batch"):
                    chunk = order[start : start + batch_size]
                    reps = self.embed(self.pad([ids[i] for i in chunk]), normalize=normalize)
                    out[chunk] = reps.cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_embedder(
    name_or_path: str,
    pooling: str | None = None,
    max_len: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    config_overrides: dict[str, Any] | None = None,
    attn_implementation: str | None = "sdpa",
) -> TransformerEmbedder:
    """Load a model as a TransformerEmbedder.

    Args:
        name_or_path: a hub id or directory: decoder-only or encoder, a sentence-transformers directory (pooling and
            max length read from it), a peft LoRA adapter (its base is loaded, then the adapter), or one of our exports
            (synthembed_config.json supplies pooling, max_len, base_model).
        pooling: one of POOLING_MODES; default "last" for decoder-only, the saved setting, else "mean".
        max_len: tokens per text including the appended EOS; default the saved setting, else 512 (the paper's).
        device, dtype: default CUDA with bf16 when available, else CPU with float32.
        config_overrides: settings applied to the config before the weights load, e.g. {"rope_theta": 1e5,
            "sliding_window": 32768}; `emb.model.config` shows what took effect.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    check_model_folder(name_or_path)
    resolved = resolve_model_path(name_or_path)
    source = _inspect_source(resolved)
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        config = AutoConfig.from_pretrained(source.weights)
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
    except (OSError, ValueError) as err:  # ValueError: a config.json with no or an unknown model_type
        hint = fetch_hint(name_or_path)
        raise SynthembedError(
            f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}" + (f"; {hint}" if hint else "")
        ) from None
    apply_config_overrides(config, config_overrides)
    decoder = is_decoder_only(config)
    pooling = pooling or source.defaults.get("pooling") or ("last" if decoder else "mean")
    if pooling not in POOLING_MODES:
        raise SynthembedError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLING_MODES)}")
    max_len = int(max_len or source.defaults.get("max_len") or 512)
    append_eos = bool(source.defaults.get("append_eos", decoder))
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModel.from_pretrained(source.weights, **kwargs)
    except (ValueError, ImportError):
        kwargs.pop("attn_implementation", None)  # an architecture without SDPA support: fall back to its default
        model = AutoModel.from_pretrained(source.weights, **kwargs)
    if source.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter)
    model.to(device)
    model.eval()
    return TransformerEmbedder(model, tokenizer, pooling, max_len, append_eos, name=str(name_or_path))


def _after_loading(name: str) -> property:
    return property(lambda self: None if self._loaded is None else getattr(self._loaded, name))


class LazyEmbedder(Embedder):
    """An embedder that loads its model on first use: a re-run whose embeddings are all cached never loads the weights.

    Before loading it knows only its name; `loaded` says whether it has loaded since.

    >>> emb = LazyEmbedder("all-MiniLM-L6-v2", {"device": "cpu"}); emb.loaded, emb.pooling  # doctest: +SKIP
    (False, None)
    """

    def __init__(self, name_or_path: str, load_kwargs: dict[str, Any]):
        self.name = str(name_or_path)
        self.load_kwargs = load_kwargs
        self._loaded: TransformerEmbedder | None = None

    @property
    def embedder(self) -> TransformerEmbedder:
        """The loaded model (loaded now, if it was not yet)."""
        if self._loaded is None:
            self._loaded = load_embedder(self.name, **self.load_kwargs)
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    # what only the loaded model knows: None until it has loaded (asking does not load it)
    pooling = _after_loading("pooling")
    max_len = _after_loading("max_len")
    append_eos = _after_loading("append_eos")
    dimension = _after_loading("dimension")

    @property
    def model(self):
        return self.embedder.model

    def encode(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        return self.embedder.encode(texts, **kwargs)

    def settings(self) -> dict[str, Any]:
        return self.embedder.settings()


class DistinctTexts(Embedder):
    """An embedder that encodes each distinct text once and serves repeats from memory (same vectors, less work);
    everything else (name, pooling, max_len, settings, model) is the wrapped Embedder's, so evaluation fingerprints and
    wraps it as usual.

    Tatoeba's 112 English sides hold 88,877 sentences of which 69,241 are distinct; mteb encodes each language's pair
    on its own, so the whole benchmark encodes 11% fewer texts this way.

    Example:
        >>> emb = DistinctTexts(load_embedder("all-MiniLM-L6-v2"))  # doctest: +SKIP
        >>> emb.encode(["a", "b", "a"]).shape, emb.encoded  # doctest: +SKIP
        ((3, 384), 2)
    """

    # the wrapped embedder's, asked each time (a lazy one loads when it loads)
    loaded = property(lambda self: self.embedder.loaded)
    pooling = property(lambda self: self.embedder.pooling)
    max_len = property(lambda self: self.embedder.max_len)
    append_eos = property(lambda self: self.embedder.append_eos)
    dimension = property(lambda self: self.embedder.dimension)
    model = property(lambda self: self.embedder.model)

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.name = embedder.name
        self._memo: dict[str, np.ndarray] = {}
        self.encoded = 0  # distinct texts actually run through the model

    def settings(self) -> dict[str, Any]:
        return self.embedder.settings()

    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True, desc: str = "encode"):
        missing = [text for text in dict.fromkeys(texts) if text not in self._memo]
        if missing:
            reps = self.embedder.encode(missing, batch_size=batch_size, show_progress=show_progress, desc=desc)
            self._memo.update(zip(missing, reps, strict=True))  # (N, D)
            self.encoded += len(missing)
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.stack([self._memo[text] for text in texts])  # (len(texts), D)

