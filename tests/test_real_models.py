"""Real small decoders (SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct, gemma-3-270m) through our code paths:
EOS appended and pooled with their own tokenizers, either padding side; replies that stop at the chat turn's end.

The models come from ../shared/models/get-models into $SYNTHEMBED_MODELS (default ~/.cache/synthembed/models); each
test skips with the fetch command where its model is absent.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import torch

from synthembed.errors import SynthembedError
from synthembed.generation.backends import stop_token_ids
from synthembed.paths import LOCAL_MODELS, local_model, models_dir, resolve_model_path

DECODERS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m")
# The token each model's chat template closes a turn with (gemma-3-270m is a base model without a template).
TURN_ENDS = {"smollm2-135m-instruct": "<|im_end|>", "qwen2.5-coder-0.5b-instruct": "<|im_end|>", "gemma-3-270m": "<eos>"}
TEXTS = ["hi", "The cat sat on the mat while the dog slept by the fire.", "Quantum computers use qubits."]


def real_model(name: str):
    try:
        return local_model(name)
    except SynthembedError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module", params=DECODERS)
def decoder(request):
    from synthembed.model import load_embedder

    return load_embedder(str(real_model(request.param)), max_len=64, device="cpu"), request.param


def test_local_models_resolve_by_hub_id_and_say_how_to_fetch_when_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHEMBED_MODELS", str(tmp_path))
    assert models_dir() == tmp_path.resolve()
    with pytest.raises(SynthembedError, match="get-models .* --only smollm2-135m-instruct"):
        local_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text("{}")
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"):
        assert resolve_model_path(name) == str(tmp_path.resolve() / "smollm2-135m-instruct")
    assert set(LOCAL_MODELS.values()) >= set(DECODERS)


def test_stop_tokens_are_eos_generation_config_and_turn_ends():
    vocab = {"<|im_end|>": 7, "<|endoftext|>": 0, "hello": 5, "<end_of_turn>": 9}
    tokenizer = SimpleNamespace(eos_token_id=7, get_vocab=lambda: vocab)
    assert stop_token_ids(tokenizer)[0] == 7 and sorted(stop_token_ids(tokenizer)) == [0, 7, 9]  # "hello" is no stop
    assert sorted(stop_token_ids(tokenizer, SimpleNamespace(eos_token_id=[3, 7]))) == [0, 3, 7, 9]
    plain = SimpleNamespace(eos_token_id=2, get_vocab=lambda: {"a": 1})
    assert stop_token_ids(plain, SimpleNamespace(eos_token_id=None)) == [2]


def test_real_decoder_pools_at_its_own_eos_on_either_padding_side(decoder):
    emb, name = decoder
    eos = emb.tokenizer.eos_token_id
    ids = emb.token_ids(TEXTS)
    assert all(row[-1] == eos for row in ids), name
    # The reference: each text alone, unpadded, the last layer's hidden state at its final (EOS) position.
    with torch.no_grad():
        alone = torch.stack([emb.model(input_ids=torch.tensor([row])).last_hidden_state[0, -1] for row in ids])
    alone = torch.nn.functional.normalize(alone.float(), dim=-1).numpy()  # (3, D)
    side = emb.tokenizer.padding_side
    try:
        for padding_side in ("left", "right"):
            emb.tokenizer.padding_side = padding_side
            batch = emb.tokenize(TEXTS)
            rows = torch.arange(len(TEXTS))
            last = batch["attention_mask"].long().cumsum(1).argmax(1)  # (3,) last attended position
            assert (batch["input_ids"][rows, last] == eos).all(), (name, padding_side)
            reps = emb.encode(TEXTS, batch_size=3, show_progress=False)  # (3, D)
            assert abs(reps - alone).max() < 2e-4, (name, padding_side)
    finally:
        emb.tokenizer.padding_side = side


def test_real_tokenizer_stops_at_its_chat_turn_end(decoder):
    emb, name = decoder
    stops = stop_token_ids(emb.tokenizer, getattr(emb.model, "generation_config", None))
    assert emb.tokenizer.convert_tokens_to_ids(TURN_ENDS[name]) in stops
    template = getattr(emb.tokenizer, "chat_template", None)
    if template:  # the instruct models: the reply prompt the template opens is closed by a stop token
        prompt = emb.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                   add_generation_prompt=True)
        assert TURN_ENDS[name] in prompt and prompt.rstrip().endswith("assistant")


@pytest.mark.slow
def test_real_instruct_model_reply_stops_and_parses():
    """Qwen2.5-Coder-0.5B-Instruct answers a JSON request through the transformers backend and stops by itself."""
    from synthembed.generation.backends import TransformersBackend
    from synthembed.generation.llm import ChatRequest
    from synthembed.generation.parsing import parse_json_object

    path = real_model("qwen2.5-coder-0.5b-instruct")
    backend = TransformersBackend(str(path), batch_size=1, max_new_tokens=64)
    request = ChatRequest(
        messages=({"role": "user", "content": 'Reply with exactly this JSON object and nothing else: {"ok": true}'},),
        model="qwen", temperature=0.0, top_p=1.0, max_tokens=64,
    )
    (reply,) = asyncio.run(backend.complete([request]))
    assert reply.finish_reason == "stop", reply.text
    assert reply.completion_tokens < 64
    assert parse_json_object(reply.text) == json.loads('{"ok": true}')


def test_loading_an_absent_real_model_names_the_fetch_command(tmp_path, monkeypatch):
    from synthembed.model import load_embedder

    monkeypatch.setenv("SYNTHEMBED_MODELS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SynthembedError, match="cannot load model .*get-models .* --only gemma-3-270m"):
        load_embedder("google/gemma-3-270m", device="cpu")
