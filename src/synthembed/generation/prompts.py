"""Brainstorm and generation prompts for the paper's six task groups, with seeded placeholder sampling.

    import random
    from synthembed.generation.prompts import brainstorm_prompt, generation_prompt, sample_placeholders
    rng = random.Random(0)
    tasks_prompt = brainstorm_prompt("short-long", rng)              # asks for ~20 task definitions as a JSON list
    placeholders = sample_placeholders("short-long", rng)            # {'query_type': ..., ..., 'language': 'English'}
    prompt = generation_prompt("short-long", "Given a recipe name, retrieve cooking instructions.", placeholders)
    prompt.messages                                                  # [{'role': 'user', 'content': '...'}]

Prompts are data: the wording lives in prompts/*.txt (string.Template, `$name` fields), the placeholder value sets are the
constants below and equal the paper's Table 8 sets exactly (PAPER.md, "Placeholders sampled into the generation prompt").
The same seed gives the same prompts.
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

from ..data import ASYMMETRIC_TASK_TYPES, SYMMETRIC_TASK_TYPES, TASK_TYPES
from ..errors import SynthembedError
from ..languages import canonical_language, sample_language, sample_language_pair

__all__ = [
    "ASYMMETRIC_TASK_TYPES", "BITEXT_INSTRUCTION", "BRAINSTORM_EXAMPLES", "OUTPUT_FIELDS", "PLACEHOLDER_VALUES",
    "Prompt", "PromptError", "STS_INSTRUCTION", "SYMMETRIC_TASK_TYPES", "TASK_TYPES", "brainstorm_prompt",
    "generation_prompt", "sample_placeholders", "task_instruction",
]  # fmt: skip

STS_INSTRUCTION = "Retrieve semantically similar text."  # the paper's fixed instruction for sts
BITEXT_INSTRUCTION = "Retrieve parallel sentences."  # and for bitext

# Table 8 of the paper (PAPER.md). Section 3.1's "5-10 words" is superseded by the table's "5 to 15 words".
_DIFFICULTY = ("high school", "college", "PhD")
_CLARITY = ("clear", "understandable with some effort", "ambiguous")
_STS_UNIT = ("sentence", "phrase", "passage")
_STS_DIFFICULTY = ("elementary school", "high school", "college")

PLACEHOLDER_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "short-long": {
        "query_type": ("extremely long-tail", "long-tail", "common"),
        "query_length": ("less than 5 words", "5 to 15 words", "at least 10 words"),
        "clarity": _CLARITY,
        "num_words": ("50", "100", "200", "300", "400", "500"),
        "difficulty": _DIFFICULTY,
    },
    "long-short": {
        "num_words": ("less than 10", "at least 10", "at least 50", "at least 100", "at least 200"),
        "difficulty": _DIFFICULTY,
        "clarity": _CLARITY,
    },
    "short-short": {},
    "long-long": {},
    "sts": {
        "high_score": ("4", "4.5", "5"),
        "low_score": ("2.5", "3", "3.5"),
        "unit": _STS_UNIT,
        "difficulty": _STS_DIFFICULTY,
    },
    "bitext": {
        "high_score": ("4", "4.5", "5"),
        "low_score": ("1.5", "2", "2.5"),
        "unit": _STS_UNIT,
        "difficulty": _STS_DIFFICULTY,
    },
}

# The JSON keys each group's generation prompt asks for (PAPER.md, "Synthetic data: task taxonomy").
OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "short-long": ("user_query", "positive_document", "hard_negative_document"),
    "long-short": ("input_text", "label", "misleading_label"),
    "short-short": ("input", "positive_document"),
    "long-long": ("input", "positive_document"),
    "sts": ("S1", "S2", "S3"),
    "bitext": ("S1", "S2", "S3"),
}

# Illustrations shown in the brainstorm prompt; a seeded rng picks two, so different seeds nudge toward different tasks.
BRAINSTORM_EXAMPLES: dict[str, tuple[str, ...]] = {
    "short-long": (
        "Given a few keywords about a household appliance fault, retrieve repair guides that explain how to fix it.",
        "Given the name of a medication, retrieve patient leaflets that describe its dosage and side effects.",
        "Given a question a tourist asks about a city, retrieve travel articles that answer it.",
        "Given a short legal question from a tenant, retrieve explanations of the relevant housing rules.",
        "Given the title of a programming error, retrieve forum answers that resolve it.",
        "Given a historical figure's name, retrieve biographies that cover their main achievements.",
    ),
    "long-short": (
        "Classify a customer's product review by the aspect of the product it complains about.",
        "Decide whether a news article reports on politics, business, science, sport or culture.",
        "Label a support ticket with the urgency that its description implies.",
        "Identify the emotion expressed in a personal diary entry.",
        "Classify a job advertisement by the seniority of the position it offers.",
        "Decide whether a scientific abstract reports a positive, negative or inconclusive result.",
    ),
    "short-short": (
        "Given a product name, retrieve other names under which the same product is sold.",
        "Given a short question, retrieve a one-sentence answer to it.",
        "Given a job title, retrieve job titles with the same responsibilities.",
        "Given a search phrase, retrieve news headlines that match it.",
        "Given a medical term, retrieve its plain-language synonyms.",
        "Given the title of a recipe, retrieve titles of recipes that can replace it.",
    ),
    "long-long": (
        "Given a news report, retrieve other reports that describe the same event from another side.",
        "Given a research paper's introduction, retrieve introductions of papers that build on the same idea.",
        "Given a product's full description, retrieve descriptions of competing products.",
        "Given a short story, retrieve critical essays that interpret it.",
        "Given a policy proposal, retrieve documents that argue against it.",
        "Given a patent description, retrieve earlier patents that anticipate its claims.",
    ),
}


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

    def sha256(self) -> str:
        """Hex sha256 of the messages' canonical JSON (sorted keys, no spaces): the provenance key of an example."""
        canonical = json.dumps(self.messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def text(self) -> str:
        """The user message's content, for display."""
        return "\n\n".join(message["content"] for message in self.messages)


@cache
def _template(name: str) -> string.Template:
    source = resources.files("synthembed.generation").joinpath("templates", f"{name}.txt")
    return string.Template(source.read_text(encoding="utf-8"))


def _check_task_type(task_type: str, allowed: tuple[str, ...] = TASK_TYPES) -> None:
    if task_type not in allowed:
        raise PromptError(f"unknown task type {task_type!r} here; expected one of {', '.join(allowed)}")


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content.strip()}]


