"""The passkey grid's RoPE base and sliding window on Gemma 3, whose RoPE parameters are kept per layer type: the base
override must reach the global (full-attention) layers' rotary embedding and leave the local (sliding-window) layers'
as trained, the window must reach the local layers, and the grid's "asked for X, the attention uses Y" check must read
the full-attention base. A tiny random-weight gemma3_text model runs everywhere; the real gemma-3-270m where present.
"""

from __future__ import annotations

import pytest
import torch

from synthembed.errors import SynthembedError
from synthembed.evaluation.passkey_grid import (
    PasskeySetting,
    effective_settings,
    rope_bases_in_attention,
    run_passkey_grid,
)
from synthembed.model import apply_config_overrides, load_embedder, rope_theta_of

TINY_LAYERS = ["sliding_attention", "sliding_attention", "full_attention"]
HEAD_DIM = 16


def _tiny_gemma3_config(**overrides):
    from transformers import Gemma3TextConfig

    settings = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=len(TINY_LAYERS), num_attention_heads=2,
                    num_key_value_heads=1, head_dim=HEAD_DIM, layer_types=TINY_LAYERS, sliding_window=8,
                    max_position_embeddings=4096, query_pre_attn_scalar=HEAD_DIM)  # fmt: skip
    return Gemma3TextConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    """A 3-layer gemma3_text model (two local layers with window 8, one global) with random weights and the tiny
    tokenizer; its config keeps Gemma 3's defaults: global base 1e6, local base 1e4."""
    from transformers import Gemma3TextModel

    from synthembed.testing.tiny import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny-gemma3")
    tokenizer = build_tiny_tokenizer()
    config = _tiny_gemma3_config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    Gemma3TextModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _inv_freq(base: float) -> torch.Tensor:
    """RoPE's inverse frequencies written out: base ** (-2 i / dim), the reference the rotary buffers must match."""
    return 1.0 / base ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)


def _hidden(emb, text):
    with torch.inference_mode():
        return emb.model(**emb.tokenize([text])).last_hidden_state[0]  # (T, D)


def _windows(model) -> list[int | None]:
    """The window each decoder layer's attention was built with (None: full attention)."""
    return [layer.self_attn.sliding_window for layer in model.layers]


def test_base_override_sets_the_full_attention_layers_base_only():
    config = _tiny_gemma3_config()
    assert apply_config_overrides(config, {"rope_theta": 1e5}) == {"rope_theta": 1e5}
    assert set(config.rope_parameters) == {"full_attention", "sliding_attention"}  # no stray top-level key
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1e5 == rope_theta_of(config)
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4


def test_turning_the_window_off_is_refused_on_models_with_local_layers():
    with pytest.raises(SynthembedError, match="sliding-window layers, which cannot run without a window"):
        apply_config_overrides(_tiny_gemma3_config(), {"sliding_window": None})


def test_base_override_reaches_the_full_attention_rotary_embedding(tiny_gemma3):
    own = load_embedder(str(tiny_gemma3), device="cpu")
    high = load_embedder(str(tiny_gemma3), device="cpu", config_overrides={"rope_theta": 1e5})
    rotary = high.model.rotary_emb
    torch.testing.assert_close(rotary.full_attention_inv_freq.double(), _inv_freq(1e5))
    torch.testing.assert_close(rotary.sliding_attention_inv_freq.double(), _inv_freq(1e4))
    assert rope_bases_in_attention(own.model) == {"full_attention": 1e6, "sliding_attention": 1e4}
    assert rope_bases_in_attention(high.model) == {"full_attention": 1e5, "sliding_attention": 1e4}
    settings = effective_settings(high)
    assert (settings["rope_theta"], settings["rope_theta_in_attention"]) == (1e5, 1e5)
    assert settings["local_rope_theta_in_attention"] == 1e4 and settings["sliding_window"] == 8
    text = "The river keeps running toward the sea. " * 4
    h_own, h_high = _hidden(own, text), _hidden(high, text)
    # position 0 is not rotated, so the first token agrees; every later one passes the changed global layer
    torch.testing.assert_close(h_own[0], h_high[0])
    assert (h_own[1:] - h_high[1:]).abs().amax(dim=-1).min() > 1e-4


