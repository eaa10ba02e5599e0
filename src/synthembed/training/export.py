"""Export of a trained model: the LoRA adapter (peft) and a merged sentence-transformers directory that embeds exactly
like synthembed's own Embedder (pooling, Normalize, the task instructions as named prompts, EOS appended by the
tokenizer itself), with a model card.

    out/adapter/   the LoRA adapter and tokenizer, loadable by synthembed's load_embedder
    out/merged/    LoRA merged into the base: SentenceTransformer("out/merged").encode(texts) == synthembed's encoding;
                   README.md, the model card (card.py); loadable through mteb (mteb_meta.py)

Both hold synthembed_config.json, written through model_config.py (its only writer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..model_config import write_model_config
from .named_prompts import named_prompts


def export(
    accelerator, emb, out: Path, base_path: str, query_task: str, lora_rank: int | None, instructions: bool = True
) -> None:
    """adapter/ (LoRA only) and merged/ (a sentence-transformers directory), each with synthembed_config.json.

    `instructions` says whether training queries carried a task instruction. It is recorded (evaluation's "auto" mode
    reads it), and without instructions the exported prompts are empty, so that queries are embedded as trained; with
    them, the `query` prompt carries `query_task` and each mteb task and task type its own (named_prompts.py).
    `lora_rank` is recorded (None: every weight trained), and the mteb tasks whose data the run trained on (mteb's
    ModelMeta reads them).

    The merged model is rebuilt from the saved adapter on the main process, so it comes out the same whether training
    ran on one device or sharded (ZeRO-3, FSDP), where the live model holds only shards.
    """
    import torch
    from peft import PeftModel

    from ..model import load_embedder
    from .card import run_facts, write_model_card
    from .checkpoint import read_settings
    from .mteb_meta import mteb_training_datasets

    model = accelerator.unwrap_model(emb.model)
    state = accelerator.get_state_dict(emb.model)  # the full state dict, gathered from shards (a collective)
    if not accelerator.is_main_process:
        return
    settings = {
        **emb.settings(),
        "base_model": str(base_path),
        "instructions": bool(instructions),
        "query_task": query_task if instructions else None,
        "lora_rank": lora_rank,
        "training_datasets": mteb_training_datasets((read_settings(out) or {}).get("data") or []),
    }
    dtype = next(model.parameters()).dtype
    if isinstance(model, PeftModel):
        adapter = out / "adapter"
        for config in model.peft_config.values():  # peft's own loaders read this, not synthembed_config.json
            config.base_model_name_or_path = str(base_path)
        model.save_pretrained(adapter, state_dict=state)
        emb.tokenizer.save_pretrained(adapter)
        write_model_config(adapter, settings)
        merged = load_embedder(str(adapter), device="cpu", dtype=dtype if dtype != torch.float16 else torch.float32)
        write_sentence_transformers(merged.model.merge_and_unload(), emb.tokenizer, out / "merged", settings)
    else:
        write_sentence_transformers(model, emb.tokenizer, out / "merged", settings, state_dict=state)
    write_model_card(out / "merged", run_facts(out))
    print(f"[train] exported {'adapter/ and ' if (out / 'adapter').is_dir() else ''}merged/ to {out}")


_ST_POOLING_KEYS = {
    "last": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
    "weighted-mean": "pooling_mode_weightedmean_tokens",
    "cls": "pooling_mode_cls_token",
}


def write_sentence_transformers(model, tokenizer, directory: Path, settings: dict[str, Any], state_dict=None) -> Path:
    """Save a plain transformers model as a sentence-transformers directory that embeds exactly like our Embedder:
    Transformer -> Pooling (our mode) -> Normalize, the named prompts `Instruct: {task}\\nQuery: ` (the `query` one
    with settings["query_task"]; none where settings["instructions"] is false), and, for decoder-only models, a
    tokenizer whose post-processor appends EOS itself (sentence-transformers has no other way to add it).

    The tokenizer then already ends every text with EOS, so synthembed_config.json says append_eos false here; the
    token sequence is the same as in training (BOS, text truncated to max_len - 2, EOS).
    """
    import copy

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, state_dict=state_dict)
    tokenizer = copy.deepcopy(tokenizer)
    settings = dict(settings)
    if settings.get("append_eos"):
        _append_eos_in_tokenizer(tokenizer)
        settings["append_eos"] = False
        settings["eos_in_tokenizer"] = True
    tokenizer.save_pretrained(directory)
    dimension = int(model.config.hidden_size)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    pooling = {"word_embedding_dimension": dimension, **{key: False for key in _ST_POOLING_KEYS.values()}}
    pooling.update(
        {"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True}
    )
    pooling[_ST_POOLING_KEYS[settings["pooling"]]] = True
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": int(settings["max_len"]), "do_lower_case": False}, indent=2)
    )
    st_config = {
        "model_type": "SentenceTransformer",  # what mteb's loader detection and sentence-transformers 5+ read
        "prompts": named_prompts(settings.get("query_task"), bool(settings.get("instructions", True))),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    write_model_config(directory, settings)
    return directory


def _append_eos_in_tokenizer(tokenizer) -> None:
    """Make a fast tokenizer end every text with EOS through its post-processor (truncation then leaves room for it)."""
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    probe = tokenizer("x")["input_ids"]
    starts_with_bos = bos is not None and probe and probe[0] == tokenizer.bos_token_id
    single = f"{bos} $A {eos}" if starts_with_bos else f"$A {eos}"
    special = [(eos, tokenizer.eos_token_id)] + ([(bos, tokenizer.bos_token_id)] if starts_with_bos else [])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B:1 {eos}:1", special_tokens=special
    )
