"""Pooling and the embedders: equal to sentence-transformers' pooling, padding-side invariant, EOS really pooled; every
embedder states what the Embedder protocol asks, a lazy one without loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthembed.errors import SynthembedError
from synthembed.model import (
    DistinctTexts,
    Embedder,
    LazyEmbedder,
    is_decoder_only,
    load_embedder,
    rope_theta_of,
)
from synthembed.pooling import POOLING_MODES, check_pooling, pool

TEXTS = [
    "A man is eating food.",
    "Hi",
    "The quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree.",
    "Instruct: Given a claim, find documents that support it\nQuery: vitamin D lowers fracture risk",
]


def _st_pooling(mode):
    from sentence_transformers.sentence_transformer.modules import Pooling

    st_name = {"last": "lasttoken", "mean": "mean", "weighted-mean": "weightedmean", "cls": "cls"}[mode]
    return Pooling(8, pooling_mode=st_name)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_matches_sentence_transformers_on_right_padding(mode):
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    expected = _st_pooling(mode)({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(pool(hidden, mask, mode), expected)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_is_padding_side_invariant(mode):
    torch.manual_seed(1)
    lengths = [5, 2, 4]
    rows = [torch.randn(n, 8) for n in lengths]
    right = torch.zeros(3, 5, 8)
    left = torch.zeros(3, 5, 8)
    right_mask = torch.zeros(3, 5, dtype=torch.long)
    left_mask = torch.zeros(3, 5, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r)
        right[i, :n], right_mask[i, :n] = r, 1
        left[i, 5 - n :], left_mask[i, 5 - n :] = r, 1
    torch.testing.assert_close(pool(right, right_mask, mode), pool(left, left_mask, mode))


def test_unknown_pooling_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown pooling mode 'max'.*last, mean, weighted-mean, cls"):
        check_pooling("max")


def test_minilm_encode_equals_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    emb = load_embedder(str(minilm), device="cpu")
    assert (emb.pooling, emb.max_len, emb.append_eos) == ("mean", 256, False)  # read from the ST directory
    expected = SentenceTransformer(str(minilm), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(emb.encode(TEXTS, batch_size=2, show_progress=False), expected, atol=1e-5)


def test_decoder_appends_eos_and_pools_at_it(tiny_mistral):
    emb = load_embedder(str(tiny_mistral), device="cpu")
    assert emb.pooling == "last" and emb.append_eos
    eos = emb.tokenizer.eos_token_id
    plain = emb.tokenizer(TEXTS[:1])["input_ids"][0]
    assert plain[-1] != eos, "the tokenizer itself must not add EOS (as Mistral's does not)"
    ids = emb.token_ids(TEXTS)
    assert all(row[-1] == eos and row.count(eos) == 1 for row in ids)
    assert ids[0] == plain + [eos]


def test_decoder_padding_side_and_batching_do_not_change_embeddings(tiny_mistral):
    emb = load_embedder(str(tiny_mistral), device="cpu")
    emb.tokenizer.padding_side = "right"
    right = emb.encode(TEXTS, batch_size=4, show_progress=False)
    emb.tokenizer.padding_side = "left"
    left = emb.encode(TEXTS, batch_size=4, show_progress=False)
    one_by_one = np.vstack([emb.encode([t], show_progress=False) for t in TEXTS])
    np.testing.assert_allclose(right, left, atol=1e-5)
    np.testing.assert_allclose(right, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(right, axis=1), 1.0, atol=1e-5)


def test_pooled_token_that_is_not_eos_fails_loudly(tiny_mistral):
    emb = load_embedder(str(tiny_mistral), device="cpu")
    batch = emb.pad(emb.tokenizer(TEXTS)["input_ids"])  # tokenized without our EOS, as a careless caller would
    with pytest.raises(SynthembedError, match="pooled token is not EOS"):
        emb.embed(batch)


def test_truncation_keeps_eos(tiny_mistral):
    emb = load_embedder(str(tiny_mistral), device="cpu", max_len=8)
    ids = emb.token_ids([TEXTS[2]])[0]
    assert len(ids) == 8 and ids[-1] == emb.tokenizer.eos_token_id


def test_queries_carry_the_instruction(tiny_mistral):
    emb = load_embedder(str(tiny_mistral), device="cpu")
    q = emb.encode_queries(["vitamin D"], task="Given a claim, find documents that support it", show_progress=False)
    d = emb.encode(["Instruct: Given a claim, find documents that support it\nQuery: vitamin D"], show_progress=False)
    np.testing.assert_allclose(q, d, atol=1e-6)


def test_config_overrides_take_effect(tiny_mistral):
    emb = load_embedder(str(tiny_mistral), device="cpu", config_overrides={"rope_theta": 1e6, "sliding_window": 16})
    assert rope_theta_of(emb.model.config) == 1e6 and emb.model.config.sliding_window == 16
    with pytest.raises(SynthembedError, match="no such setting"):
        load_embedder(str(tiny_mistral), device="cpu", config_overrides={"rope_thetta": 1.0})


def test_architecture_kinds(tiny_mistral, minilm):
    from transformers import AutoConfig

    assert is_decoder_only(AutoConfig.from_pretrained(tiny_mistral))
    assert not is_decoder_only(AutoConfig.from_pretrained(minilm))


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SynthembedError, match="cannot load model"):
        load_embedder(str(tmp_path / "no-such-model"))


@pytest.mark.parametrize("kind", ["transformer", "lazy", "distinct"])
def test_every_embedder_implements_the_protocol(kind, minilm):
    """Each embedder overrides the protocol's one stub (encode) and answers every declared attribute on an instance:
    inheriting from the Protocol alone would leave encode returning None and the attributes missing."""
    base = load_embedder(str(minilm), device="cpu")
    emb = {"transformer": base, "lazy": LazyEmbedder(str(minilm), {"device": "cpu"}), "distinct": DistinctTexts(base)}[kind]
    assert type(emb).encode is not Embedder.encode
    for attribute in Embedder.__annotations__:
        getattr(emb, attribute)  # AttributeError here: the embedder does not state the protocol
    vectors = emb.encode(["a cat", "a dog"], show_progress=False)
    assert vectors.shape == (2, emb.dimension) and emb.loaded
    assert emb.settings()["pooling"] == "mean"


def test_lazy_embedder_knows_only_its_name_until_it_loads(minilm):
    lazy = LazyEmbedder(str(minilm), {"device": "cpu"})
    assert (lazy.name, lazy.loaded) == (str(minilm), False)
    assert (lazy.pooling, lazy.max_len, lazy.append_eos, lazy.dimension) == (None, None, None, None)
    assert not lazy.loaded  # asking did not load it
    reps = lazy.encode_queries(["a cat"], task="Find pets", show_progress=False)
    assert lazy.loaded and (lazy.pooling, lazy.max_len, lazy.dimension) == ("mean", 256, 384)
    assert lazy.settings() == {"pooling": "mean", "max_len": 256, "append_eos": False}
    eager = load_embedder(str(minilm), device="cpu")
    np.testing.assert_allclose(reps, eager.encode(["Instruct: Find pets\nQuery: a cat"], show_progress=False), atol=1e-6)


def test_distinct_texts_encodes_each_text_once_and_is_the_wrapped_model_otherwise(minilm):
    inner = load_embedder(str(minilm), device="cpu")
    emb = DistinctTexts(inner)
    reps = emb.encode(["a", "b", "a"], show_progress=False)
    assert emb.encoded == 2 and reps.shape == (3, 384)
    np.testing.assert_array_equal(reps[0], reps[2])
    np.testing.assert_allclose(reps, inner.encode(["a", "b", "a"], show_progress=False), atol=1e-6)
    assert emb.encode([]).shape == (0, 384)
    assert (emb.name, emb.loaded, emb.pooling, emb.max_len, emb.dimension) == (inner.name, True, "mean", 256, 384)
    assert emb.settings() == inner.settings() and emb.model is inner.model

