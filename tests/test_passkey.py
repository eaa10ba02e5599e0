"""Passkey retrieval: the pass key is where the document says, lengths hit their targets, RoPE base and sliding window
overrides really reach the attention, the grid records what took effect and survives a length that does not fit."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from synthembed.cli import main
from synthembed.errors import SynthembedError
from synthembed.evaluation import passkey, passkey_grid
from synthembed.evaluation.commands import _base_list, _int_list, _window_list
from synthembed.evaluation.metrics import top1_accuracy
from synthembed.evaluation.passkey import NEEDLE, count_tokens, describe_sets, make_passkey_set
from synthembed.evaluation.passkey_grid import (
    PasskeySetting,
    effective_settings,
    grid_settings,
    passkey_summary,
    run_passkey_grid,
)
from synthembed.reference import PAPER_FIGURE5


@pytest.fixture(scope="module")
def tokenizer(tiny_mistral):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mistral)


@pytest.mark.parametrize("length", [96, 512, 2048])
def test_passkey_is_in_each_document_where_it_says(tokenizer, length):
    pset = make_passkey_set(tokenizer, length, n_queries=10, n_candidates=30, seed=1)
    names = [d.name for d in pset.documents]
    assert len(set(names)) == len(names) and len({d.passkey for d in pset.documents}) == len(names)
    for doc in pset.documents:
        assert doc.text[doc.needle_start : doc.needle_end] == NEEDLE.format(name=doc.name, passkey=doc.passkey)
        # the person and the key occur only inside the needle, and no other candidate's name occurs at all
        assert [m.start() for m in re.finditer(re.escape(doc.passkey), doc.text)] == [
            doc.needle_start + NEEDLE.format(name=doc.name, passkey="{}").index("{}"),
            doc.needle_end - len(f" is the pass key of {doc.name}.") - len(doc.passkey),
        ]
        assert sum(other in doc.text for other in names) == 1
    for query, gold in zip(pset.queries, pset.gold, strict=True):
        assert query == f"what is the pass key for {pset.documents[gold].name}?"
    assert len(set(pset.gold)) == len(pset.gold)


@pytest.mark.parametrize("length", [64, 300, 1024, 4096])
def test_lengths_hit_their_targets(tokenizer, tiny_mistral, length):
    pset = make_passkey_set(tokenizer, length, n_queries=5, n_candidates=20, seed=length)
    counted = [len(tokenizer(d.text)["input_ids"]) for d in pset.documents]  # as the model sees them (BOS included)
    assert all(abs(c - length) <= 4 for c in counted), counted
    assert counted == [d.n_tokens for d in pset.documents]
    if length == 300:  # and through the embedder, which appends EOS and must not truncate
        from synthembed.model import load_embedder

        emb = load_embedder(str(tiny_mistral), max_len=length + 8)
        assert [len(ids) for ids in emb.token_ids([d.text for d in pset.documents])] == [c + 1 for c in counted]


def _sentencepiece_layout_tokenizer():
    """A tokenizer laid out like Llama / Mistral's tokenizer.json: a '▁' normalizer, BPE with byte fallback, BOS added."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(passkey.FILLER_SENTENCES) + [
        f"{f} {s}'s pass key is 12345." for f in passkey.FIRST_NAMES for s in "AB"
    ]
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False))
    tok.pre_tokenizer = None  # as in Mistral's file: the normalizer marks the spaces, BPE sees one sequence
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece-layout"])
def test_lengths_hit_their_targets_with_other_tokenizer_families(kind, minilm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm) if kind == "wordpiece" else _sentencepiece_layout_tokenizer()
    for length in (100, 777):
        pset = make_passkey_set(tok, length, n_queries=3, n_candidates=12, seed=5)
        counted = [len(tok(d.text)["input_ids"]) for d in pset.documents]  # [CLS] ... [SEP] or <s> ...
        assert all(abs(c - length) <= 4 for c in counted), counted
        assert all(d.text[d.needle_start : d.needle_end].startswith(d.name) for d in pset.documents)


