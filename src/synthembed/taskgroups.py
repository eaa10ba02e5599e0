"""The paper's six task groups, one record each: everything that differs from one group to the next lives here.

    from synthembed.taskgroups import TASK_GROUP, TASK_GROUPS
    group = TASK_GROUP["short-long"]
    group.fields                  # ('user_query', 'positive_document', 'hard_negative_document')
    group.placeholders["clarity"] # ('clear', 'understandable with some effort', 'ambiguous')
    [g.name for g in TASK_GROUPS] # the paper's order: short-long, long-short, short-short, long-long, sts, bitext

The prompt builder, the parser and validator, the data schema's TASK_TYPES, the stand-in LLM and the plots read these
records; adding a group means adding a record here and its template files in generation/templates. Facts come from
docs/paper.md (section 1: the task groups and the placeholder sets of the paper's Table 8) and
the paper's shares from reference.py. At the end: the marker that tells the stand-in LLM which group a request is for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any

from .reference import PAPER_EXAMPLES_BY_GROUP

__all__ = [
    "ASYMMETRIC_TASK_TYPES", "BITEXT", "LONG_LONG", "LONG_SHORT", "SHORT_LONG", "SHORT_SHORT", "STS",
    "LONG_LONG_MIN_WORDS", "MARKER_HEADER", "STAND_IN_FINGERPRINT", "SYMMETRIC_TASK_TYPES", "TASK_GROUP", "TASK_GROUPS",
    "TASK_TYPES", "TaskGroup", "prompt_marker", "read_marker", "word_range",
]  # fmt: skip


@dataclass(frozen=True)
class TaskGroup:
    """One task group of the paper (section 3.1): what its prompts ask for and what a valid example of it is.

    `fields` are the JSON keys of one example in (query, positive, negative) order; `instruction` is the fixed one of a
    symmetric group (None: the asymmetric groups brainstorm their task definitions first).
    """

    name: str
    symmetric: bool
    fields: tuple[str, ...]
    distinct_fields: tuple[tuple[str, str], ...]  # pairs of fields that must not be the same text
    instruction: str | None = None
    placeholders: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))  # Table 8
    language_placeholders: tuple[str, ...] = ("language",)  # or ("src_lang", "tgt_lang") for two languages
    # (field, the placeholder naming its language); None: every field in `language`. Labels may be left unchecked.
    checked_languages: tuple[tuple[str, str], ...] | None = None
    length_placeholders: tuple[tuple[str, str], ...] = ()  # (field, the placeholder whose phrase bounds its words)
    min_words: tuple[tuple[str, int], ...] = ()  # fixed minimum words per field, whatever the placeholders
    brainstorm_examples: tuple[str, ...] = ()  # shown in the brainstorm prompt, two at a time

    @property
    def language_fields(self) -> tuple[tuple[str, str], ...]:
        """(field, the placeholder naming the language it must be in), for every field whose language is checked.

        >>> LONG_SHORT.language_fields
        (('input_text', 'language'),)
        """
        if self.checked_languages is not None:
            return self.checked_languages
        return tuple((name, "language") for name in self.fields)

    @property
    def brainstorm_template(self) -> str | None:
        """The brainstorm prompt's file stem in generation/templates; None for a symmetric group (no brainstorm)."""
        return None if self.symmetric else f"brainstorm_{self.name}"

    @property
    def generation_template(self) -> str:
        """The generation prompt's file stem in generation/templates."""
        return f"generate_{self.name}"

    @property
    def paper_examples_k(self) -> int:
        """Thousands of examples of this group in the paper's data (Figure 2).

        >>> SHORT_SHORT.paper_examples_k
        13
        """
        return PAPER_EXAMPLES_BY_GROUP[self.name]

    @property
    def paper_share(self) -> float:
        """This group's share of the paper's examples (its Figure 2 counts sum to 507k, rounded, for 500k).

        >>> round(SHORT_LONG.paper_share, 3)
        0.329
        """
        return self.paper_examples_k / sum(PAPER_EXAMPLES_BY_GROUP.values())

    def schema(self):
        """The pydantic model of one example's JSON: `fields` as required non-empty strings; extra keys are ignored.

        >>> sorted(STS.schema().model_fields)
        ['S1', 'S2', 'S3']
        """
        return _schema(self.name, self.fields)

    def length_rules(self, placeholders: Mapping[str, Any]) -> list[tuple[str, int | None, int | None]]:
        """(field, min words, max words) that the paper and these placeholders impose.

        >>> SHORT_LONG.length_rules({"query_length": "less than 5 words", "num_words": "200"})
        [('user_query', None, 5), ('positive_document', 200, None)]
        """
        rules: list[tuple[str, int | None, int | None]] = [(name, low, None) for name, low in self.min_words]
        for name, placeholder in self.length_placeholders:
            if placeholder in placeholders:
                rules.append((name, *word_range(str(placeholders[placeholder]))))
        return rules


