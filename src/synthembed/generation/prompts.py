"""Brainstorm and generation prompts for the paper's six task groups, with seeded placeholder sampling.

    import random
    from synthembed.generation.prompts import brainstorm_prompt, generation_prompt, sample_placeholders
    rng = random.Random(0)
    tasks_prompt = brainstorm_prompt("short-long", rng)              # asks for ~20 task definitions as a JSON list
    placeholders = sample_placeholders("short-long", rng)            # {'query_type': ..., ..., 'language': 'English'}
    prompt = generation_prompt("short-long", "Given a recipe name, retrieve cooking instructions.", placeholders)
    prompt.messages                                                  # [{'role': 'user', 'content': '...'}]
    prompt.marker                                                    # '{"placeholders":{...},"stage":"generate",...}'

Prompts are data: the wording lives in templates/*.txt (string.Template, `$name` fields); the placeholder value sets, the
fields and the fixed instructions are the task groups' records in synthembed.taskgroups (the paper's Table 8 exactly).
The same seed gives the same prompts.

Each prompt also carries a `marker`: what it asks for (stage, task group, placeholders) as compact JSON. It travels beside
the messages, never inside them (the openai backend sends it as an HTTP header, taskgroups.MARKER_HEADER), so a real
LLM does not see it and the cache key does not depend on it; the loopback stand-in answers from it instead of reading
the template's wording.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from ..errors import SynthembedError
from ..languages import canonical_language, sample_language, sample_language_pair
from ..taskgroups import ASYMMETRIC_TASK_TYPES, TASK_GROUP, TASK_TYPES, TaskGroup, prompt_marker

__all__ = [
    "Prompt", "PromptError", "brainstorm_prompt", "checked_group", "generation_prompt", "sample_placeholders",
    "task_instruction",
]  # fmt: skip

class PromptError(SynthembedError, ValueError):
    """A task group, task or placeholder that no prompt can be built from."""


@dataclass(frozen=True)
class Prompt:
    """One chat request: OpenAI-style messages plus what was sampled into them.

    `task` is the task definition for a generation prompt (the fixed instruction for sts/bitext) and None for a
    brainstorm prompt; `language` is the language the output should be in ("English" for brainstorming, src_lang for
    bitext).
    """

    task_type: str
    messages: list[dict[str, str]]
    placeholders: dict[str, Any] = field(default_factory=dict)
    language: str = "English"
    task: str | None = None
    stage: str = "generate"

    def sha256(self) -> str:
        """Hex sha256 of the messages' canonical JSON (sorted keys, no spaces): the provenance key of an example."""
        canonical = json.dumps(self.messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def text(self) -> str:
        """The user message's content, for display."""
        return "\n\n".join(message["content"] for message in self.messages)

    @property
    def marker(self) -> str:
        """What the prompt asks for (stage, task group and, for a generation prompt, the placeholders) as one line of
        ASCII JSON: sent beside the messages, never in them (taskgroups.MARKER_HEADER).

        >>> brainstorm_prompt("long-long").marker
        '{"stage":"brainstorm","task_type":"long-long"}'
        """
        return prompt_marker(self.stage, self.task_type, self.placeholders if self.stage == "generate" else None)


@cache
def _template(name: str) -> string.Template:
    source = resources.files("synthembed.generation").joinpath("templates", f"{name}.txt")
    return string.Template(source.read_text(encoding="utf-8"))


def checked_group(task_type: str, allowed: tuple[str, ...] = TASK_TYPES) -> TaskGroup:
    """The record of `task_type`, else PromptError naming the groups allowed here.

    >>> checked_group("sts").instruction
    'Retrieve semantically similar text.'
    """
    if task_type not in allowed:
        raise PromptError(f"unknown task type {task_type!r} here; expected one of {', '.join(allowed)}")
    return TASK_GROUP[task_type]


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content.strip()}]


