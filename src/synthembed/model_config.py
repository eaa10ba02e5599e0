"""synthembed_config.json: how one of our exported models embeds (pooling, max_len, append_eos, base_model,
instructions, query_task, lora_rank). This module is its only writer and reader, and holds the rule that reads it for
whether a model takes instructions (`uses_instructions`: evaluation and hard-negative mining both follow it).

    from synthembed.model_config import read_model_config
    read_model_config("runs/train/synthetic/merged")  # {"pooling": "last", "max_len": 512, ...} or None
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import SynthembedError
from .files import write_json_atomic
from .paths import resolve_model_path

SYNTHEMBED_CONFIG = "synthembed_config.json"


def write_model_config(directory: str | Path, settings: dict[str, Any]) -> Path:
    """Write `settings` as `directory`/synthembed_config.json (atomically)."""
    return write_json_atomic(Path(directory) / SYNTHEMBED_CONFIG, settings)


def read_model_config(directory: str | Path) -> dict[str, Any] | None:
    """The settings saved with one of our models, or None where `directory` holds none (a hub id, any other model).

    >>> read_model_config("/nonexistent") is None
    True
    """
    path = Path(directory) / SYNTHEMBED_CONFIG
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SynthembedError(f"{path}: cannot read it ({err})") from None
    if not isinstance(settings, dict):
        raise SynthembedError(f"{path}: expected a JSON object, found {type(settings).__name__}")
    return settings


def uses_instructions(name_or_path: str, embedder: Any = None) -> bool:
    """Whether a model takes task instructions on its queries (`Instruct: {task}\\nQuery: ...`), the one rule that
    evaluation's "auto" mode and the hard-negative miner follow. Our exports say so (synthembed_config.json; trained
    by us means yes unless it says `"instructions": false`); otherwise decoder-only models (E5-mistral style) take them
    and encoder models (BERT-like, sentence-transformers) do not. `embedder`: a model.Embedder already loaded, whose
    append_eos answers for a model with no config of ours; else only configs are read, never the weights.

    >>> uses_instructions("all-MiniLM-L6-v2")
    False
    """
    resolved = Path(resolve_model_path(name_or_path))
    config = read_model_config(resolved)
    if config is not None:
        return bool(config.get("instructions", True))
    if embedder is not None and embedder.loaded:
        return bool(embedder.append_eos)  # load_embedder appends EOS exactly for decoder-only models
    from transformers import AutoConfig

    source = str(resolved)
    adapter = resolved / "adapter_config.json"
    if adapter.is_file():
        source = resolve_model_path(json.loads(adapter.read_text()).get("base_model_name_or_path") or source)
    try:
        return is_decoder_only(AutoConfig.from_pretrained(source))
    except (OSError, ValueError) as err:  # ValueError: a config.json with no or an unknown model_type
        raise SynthembedError(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}") from None


def is_decoder_only(config) -> bool:
    """True for causal-LM architectures that have no masked-LM form (Mistral, Llama, Qwen; not BERT, which has both)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
