"""The named prompts of an exported model: `Instruct: {task}\\nQuery: ` per mteb task and task type, the way
sentence-transformers stores them (config_sentence_transformers.json "prompts") and mteb 2 looks them up.

    from synthembed.training.named_prompts import named_prompts
    prompts = named_prompts("Given a web search query, retrieve relevant passages that answer the query")
    prompts["SciFact"]        # 'Instruct: Given a scientific claim, retrieve documents that support or refute the claim\\nQuery: '
    prompts["STS"]            # 'Instruct: Retrieve semantically similar text.\\nQuery: '
    SentenceTransformer("runs/train/merged").encode(["a claim"], prompt_name="SciFact")

The instructions are the ones `synthembed evaluate` gives a model trained with them (the paper's section 4.1, as
E5-mistral is evaluated): each task's own prompt from mteb's metadata, else the prompt of its abstract task class;
documents of retrieval tasks plain. mteb's SentenceTransformerEncoderWrapper picks a prompt by key, first match wins:
`{task}-{side}`, `{task}`, `{type}-{side}`, `{type}`, `{side}` (side: query, document, or none for symmetric tasks
such as STS, which encode both sentences alike). So every entry here is written under the bare name with a
`{name}-document` entry of "" beside it: queries and symmetric sides get the instruction, documents nothing, whichever
way a task asks. A type's entry carries the instruction most of its tasks without a prompt of their own share (the
abstract class's, which is also what a local folder mteb does not know gets); a task gets its own entry only where its
instruction differs from its type's. Only text-only tasks are written (the exports are text models), and no aggregate.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from ..data import format_query

QUERY, DOCUMENT = "query", "document"


def prompt_text(instruction: str | None) -> str:
    """The prompt sentence-transformers prepends: `Instruct: {instruction}\\nQuery: `, "" for no instruction.

    >>> prompt_text("Retrieve semantically similar text.")
    'Instruct: Retrieve semantically similar text.\\nQuery: '
    """
    return format_query(instruction, "") if instruction else ""


def task_instruction(metadata, prompt_type) -> str | None:
    """The instruction mteb's protocol gives one side of a task (`prompt_type` a mteb PromptType or None): the task's
    own prompt (for that side, where it has one per side), else its abstract class's; None for documents.

    This is what mteb's AbsEncoder.get_instruction answers with no model-specific prompts, the task's prompt first
    (evaluation/encoder.py's MtebEncoder asks it in the same order). A per-side prompt asked for a side it lacks gives
    None here, where mteb would hand back the whole mapping.
    """
    from mteb.abstasks.abstask import get_abstask_prompt
    from mteb.types import PromptType

    if prompt_type == PromptType.document:
        return None
    prompt = metadata.prompt
    if isinstance(prompt, dict):
        prompt = prompt.get(prompt_type.value) if prompt_type is not None else None
        if prompt is None and metadata.prompt:
            return None
    return prompt or get_abstask_prompt(metadata.name) or None


@lru_cache(maxsize=1)
def mteb_task_prompts() -> tuple[dict[str, str], dict[str, str]]:
    """({type: prompt}, {task name: prompt}) for mteb's text-only tasks: the type's common prompt, and each task's
    own where it differs from its type's. Computed once per process from mteb's task registry (metadata only)."""
    import mteb
    from mteb.types import PromptType

    # aggregate tasks (CQADupstackRetrieval) are scored through their subtasks, which carry their own entries
    tasks = [t.metadata for t in mteb.get_tasks() if list(t.metadata.modalities) == ["text"] and not t.is_aggregate]
    # the query side decides the entry; a task whose symmetric side differs (or is unknown) is written by its query side
    own = {m.name: task_instruction(m, PromptType.query) for m in tasks}
    common: dict[str, Counter] = {}
    for m in tasks:
        if m.prompt is None and own[m.name]:
            common.setdefault(m.type, Counter())[own[m.name]] += 1
    by_type = {kind: counts.most_common(1)[0][0] for kind, counts in common.items()}
    # a task without an instruction under a type without an entry is written too ("" ), or the `query` entry would apply
    by_task = {m.name: own[m.name] for m in tasks if m.type not in by_type or own[m.name] != by_type[m.type]}
    return {k: prompt_text(v) for k, v in sorted(by_type.items())}, {
        k: prompt_text(v) for k, v in sorted(by_task.items())
    }


def named_prompts(query_task: str | None, instructions: bool = True) -> dict[str, str]:
    """The prompts of an export: `query` (the instruction `encode_query` uses when none is named, `query_task`) and
    `document` (""), then one per mteb task type and task as the module docstring says. A model trained without
    instructions gets only query and document, both "" (its queries are embedded as trained: plain)."""
    if not instructions:
        return {QUERY: "", DOCUMENT: ""}
    by_type, by_task = mteb_task_prompts()
    prompts = {QUERY: prompt_text(query_task), DOCUMENT: ""}
    for name, prompt in [*by_type.items(), *by_task.items()]:
        prompts[name] = prompt
        prompts[f"{name}-{DOCUMENT}"] = ""
    return prompts
