"""Settings a model is loaded with that differ from its checkpoint's: a RoPE base and a sliding window (notebook 06's
long-context grid), set on the transformers config before the model is built, wherever that architecture keeps them.

    config = AutoConfig.from_pretrained("google/gemma-3-270m")
    apply_config_overrides(config, {"rope_theta": 1e5, "sliding_window": 4096})   # -> what took effect

Architectures keep these in different places: a flat `rope_parameters` (Llama, Mistral, Qwen2) or one per layer type
(Gemma 3); a window every layer reads (Mistral) or one only the layers that `layer_types` marks as sliding use
(Qwen2, Gemma 3). An override that would silently change nothing in the attention is an error instead.
"""

from __future__ import annotations

from typing import Any

from .errors import SynthembedError

# The layer type that reads the whole context in models with per-layer-type RoPE (Gemma 3: every 6th layer; the others
# are local, sliding-window layers).
GLOBAL_LAYER_TYPE = "full_attention"


def _rope_parameters(config) -> dict[str, Any] | None:
    """The RoPE parameters a config's RoPE base override and read-back act on, or None where it has none (transformers
    4 keeps `config.rope_theta`). A flat dict (Llama, Mistral, Qwen2) applies to every layer; a dict nested per layer
    type (Gemma 3: {"full_attention": {...}, "sliding_attention": {...}}) gives the full-attention layers' entry."""
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict):
        return None
    if params and all(isinstance(v, dict) for v in params.values()):  # nested per layer type
        if GLOBAL_LAYER_TYPE not in params:
            raise SynthembedError(
                f"{type(config).__name__} keeps RoPE parameters per layer type ({', '.join(params)}) but none for "
                f"{GLOBAL_LAYER_TYPE!r}, the layers that read the whole context"
            )
        return params[GLOBAL_LAYER_TYPE]
    return params


def apply_config_overrides(config, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set attributes on a transformers config before the model is built; returns the settings as they took effect.

    `rope_theta` goes into `config.rope_parameters` where the config has one (transformers 5), else onto the config.
    Where the RoPE parameters are kept per layer type (Gemma 3's global `full_attention` and local
    `sliding_attention` layers), it sets the full-attention layers' base: they are the ones that read the long context,
    while the local layers never see more than `sliding_window` tokens, so their base is left as trained.
    `sliding_window` is the local layers' window there, and cannot be None: they need one.
    """
    effective: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        params = _rope_parameters(config) if key == "rope_theta" else None
        if params is not None:
            params["rope_theta"] = float(value)
            effective[key] = params["rope_theta"]
            continue
        if not hasattr(config, key):
            raise SynthembedError(f"config override {key!r}: {type(config).__name__} has no such setting")
        has_local_layers = "sliding_attention" in (getattr(config, "layer_types", None) or ())
        if key == "sliding_window" and value is None and has_local_layers:
            raise SynthembedError(
                f"{type(config).__name__} has sliding-window layers, which cannot run without a window; to let them "
                "see the whole context, give a window at least as long as the longest document"
            )
        if key == "sliding_window" and hasattr(config, "use_sliding_window"):
            _set_qwen2_window(config, value)
        else:
            setattr(config, key, value)
        effective[key] = getattr(config, key)
    return effective


def _set_qwen2_window(config, window: int | None) -> None:
    """Qwen2's window: its config ignores `sliding_window` unless `use_sliding_window` is on, and its attention reads
    the window only in the layers `layer_types` marks as sliding (those from `max_window_layers` on), both decided
    when the config was built. Setting the attribute alone would change nothing, so the layer types are rebuilt by
    the model's own rule; a model whose rule makes no layer slide cannot take a window."""
    n_layers, first = config.num_hidden_layers, config.max_window_layers
    if window is not None and first >= n_layers:
        raise SynthembedError(
            f"{type(config).__name__}: max_window_layers is {first} of {n_layers} layers, so no layer uses a sliding "
            "window and a window would change nothing"
        )
    config.use_sliding_window = window is not None
    config.sliding_window = window
    config.layer_types = [
        "sliding_attention" if window is not None and i >= first else "full_attention" for i in range(n_layers)
    ]


def rope_theta_of(config) -> float | None:
    """The RoPE base a config will use, wherever this transformers version keeps it; for a model with RoPE parameters
    per layer type (Gemma 3), the full-attention layers' base (the one apply_config_overrides sets)."""
    params = _rope_parameters(config)
    if params is not None and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