def word_range(phrase: str) -> tuple[int | None, int | None]:
    """(min, max) words of a length placeholder; the bare short-long num_words is asked for as a minimum.

    >>> word_range("less than 5 words"), word_range("5 to 15 words"), word_range("at least 50"), word_range("200")
    ((None, 5), (5, 15), (50, None), (200, None))
    """
    numbers = [int(n) for n in re.findall(r"\d+", phrase)]
    if not numbers:
        return None, None
    if phrase.startswith("less than"):
        return None, numbers[0]
    if " to " in phrase and len(numbers) >= 2:
        return numbers[0], numbers[1]
    return numbers[0], None


@cache
def _schema(name: str, fields: tuple[str, ...]):
    from typing import Annotated

    from pydantic import ConfigDict, StringConstraints, create_model

    text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)  # a label of 4 is as good as "4"
    return create_model(f"{name.title().replace('-', '')}Example", __config__=config,
                        **{key: (text, ...) for key in fields})  # fmt: skip


# Table 8 of the paper (docs/paper.md, section 1). Section 3.1's "5-10 words" is superseded by the table's "5 to 15 words".
_DIFFICULTY = ("high school", "college", "PhD")
_CLARITY = ("clear", "understandable with some effort", "ambiguous")
_STS_UNIT = ("sentence", "phrase", "passage")
_STS_DIFFICULTY = ("elementary school", "high school", "college")
_HIGH_SCORE = ("4", "4.5", "5")
LONG_LONG_MIN_WORDS = 300  # docs/paper.md, section 1: long-long query and document are each at least 300 words


SHORT_LONG = TaskGroup(
    name="short-long",
    symmetric=False,
    fields=("user_query", "positive_document", "hard_negative_document"),
    distinct_fields=(("user_query", "positive_document"), ("positive_document", "hard_negative_document")),
    placeholders=MappingProxyType({
        "query_type": ("extremely long-tail", "long-tail", "common"),
        "query_length": ("less than 5 words", "5 to 15 words", "at least 10 words"),
        "clarity": _CLARITY,
        "num_words": ("50", "100", "200", "300", "400", "500"),
        "difficulty": _DIFFICULTY,
    }),
    length_placeholders=(("user_query", "query_length"), ("positive_document", "num_words")),
    # Illustrations shown in the brainstorm prompt; a seeded rng picks two, so seeds nudge toward different tasks.
    brainstorm_examples=(
        "Given a few keywords about a household appliance fault, retrieve repair guides that explain how to fix it.",
        "Given the name of a medication, retrieve patient leaflets that describe its dosage and side effects.",
        "Given a question a tourist asks about a city, retrieve travel articles that answer it.",
        "Given a short legal question from a tenant, retrieve explanations of the relevant housing rules.",
        "Given the title of a programming error, retrieve forum answers that resolve it.",
        "Given a historical figure's name, retrieve biographies that cover their main achievements.",
    ),
)

LONG_SHORT = TaskGroup(
    name="long-short",
    symmetric=False,
    fields=("input_text", "label", "misleading_label"),
    distinct_fields=(("label", "misleading_label"),),
    placeholders=MappingProxyType({
        "num_words": ("less than 10", "at least 10", "at least 50", "at least 100", "at least 200"),
        "difficulty": _DIFFICULTY,
        "clarity": _CLARITY,
    }),
    checked_languages=(("input_text", "language"),),  # labels may be English class names
    length_placeholders=(("input_text", "num_words"),),
    brainstorm_examples=(
        "Classify a customer's product review by the aspect of the product it complains about.",
        "Decide whether a news article reports on politics, business, science, sport or culture.",
        "Label a support ticket with the urgency that its description implies.",
        "Identify the emotion expressed in a personal diary entry.",
        "Classify a job advertisement by the seniority of the position it offers.",
        "Decide whether a scientific abstract reports a positive, negative or inconclusive result.",
    ),
)

# short-short and long-long: a query and one relevant document, no hard negative; long-long's are each 300+ words.
_QUERY_DOCUMENT = ("input", "positive_document")

SHORT_SHORT = TaskGroup("short-short", symmetric=False, fields=_QUERY_DOCUMENT, distinct_fields=(_QUERY_DOCUMENT,),
                        brainstorm_examples=(
    "Given a product name, retrieve other names under which the same product is sold.",
    "Given a short question, retrieve a one-sentence answer to it.",
    "Given a job title, retrieve job titles with the same responsibilities.",
    "Given a search phrase, retrieve news headlines that match it.",
    "Given a medical term, retrieve its plain-language synonyms.",
    "Given the title of a recipe, retrieve titles of recipes that can replace it.",
))  # fmt: skip

