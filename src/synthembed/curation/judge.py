"""The LLM judge: an optional second pass in which an LLM grades every example, through generation's client and SQLite
response cache (so a rerun costs nothing and a killed pass resumes where it stopped).

    from synthembed.curation.judge import judge_requests, verdicts
    requests, orders = judge_requests(examples, model="gpt-4o-mini", seed=0)
    replies = LLMClient(backend, cache=ResponseCache("curated/judge_cache.sqlite")).run(requests)
    decisions = verdicts(examples, replies, orders, min_relevance=2)

The judge grades the positive and the hard negative on one scale (3: does what the task asks, 2: partly, 1: on the
subject but does not do it, 0: unrelated) and says whether the texts are in the requested language and well formed.
The wording is ours and is data (templates/judge.txt). The two candidates are shown in a seeded random order, so a
judge that prefers the first text it reads favours neither side. What is done with a verdict (decide):
- not well formed, or not in the requested language: dropped;
- neither candidate reaches `min_relevance`: dropped (`positive_not_relevant`);
- the negative graded above the positive: relabelled, the two swapped (as Gecko relabels its positives);
- the negative as relevant as the positive: dropped (`negative_as_relevant`, a false negative);
- a negative graded 0 (off the subject, an easy negative) is kept and counted;
- a reply that holds no verdict, or a request that failed, keeps the example (counted: the judge is a second opinion).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from ..data import Example
from ..generation.llm import ChatRequest, ChatResponse, LLMError
from ..generation.parsing import ParseError, parse_json_object

DROP_REASONS = ("malformed", "wrong_language", "positive_not_relevant", "negative_as_relevant")
KEEP_REASONS = ("ok", "negative_off_topic", "unparsed", "failed", "not_judged")


def templates() -> dict[str, string.Template]:
    """The judge's prompt parts from templates/judge.txt: sections that start with a `--- name ---` line."""
    text = resources.files("synthembed.curation").joinpath("templates", "judge.txt").read_text(encoding="utf-8")
    parts: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("--- ") and line.endswith(" ---"):
            name = line[4:-4].strip()
            parts[name] = []
        elif name is not None:
            parts[name].append(line)
    return {k: string.Template("\n".join(v).strip()) for k, v in parts.items()}


def _language_rule(example: Example, parts: dict[str, string.Template]) -> str:
    placeholders = example.meta.placeholders
    if "src_lang" in placeholders and "tgt_lang" in placeholders:
        return parts["two_languages"].substitute(source=placeholders["src_lang"], target=placeholders["tgt_lang"])
    return parts["one_language"].substitute(language=example.language)


def negative_first(example: Example, seed: int) -> bool:
    """Whether the negative is shown as candidate A: a seeded coin per example, the same on every rerun."""
    digest = hashlib.sha256(f"{seed}:{example.id}:{example.query}".encode()).digest()
    return example.negative is not None and digest[0] % 2 == 1


def judge_requests(
    examples: Sequence[Example], model: str, seed: int = 0, max_tokens: int | None = 200
) -> tuple[list[ChatRequest], list[bool]]:
    """One chat request per example (temperature 0: a grade, not a sample) and, per example, whether its negative was
    shown first."""
    parts = templates()
    requests, flipped = [], []
    for example in examples:
        first_is_negative = negative_first(example, seed)
        first, second = (
            (example.negative, example.positive) if first_is_negative else (example.positive, example.negative)
        )
        section = parts["triplet" if example.negative is not None else "pair"]
        prompt = section.substitute(
            task=example.task,
            language_rule=_language_rule(example, parts),
            query=example.query,
            first=first,
            second=second or "",
        )
        requests.append(
            ChatRequest(
                model,
                ({"role": "user", "content": prompt},),
                temperature=0.0,
                top_p=1.0,
                max_tokens=max_tokens,
                seed=seed,
            )
        )
        flipped.append(first_is_negative)
    return requests, flipped


@dataclass(frozen=True)
class Verdict:
    """What the judge said of one example: the grades of positive and negative (None where absent or unreadable)."""

    positive: int | None = None
    negative: int | None = None
    language_ok: bool = True
    well_formed: bool = True
    problem: str | None = None  # "unparsed", "failed" or "not_judged" where there is no verdict


def _grade(value) -> int | None:
    """A grade 0..3 as the judge wrote it (3, 3.0 or "3"), else None."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= 3 else None


def _flag(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    return None


def read_verdict(example: Example, reply: ChatResponse | LLMError | None, negative_shown_first: bool) -> Verdict:
    """The Verdict in a reply, mapped back from candidates A/B to positive/negative."""
    if reply is None:
        return Verdict(problem="not_judged")  # the cost budget ran out before this request was sent
    if isinstance(reply, LLMError):
        return Verdict(problem="failed")
    try:
        obj = parse_json_object(reply.text or "")
    except ParseError:
        return Verdict(problem="unparsed")
    a, b = _grade(obj.get("A")), _grade(obj.get("B"))
    language_ok, well_formed = _flag(obj.get("language_ok")), _flag(obj.get("well_formed"))
    has_negative = example.negative is not None
    if a is None or (has_negative and b is None) or language_ok is None or well_formed is None:
        return Verdict(problem="unparsed")
    positive, negative = (b, a) if negative_shown_first else (a, b if has_negative else None)
    return Verdict(positive, negative, language_ok, well_formed)


def decide(verdict: Verdict, min_relevance: int = 2) -> tuple[str, str]:
    """("keep" | "drop" | "relabel", reason) for one verdict (the rules in the module's docstring).

    >>> decide(Verdict(positive=1, negative=3))
    ('relabel', 'negative_preferred')
    >>> decide(Verdict(positive=3, negative=3))
    ('drop', 'negative_as_relevant')
    """
    if verdict.problem:
        return "keep", verdict.problem
    if not verdict.well_formed:
        return "drop", "malformed"
    if not verdict.language_ok:
        return "drop", "wrong_language"
    best = max(verdict.positive, verdict.negative if verdict.negative is not None else -1)
    if best < min_relevance:
        return "drop", "positive_not_relevant"
    if verdict.negative is None:
        return "keep", "ok"
    if verdict.negative > verdict.positive:
        return "relabel", "negative_preferred"
    if verdict.negative == verdict.positive:
        return "drop", "negative_as_relevant"
    return "keep", "negative_off_topic" if verdict.negative == 0 else "ok"


def verdicts(
    examples: Sequence[Example], replies: Sequence, flipped: Sequence[bool], min_relevance: int = 2
) -> list[tuple[str, str, Verdict]]:
    """(action, reason, verdict) per example, in order."""
    out = []
    for example, reply, first in zip(examples, replies, flipped, strict=True):
        verdict = read_verdict(example, reply, first)
        out.append((*decide(verdict, min_relevance), verdict))
    return out
