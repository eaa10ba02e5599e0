"""synthembed_config.json: how one of our exported models embeds (pooling, max_len, append_eos, base_model,
instructions, query_task, lora_rank). This module is its only writer and reader.

    from synthembed.model_config import read_model_config
    read_model_config("runs/train/synthetic/merged")  # {"pooling": "last", "max_len": 512, ...} or None
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import SynthembedError
from .files import write_json_atomic

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