def test_needle_positions_are_spread_over_the_document(tokenizer):
    pset = make_passkey_set(tokenizer, 1024, n_queries=5, n_candidates=40, seed=0)
    where = [d.needle_start / len(d.text) for d in pset.documents]
    assert min(where) < 0.25 and max(where) > 0.6  # a random position, not always the start


def test_sets_are_seeded(tokenizer):
    a, b = (make_passkey_set(tokenizer, 256, 5, 10, seed=3) for _ in range(2))
    c = make_passkey_set(tokenizer, 256, 5, 10, seed=4)
    assert [d.text for d in a.documents] == [d.text for d in b.documents] and a.queries == b.queries
    assert [d.text for d in a.documents] != [d.text for d in c.documents]


def test_bad_requests_are_clear_errors(tokenizer):
    with pytest.raises(SynthembedError, match="too short"):
        make_passkey_set(tokenizer, 20, 2, 4)
    with pytest.raises(SynthembedError, match="at least as many candidates"):
        make_passkey_set(tokenizer, 256, 10, 5)


def test_top1_accuracy_matches_a_loop():
    rng = np.random.default_rng(0)
    q_reps, p_reps = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    gold = rng.integers(0, 11, size=7)
    expected = np.mean([int(np.argmax([q @ p for p in p_reps]) == g) for q, g in zip(q_reps, gold, strict=True)])
    assert top1_accuracy(q_reps @ p_reps.T, gold) == pytest.approx(expected)
    unit = p_reps / np.linalg.norm(p_reps, axis=1, keepdims=True)  # (11, 5)
    assert top1_accuracy(unit[:3] @ unit.T, [0, 1, 2]) == 1.0  # with unit vectors, each one is its own best match


def _hidden(emb, text):
    with torch.inference_mode():
        batch = emb.tokenize([text])
        return emb.model(**batch).last_hidden_state[0]  # (T, D)


def test_changed_rope_theta_reaches_the_attention(tiny_mistral):
    from synthembed.model import load_embedder

    text = "The river keeps running toward the sea. " * 6
    low = load_embedder(str(tiny_mistral), config_overrides={"rope_theta": 1e4})
    low_again = load_embedder(str(tiny_mistral), config_overrides={"rope_theta": 1e4})
    high = load_embedder(str(tiny_mistral), config_overrides={"rope_theta": 1e6})
    assert effective_settings(high)["rope_theta"] == 1e6 and effective_settings(high)["rope_theta_in_attention"] == 1e6
    assert effective_settings(low)["rope_theta_in_attention"] == 1e4
    h_low, h_again, h_high = (_hidden(e, text) for e in (low, low_again, high))
    assert torch.equal(h_low, h_again)
    # position 0 is not rotated, so the first token agrees; every later one must differ
    assert torch.allclose(h_low[0], h_high[0], atol=1e-5)
    assert (h_low[1:] - h_high[1:]).abs().amax(dim=-1).min() > 1e-4


def test_changed_sliding_window_reaches_the_attention(tiny_mistral):
    from synthembed.model import load_embedder

    windowed = load_embedder(str(tiny_mistral), config_overrides={"sliding_window": 8})
    full = load_embedder(str(tiny_mistral), config_overrides={"sliding_window": None})
    assert effective_settings(windowed)["sliding_window"] == 8 and effective_settings(full)["sliding_window"] is None
    h_win, h_full = _hidden(windowed, "one two three " * 10), _hidden(full, "one two three " * 10)
    n = 8  # tokens inside the window see the same context either way; later ones lose the early ones
    assert torch.allclose(h_win[:n], h_full[:n], atol=1e-5)
    assert not torch.allclose(h_win[n + 1 :], h_full[n + 1 :], atol=1e-3)