def test_window_override_reaches_the_local_layers(tiny_gemma3):
    narrow = load_embedder(str(tiny_gemma3), device="cpu")  # its own window: 8
    wide = load_embedder(str(tiny_gemma3), device="cpu", config_overrides={"sliding_window": 64})
    assert _windows(narrow.model) == [8, 8, None] and _windows(wide.model) == [64, 64, None]
    h_narrow, h_wide = _hidden(narrow, "one two three " * 10), _hidden(wide, "one two three " * 10)
    n = 8  # tokens inside both windows see the same context; later ones lose the early ones in the local layers
    torch.testing.assert_close(h_narrow[:n], h_wide[:n])
    assert (h_narrow[n:] - h_wide[n:]).abs().amax(dim=-1).min() > 1e-4


def test_grid_checks_and_records_the_full_attention_base(tiny_gemma3):
    settings = [PasskeySetting(), PasskeySetting(1e5, 32)]
    grid = run_passkey_grid(str(tiny_gemma3), [64], settings, n_queries=2, n_candidates=3, device="cpu",
                            show_progress=False)  # fmt: skip
    own, changed = grid.effective["model's window, model's base"], grid.effective["window 32, base 1e5"]
    assert (own["rope_theta_in_attention"], own["local_rope_theta_in_attention"]) == (1e6, 1e4)
    assert own["sliding_window"] == 8
    assert (changed["rope_theta_in_attention"], changed["local_rope_theta_in_attention"]) == (1e5, 1e4)
    assert changed["sliding_window"] == 32 and [r["status"] for r in grid.rows] == ["ok", "ok"]


# --- the real gemma-3-270m (skipped where it has not been fetched) ----------------------------------------------------


@pytest.fixture(scope="module")
def gemma_270m():
    from synthembed.paths import local_model

    try:
        return local_model("gemma-3-270m")
    except SynthembedError as err:
        pytest.skip(str(err))


@pytest.mark.slow
def test_real_gemma3_takes_the_base_and_the_window(gemma_270m):
    emb = load_embedder(str(gemma_270m), max_len=64, device="cpu",
                        config_overrides={"rope_theta": 1e5, "sliding_window": 1024})  # fmt: skip
    config = emb.model.config
    assert rope_theta_of(config) == 1e5 and config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert rope_bases_in_attention(emb.model) == {"full_attention": 1e5, "sliding_attention": 1e4}
    assert effective_settings(emb)["rope_theta_in_attention"] == 1e5 and config.sliding_window == 1024
    assert _windows(emb.model) == [None if kind == "full_attention" else 1024 for kind in config.layer_types]
    assert config.layer_types.count("full_attention") == 3  # every 6th of 18 layers reads the whole context


@pytest.mark.slow
def test_real_gemma3_grid_runs_and_reports_what_took_effect(gemma_270m):
    settings = [PasskeySetting(), PasskeySetting(1e5, 2048)]
    grid = run_passkey_grid(str(gemma_270m), [64, 128], settings, n_queries=2, n_candidates=3, device="cpu",
                            show_progress=False)  # fmt: skip
    own, changed = grid.effective["model's window, model's base"], grid.effective["window 2k, base 1e5"]
    assert (own["rope_theta"], own["rope_theta_in_attention"], own["local_rope_theta_in_attention"]) == (1e6, 1e6, 1e4)
    assert own["sliding_window"] == 512 and own["max_position_embeddings"] == 32768
    assert (changed["rope_theta_in_attention"], changed["sliding_window"]) == (1e5, 2048)
    assert len(grid.rows) == 4 and all(r["status"] == "ok" and 0.0 <= r["accuracy"] <= 1.0 for r in grid.rows)