def brainstorm_prompt(task_type: str, rng: random.Random | None = None) -> Prompt:
    """The step-1 prompt of an asymmetric group: asks for ~20 task definitions as a JSON list of strings.

    Without an rng the first two illustrations are shown; with one, two are drawn (seeded).

    >>> "JSON list" in brainstorm_prompt("long-short").text
    True
    """
    if task_type in TASK_GROUP and TASK_GROUP[task_type].brainstorm_template is None:
        raise PromptError(f"{task_type} has no brainstorm step: its instruction is fixed")
    group = checked_group(task_type, ASYMMETRIC_TASK_TYPES)
    pool = group.brainstorm_examples
    shown = list(pool[:2]) if rng is None else rng.sample(pool, 2)
    content = _template(group.brainstorm_template).substitute(examples="\n".join(f"- {s}" for s in shown))
    return Prompt(task_type=task_type, messages=_user(content), placeholders={"examples": shown}, stage="brainstorm")


def sample_placeholders(task_type: str, rng: random.Random, languages=None) -> dict[str, str]:
    """One value per placeholder of the group, drawn uniformly from the paper's sets, plus the language(s).

    `language` follows the paper's weights over `languages` (all 93 when None). For bitext, src_lang and tgt_lang are two
    different languages and `language` is src_lang.

    >>> sorted(sample_placeholders("sts", random.Random(0)))
    ['difficulty', 'high_score', 'language', 'low_score', 'unit']
    """
    group = checked_group(task_type)
    placeholders = {name: rng.choice(values) for name, values in group.placeholders.items()}
    if len(group.language_placeholders) == 2:
        src, tgt = sample_language_pair(rng, languages)
        placeholders.update(src_lang=src, tgt_lang=tgt, language=src)
    else:
        placeholders["language"] = sample_language(rng, languages)
    return placeholders


def task_instruction(task_type: str, task: str | None) -> str:
    """The instruction that goes before the query in training: the task definition, or the fixed sts/bitext one.

    >>> task_instruction("bitext", None)
    'Retrieve parallel sentences.'
    """
    fixed = checked_group(task_type).instruction
    if fixed is not None:
        if task is not None and task.strip() and task.strip() != fixed:
            raise PromptError(f"{task_type} uses the fixed instruction {fixed!r}, not {task!r}")
        return fixed
    if task is None or not str(task).strip():
        raise PromptError(f"{task_type} needs a task definition")
    return " ".join(str(task).split())


def _checked_placeholders(group: TaskGroup, placeholders: dict[str, Any]) -> dict[str, str]:
    """The placeholders as strings, each checked against its set; a missing or foreign value raises PromptError."""
    values: dict[str, str] = {}
    for name, allowed in group.placeholders.items():
        if name not in placeholders:
            raise PromptError(f"{group.name} prompt needs placeholder {name!r}")
        value = str(placeholders[name])
        if value not in allowed:
            raise PromptError(f"{group.name} placeholder {name}={value!r} is not one of {allowed}")
        values[name] = value
    for name in group.language_placeholders:
        if name not in placeholders:
            raise PromptError(f"{group.name} prompt needs placeholder {name!r}")
        values[name] = canonical_language(placeholders[name])
    if len(group.language_placeholders) == 2:
        src, tgt = (values[name] for name in group.language_placeholders)
        if src == tgt:
            raise PromptError(f"{group.name} needs two different languages, got {src} twice")
        values["language"] = src
    return values


def generation_prompt(task_type: str, task: str | None, placeholders: dict[str, Any]) -> Prompt:
    """The step-2 prompt: one example of `task` as a single JSON object with the group's fields.

    `task` is None for sts and bitext (their instruction is fixed). Placeholders come from sample_placeholders.

    >>> p = generation_prompt("sts", None, sample_placeholders("sts", random.Random(0)))
    >>> p.task, '"S3"' in p.text
    ('Retrieve semantically similar text.', True)
    """
    group = checked_group(task_type)
    instruction = task_instruction(task_type, task)
    values = _checked_placeholders(group, placeholders)
    content = _template(group.generation_template).substitute(task=instruction, **values)
    return Prompt(task_type=task_type, messages=_user(content), placeholders=values, language=values["language"],
                  task=instruction)  # fmt: skip