def test_a_qwen2_window_reaches_the_sliding_layers_or_is_refused():
    """Qwen2 ignores `config.sliding_window` unless `use_sliding_window` is on, and slides only from
    `max_window_layers` on: the override rebuilds the layer types by that rule, the attention reads the window
    back, and the last hidden state changes; a model whose rule makes no layer slide refuses a window."""
    from transformers import Qwen2Config, Qwen2Model

    from synthembed.config_overrides import apply_config_overrides
    from synthembed.evaluation.passkey_grid import sliding_window_in_attention

    def tiny(**overrides):
        config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_window_layers=2)  # fmt: skip
        config._attn_implementation = "eager"
        assert apply_config_overrides(config, overrides) == overrides
        torch.manual_seed(0)
        return Qwen2Model(config).eval()

    full, windowed = tiny(), tiny(sliding_window=4)
    assert windowed.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert sliding_window_in_attention(windowed) == 4 and sliding_window_in_attention(full) is None
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        h_full, h_win = full(ids).last_hidden_state[0], windowed(ids).last_hidden_state[0]
    assert torch.allclose(h_full[:4], h_win[:4], atol=1e-5)  # inside the window nothing changes
    assert (h_full[5:] - h_win[5:]).abs().amax(dim=-1).min() > 1e-4
    assert sliding_window_in_attention(tiny(sliding_window=None)) is None
    with pytest.raises(SynthembedError, match="max_window_layers is 4 of 4 layers"):
        config = Qwen2Config(num_hidden_layers=4, max_window_layers=4)
        apply_config_overrides(config, {"sliding_window": 4})


def test_grid_records_settings_and_survives_a_length_that_does_not_fit(tiny_mistral, monkeypatch):
    real = passkey_grid.score_passkey_set

    def scored(emb, pset, *args, **kwargs):
        if pset.length == 128 and emb.model.config.sliding_window is None:
            raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real(emb, pset, *args, **kwargs)

    monkeypatch.setattr(passkey_grid, "score_passkey_set", scored)
    settings = grid_settings([1e4, 1e5], [32, 0])
    grid = run_passkey_grid(str(tiny_mistral), [64, 128], settings, n_queries=4, n_candidates=6, show_progress=False)
    assert len(grid.rows) == 8
    assert grid.effective["window 32, base 1e5"]["rope_theta_in_attention"] == 1e5
    assert grid.effective["window none, base 1e4"]["sliding_window"] is None
    failed = [r for r in grid.rows if r["status"] != "ok"]
    assert {(r["setting"], r["length"]) for r in failed} == {
        ("window none, base 1e4", 128),
        ("window none, base 1e5", 128),
    }
    assert all("do not fit in memory" in r["message"] and r["accuracy"] is None for r in failed)
    ok = [r for r in grid.rows if r["status"] == "ok"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["accuracy"] * 4 == round(r["accuracy"] * 4) for r in ok)
    table = grid.table()
    assert list(table.index) == [s.label for s in settings] and list(table.columns) == [64, 128]
    assert table.isna().sum().sum() == 2


def test_other_errors_are_not_swallowed(tiny_mistral, monkeypatch):
    monkeypatch.setattr(passkey_grid, "score_passkey_set", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        run_passkey_grid(str(tiny_mistral), [64], n_queries=2, n_candidates=3, show_progress=False)


def test_cli_writes_grid_and_refuses_to_overwrite(tiny_mistral, tmp_path, capsys):
    out = tmp_path / "pk"
    args = ["passkey", "--model", str(tiny_mistral), "--lengths", "64,128", "--rope-bases", "1e4,1e6",
            "--sliding-windows", "none", "--queries", "3", "--candidates", "5", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "grid.json").read_text())
    assert [s["label"] for s in data["settings"]] == ["window none, base 1e4", "window none, base 1e6"]
    assert data["effective"]["window none, base 1e6"]["rope_theta_in_attention"] == 1e6
    assert len(data["rows"]) == 4 and (out / "grid.csv").read_text().count("\n") == 5
    assert (out / "heatmap.png").stat().st_size > 0 and (out / "accuracy_by_length.png").stat().st_size > 0
    before = (out / "grid.json").read_text()
    assert main(args) == 2 and "never overwritten" in capsys.readouterr().err
    assert (out / "grid.json").read_text() == before
    assert main(["passkey", "--model", str(tiny_mistral), "--lengths", "64,lots", "--out", str(tmp_path / "x")]) == 2
    assert main(["passkey", "--model", str(tiny_mistral), "--lengths", "64", "--rope-bases", "0.5",
                 "--out", str(tmp_path / "y")]) == 2  # fmt: skip


