"""A tiny Mistral, built from its config with random weights, and a byte-level BPE tokenizer trained locally in about a
second: the decoder-only model that tests and the smoke study use where no weights can be downloaded.

    from synthembed.testing.tiny import build_tiny_mistral
    path = build_tiny_mistral("runs/tiny-mistral")          # a directory AutoModel / AutoTokenizer load

Like Mistral's own tokenizer, it adds BOS and does *not* add EOS: the code that needs EOS has to append it itself.
"""

from __future__ import annotations

from pathlib import Path

TINY_DEFAULTS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=10000.0,
    sliding_window=4096,
)


def _corpus(n_lines: int = 4000) -> list[str]:
    """Deterministic English-ish training text for the tokenizer: MiniLM's word pieces when installed, else letters."""
    words: list[str] = []
    try:
        from ..paths import minilm_path

        vocab = (minilm_path() / "vocab.txt").read_text(encoding="utf-8").split()
        words = [w for w in vocab if w.isalpha() and w.isascii()]
    except Exception:  # the tokenizer only needs *some* text; quality does not matter for a random-weight model
        pass
    if not words:
        import string

        words = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
    return [" ".join(words[(i * 7 + j * 13) % len(words)] for j in range(12)) for i in range(n_lines)]


def build_tiny_tokenizer(vocab_size: int = 2000):
    """A PreTrainedTokenizerFast with <unk>, <s> (BOS, added) and </s> (EOS, not added), as Mistral's behaves."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=32768
    )


def build_tiny_mistral(out_dir: str | Path, seed: int = 0, overwrite: bool = False, **config_overrides) -> Path:
    """Save a randomly initialised MistralModel (no LM head) and its tokenizer.

    Reuses an existing directory unless `overwrite`; `config_overrides` go into MistralConfig (e.g. rope_theta).
    """
    import torch
    from transformers import MistralConfig, MistralModel

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file() and not overwrite:
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    settings = {**TINY_DEFAULTS, **config_overrides}
    config = MistralConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
        **settings,
    )
    torch.manual_seed(seed)
    model = MistralModel(config)  # the embedding model needs no LM head
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