def brainstorm_prompt(task_type: str, rng: random.Random | None = None) -> Prompt:
    """The step-1 prompt of an asymmetric group: asks for ~20 task definitions as a JSON list of strings.

    Without an rng the first two illustrations are shown; with one, two are drawn (seeded).

    >>> "JSON list" in brainstorm_prompt("long-short").text
    True
    """
    if task_type in SYMMETRIC_TASK_TYPES:
        raise PromptError(f"{task_type} has no brainstorm step: its instruction is fixed")
    _check_task_type(task_type, ASYMMETRIC_TASK_TYPES)
    pool = BRAINSTORM_EXAMPLES[task_type]
    shown = list(pool[:2]) if rng is None else rng.sample(pool, 2)
    content = _template(f"brainstorm_{task_type}").substitute(examples="\n".join(f"- {s}" for s in shown))
    return Prompt(task_type=task_type, messages=_user(content), placeholders={"examples": shown})


def sample_placeholders(task_type: str, rng: random.Random, languages=None) -> dict[str, str]:
    """One value per placeholder of the group, drawn uniformly from the paper's sets, plus the language(s).

    `language` follows the paper's weights over `languages` (all 93 when None). For bitext, src_lang and tgt_lang are two
    different languages and `language` is src_lang.

    >>> sorted(sample_placeholders("sts", random.Random(0)))
    ['difficulty', 'high_score', 'language', 'low_score', 'unit']
    """
    _check_task_type(task_type)
    placeholders = {name: rng.choice(values) for name, values in PLACEHOLDER_VALUES[task_type].items()}
    if task_type == "bitext":
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
    _check_task_type(task_type)
    fixed = {"sts": STS_INSTRUCTION, "bitext": BITEXT_INSTRUCTION}.get(task_type)
    if fixed is not None:
        if task is not None and task.strip() and task.strip() != fixed:
            raise PromptError(f"{task_type} uses the fixed instruction {fixed!r}, not {task!r}")
        return fixed
    if task is None or not str(task).strip():
        raise PromptError(f"{task_type} needs a task definition")
    return " ".join(str(task).split())


def _checked_placeholders(task_type: str, placeholders: dict[str, Any]) -> dict[str, str]:
    """The placeholders as strings, each checked against its set; a missing or foreign value raises PromptError."""
    values: dict[str, str] = {}
    for name, allowed in PLACEHOLDER_VALUES[task_type].items():
        if name not in placeholders:
            raise PromptError(f"{task_type} prompt needs placeholder {name!r}")
        value = str(placeholders[name])
        if value not in allowed:
            raise PromptError(f"{task_type} placeholder {name}={value!r} is not one of {allowed}")
        values[name] = value
    language_names = ("src_lang", "tgt_lang") if task_type == "bitext" else ("language",)
    for name in language_names:
        if name not in placeholders:
            raise PromptError(f"{task_type} prompt needs placeholder {name!r}")
        values[name] = canonical_language(placeholders[name])
    if task_type == "bitext":
        if values["src_lang"] == values["tgt_lang"]:
            raise PromptError(f"bitext needs two different languages, got {values['src_lang']} twice")
        values["language"] = values["src_lang"]
    return values


def generation_prompt(task_type: str, task: str | None, placeholders: dict[str, Any]) -> Prompt:
    """The step-2 prompt: one example of `task` as a single JSON object with the group's OUTPUT_FIELDS.

    `task` is None for sts and bitext (their instruction is fixed). Placeholders come from sample_placeholders.

    >>> p = generation_prompt("sts", None, sample_placeholders("sts", random.Random(0)))
    >>> p.task, '"S3"' in p.text
    ('Retrieve semantically similar text.', True)
    """
    _check_task_type(task_type)
    instruction = task_instruction(task_type, task)
    values = _checked_placeholders(task_type, placeholders)
    content = _template(f"generate_{task_type}").substitute(task=instruction, **values)
    return Prompt(task_type=task_type, messages=_user(content), placeholders=values, language=values["language"],
                  task=instruction)  # fmt: skip


assert set(PLACEHOLDER_VALUES) == set(OUTPUT_FIELDS) == set(TASK_TYPES)  # every group has its sets and fields