def test_setting_labels_and_overrides():
    assert PasskeySetting(1e5, 32768).label == "window 32k, base 1e5"
    assert PasskeySetting(1e5, 32768).overrides() == {"rope_theta": 1e5, "sliding_window": 32768}
    assert PasskeySetting(None, 0).overrides() == {"sliding_window": None}
    assert PasskeySetting().overrides() == {} and PasskeySetting().label == "model's window, model's base"
    assert set(PAPER_FIGURE5) <= {s.label for s in grid_settings([1e4, 1e5, 1e6], [4096, 32768])}


def test_lemb_passkey_is_reported_unavailable_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: the data cannot be there
    available, reason = passkey_grid.lemb_passkey_status()
    assert not available and "offline" in reason and "not in the local Hugging Face cache" in reason
    with pytest.raises(SynthembedError, match="LEMBPasskeyRetrieval is not available: offline"):
        passkey_grid.run_lemb_passkey(None, name="m", lengths=[256])


def test_count_tokens_includes_bos(tokenizer):
    assert count_tokens(tokenizer, ["", "hello"])[0] == 1


def test_command_line_lists():
    assert _int_list("256, 1k,32k") == [256, 1024, 32768]
    assert _base_list("1e4,100000,model") == [1e4, 1e5, None]
    assert _window_list("4096,32k,none,off,model,default") == [4096, 32768, 0, 0, None, None]
    for parse, text, message in ((_int_list, ",", "empty list"), (_base_list, "1e4,x", "not a RoPE base"),
                                 (_base_list, "1", "greater than 1"), (_window_list, "4k,lots", "not a token count")):
        with pytest.raises(SynthembedError, match=message):
            parse(text)  # fmt: skip


def test_summary_records_the_grid_and_the_data_checks(tiny_mistral, tokenizer):
    sets = {n: make_passkey_set(tokenizer, n, n_queries=3, n_candidates=5) for n in (64, 96)}
    table = describe_sets(sets)
    assert table["target length"].tolist() == [64, 96] and (table["BM25 top-1"] == 1.0).all()
    assert table["documents"].tolist() == [5, 5] and (table["min tokens"] <= table["max tokens"]).all()
    settings = grid_settings([1e4], [0])
    grid = run_passkey_grid(str(tiny_mistral), [96, 64], settings, n_queries=3, n_candidates=5, show_progress=False)
    summary = passkey_summary(grid, table, model="tiny", lemb=(False, "offline", {}))
    worst = max(abs(d.n_tokens - n) for n, s in sets.items() for d in s.documents)
    assert summary["max_length_error"] == worst <= 4 and summary["lexical_top1"] == 1.0
    assert summary["model"] == "tiny" and summary["lengths"] == [64, 96] and summary["chance"] == 1 / 5
    assert summary["settings"] == ["window none, base 1e4"] and set(summary["accuracy"]["window none, base 1e4"]) == {"64", "96"}
    assert summary["status"] == {"window none, base 1e4 @ 64": "ok", "window none, base 1e4 @ 96": "ok"}
    assert summary["effective"] == grid.effective
    assert (summary["lemb_available"], summary["lemb_reason"], summary["lemb_scores"]) == (False, "offline", {})


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_06_records_the_grid(smoke_study):
    from synthembed.study import load_profile

    run_dir, results = smoke_study
    nb = results["06_long_context"]
    smoke = load_profile("smoke")["06_long_context"]
    assert nb["max_length_error"] <= 4 and nb["lexical_top1"] == 1.0  # exact lengths; the task is well posed
    assert len(nb["settings"]) == len(smoke["settings"])
    for (window, base), label in zip(smoke["settings"], nb["settings"], strict=True):
        effective = nb["effective"][label]
        assert effective["rope_theta_in_attention"] == pytest.approx(base) and effective["sliding_window"] == window
        scores = nb["accuracy"][label]
        assert set(scores) == {str(n) for n in smoke["lengths"]}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert nb["lemb_reason"] and nb["lemb_scores"] == {}  # smoke skips LongEmbed and says why it could or could not run
    assert (run_dir / "passkey" / "grid.json").is_file() and (run_dir / "passkey" / "accuracy_by_length.png").is_file()