LONG_LONG = TaskGroup("long-long", symmetric=False, fields=_QUERY_DOCUMENT, distinct_fields=(_QUERY_DOCUMENT,),
                      min_words=tuple((name, LONG_LONG_MIN_WORDS) for name in _QUERY_DOCUMENT), brainstorm_examples=(
    "Given a news report, retrieve other reports that describe the same event from another side.",
    "Given a research paper's introduction, retrieve introductions of papers that build on the same idea.",
    "Given a product's full description, retrieve descriptions of competing products.",
    "Given a short story, retrieve critical essays that interpret it.",
    "Given a policy proposal, retrieve documents that argue against it.",
    "Given a patent description, retrieve earlier patents that anticipate its claims.",
))  # fmt: skip

# sts and bitext: three texts, S2 close to S1 (high_score) and S3 further (low_score); a fixed instruction.
_THREE_TEXTS = ("S1", "S2", "S3")
_ALL_DISTINCT = (("S1", "S2"), ("S1", "S3"), ("S2", "S3"))

STS = TaskGroup("sts", symmetric=True, fields=_THREE_TEXTS, distinct_fields=_ALL_DISTINCT,
                instruction="Retrieve semantically similar text.",
                placeholders=MappingProxyType({"high_score": _HIGH_SCORE, "low_score": ("2.5", "3", "3.5"),
                                               "unit": _STS_UNIT, "difficulty": _STS_DIFFICULTY}))

BITEXT = TaskGroup("bitext", symmetric=True, fields=_THREE_TEXTS, distinct_fields=_ALL_DISTINCT,
                   instruction="Retrieve parallel sentences.",
                   placeholders=MappingProxyType({"high_score": _HIGH_SCORE, "low_score": ("1.5", "2", "2.5"),
                                                  "unit": _STS_UNIT, "difficulty": _STS_DIFFICULTY}),
                   # two different languages (`language` is src_lang): S1 in the one, S2 and S3 in the other
                   language_placeholders=("src_lang", "tgt_lang"),
                   checked_languages=(("S1", "src_lang"), ("S2", "tgt_lang"), ("S3", "tgt_lang")))

TASK_GROUPS: tuple[TaskGroup, ...] = (SHORT_LONG, LONG_SHORT, SHORT_SHORT, LONG_LONG, STS, BITEXT)  # the paper's order
TASK_GROUP: dict[str, TaskGroup] = {group.name: group for group in TASK_GROUPS}
TASK_TYPES: tuple[str, ...] = tuple(TASK_GROUP)
ASYMMETRIC_TASK_TYPES: tuple[str, ...] = tuple(group.name for group in TASK_GROUPS if not group.symmetric)
SYMMETRIC_TASK_TYPES: tuple[str, ...] = tuple(group.name for group in TASK_GROUPS if group.symmetric)

assert set(TASK_GROUP) == set(PAPER_EXAMPLES_BY_GROUP)  # every group has its paper share, and no other exists


# --- the marker: which group a request is for, told beside its messages ------------------------------------------------

# A prompt's marker (stage, task group, placeholders as one line of ASCII JSON) travels in this HTTP header: servers
# ignore headers they do not know and the model never sees them, so the messages, the cache key and the prompt's sha256
# are what they would be without it. The loopback stand-in LLM answers from it, never from a template's wording.
MARKER_HEADER = "X-Synthembed-Prompt"
STAGES = ("brainstorm", "generate")
STAND_IN_FINGERPRINT = "loopback-stand-in"  # the system_fingerprint the stand-in signs its answers with


def prompt_marker(stage: str, task_type: str, placeholders: Mapping[str, Any] | None = None) -> str:
    """What a prompt asks for, as one line of ASCII JSON (an HTTP header value); `read_marker` reads it back.

    >>> prompt_marker("generate", "sts", {"unit": "phrase"})
    '{"placeholders":{"unit":"phrase"},"stage":"generate","task_type":"sts"}'
    """
    fields: dict[str, Any] = {"stage": stage, "task_type": task_type}
    if placeholders is not None:
        fields["placeholders"] = dict(placeholders)
    return json.dumps(fields, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


def read_marker(value: str | None) -> dict[str, Any] | None:
    """A marker as {stage, task_type[, placeholders]}; None when absent or not one of ours (an unknown group too).

    >>> read_marker('{"stage":"brainstorm","task_type":"long-long"}')
    {'stage': 'brainstorm', 'task_type': 'long-long'}
    """
    if not value:
        return None
    try:
        fields = json.loads(value)
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get("stage") not in STAGES or fields.get("task_type") not in TASK_GROUP:
        return None
    if not isinstance(fields.get("placeholders", {}), dict):
        return None
    return fields
