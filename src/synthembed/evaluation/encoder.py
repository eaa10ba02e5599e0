"""Our Embedder as an mteb 2.x encoder: the paper's instructions on the query side, documents plain, embeddings cached.

    from synthembed.evaluation.encoder import MtebEncoder
    model = MtebEncoder(load_embedder("all-MiniLM-L6-v2"), name="all-MiniLM-L6-v2", instructions=False)
    mteb.evaluate(model, mteb.get_task("STSBenchmark"), cache=None)

The protocol is the paper's (section 4.1): on the query side each task's instruction, as `Instruct: {task}\\nQuery:
{text}`; documents without instruction; symmetric tasks (STS, classification, bitext) get it on both sides, as
E5-mistral's evaluation does. Which instruction: an override by task name, else the prompt mteb's task carries, else an
override by task kind (mteb's name for it: Retrieval, STS, ...), else the prompt of the kind's abstract class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mteb.models.abs_encoder import AbsEncoder, PromptSource
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from ..data import format_query
from ..model import Embedder
from .cache import EmbeddingCache
from .tasks import kind_prompt


def meta_name(name: str) -> str:
    """mteb wants `org/name`; a local path becomes `local/<folder>`.

    >>> meta_name("all-MiniLM-L6-v2")
    'local/all-MiniLM-L6-v2'
    """
    name = str(name).rstrip("/")
    if Path(name).exists():
        return f"local/{Path(name).resolve().name}"
    return name if "/" in name else f"local/{name}"


class MtebEncoder(AbsEncoder):
    """mteb 2.x encoder around an Embedder: instructions on the query side, documents plain, cached embeddings.

    Args:
        embedder: what encodes (model.Embedder; a lazy one is loaded only when some text is not cached).
        name: the model's name or path, for mteb's model metadata.
        instructions: whether queries (and both sides of symmetric tasks) get the task's instruction.
        overrides: instructions by task name or by mteb's name for a task kind (`STS`, `Retrieval`).
        cache: where embeddings are read from and written to; None encodes everything.
        model_hash: the model's fingerprint (cache.model_fingerprint), mteb's "revision" of the model.

    Example:
        >>> model = MtebEncoder(load_embedder("all-MiniLM-L6-v2"), name="all-MiniLM-L6-v2", instructions=False)  # doctest: +SKIP
        >>> mteb.evaluate(model, mteb.get_task("STSBenchmark"), cache=None)  # doctest: +SKIP
    """

    # an override by task name wins, then the task's own prompt, then one by task kind, then the abstract class's
    prompt_priority = (PromptSource.CUSTOM_PROMPT, PromptSource.DEFAULT_TASK_PROMPT, PromptSource.TASK_TYPE_PROMPT)

    def __init__(
        self,
        embedder: Embedder,
        name: str,
        instructions: bool,
        overrides: dict[str, str] | None = None,
        cache: EmbeddingCache | None = None,
        model_hash: str = "",
        show_progress: bool = True,
    ):
        self.model = embedder
        self.instructions = instructions
        self.prompts_dict = dict(overrides or {})
        self.cache = cache
        self.show_progress = show_progress
        self.encoded_texts = 0
        meta = {
            "name": meta_name(name),
            # the revision is the fingerprint: anything mteb keys by (name, revision) follows the model's content
            "revision": model_hash[:40] or "unknown",
            "similarity_fn_name": ScoringFunction.COSINE,  # our embeddings are L2-normalized
            "use_instructions": instructions,
            "framework": ["PyTorch"],
        }
        if embedder.loaded:  # sizes only where known without loading a lazy model
            meta["n_parameters"] = int(sum(p.numel() for p in embedder.model.parameters()))
            meta["embed_dim"] = int(embedder.dimension)
            meta["max_tokens"] = int(embedder.max_len)
        self.mteb_model_meta = ModelMeta.create_empty(meta)

    def get_instruction(self, task_metadata, prompt_type) -> str:
        """mteb's choice by prompt_priority; for a local folder mteb does not know, its kind's abstract class last."""
        fallback = kind_prompt(task_metadata)
        if fallback is None:
            return super().get_instruction(task_metadata, prompt_type)
        # the same order (no task prompt: local metadata carries none), without mteb's lookup by task name
        return self.prompts_dict.get(task_metadata.name) or self.prompts_dict.get(task_metadata.type) or fallback

    def instruction(self, task_metadata, prompt_type) -> str | None:
        """The instruction for this side of this task, or None (documents; models evaluated without)."""
        if not self.instructions or prompt_type == PromptType.document:
            return None
        return self.get_instruction(task_metadata, prompt_type) or None

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        instruction = self.instruction(task_metadata, prompt_type)
        if instruction:
            texts = [format_query(instruction, text) for text in texts]
        if self.cache is not None:
            cached = self.cache.get(texts)
            if cached is not None:
                return cached
        side = prompt_type.value if prompt_type is not None else "text"
        reps = self.model.encode(
            texts,
            batch_size=int(kwargs.get("batch_size") or 32),
            show_progress=self.show_progress and kwargs.get("show_progress_bar", True),
            desc=f"{task_metadata.name} {side}",
        )  # (N, D), L2-normalized
        self.encoded_texts += len(texts)
        if self.cache is not None:
            self.cache.put(texts, reps)
        return reps
