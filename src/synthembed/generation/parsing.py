"""Turn raw LLM replies into task lists and examples, and judge each example against its group's rules (taskgroups.py).

    from synthembed.generation.parsing import judge, parse_json_object, parse_task_list, validate_example
    obj = parse_json_object('Sure!\\n```json\\n{"S1": "a", "S2": "b", "S3": "c",}\\n```')   # fenced, trailing comma
    tasks = parse_task_list('["Given a claim, retrieve evidence.", "Classify a review."]')
    verdict = validate_example("sts", obj, {"language": "English"})                      # Verdict(ok=..., reason=...)
    judge("sts", reply_text, "stop", None, placeholders)     # the whole check of one reply: ("ok", ...) or ("reject", ...)

Nothing here evaluates model output as code (no eval, no ast.literal_eval): replies are parsed as JSON, after a small set of
textual repairs that LLMs commonly need (trailing commas, curly quotes, single-quoted Python-style strings, unescaped inner
quotes). A truncated reply stays an error: repairs never invent closing brackets. The paper drops outputs that are not valid
JSON (section 3.1); every rejection carries a short machine-readable reason for rejects.jsonl and stats.json.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import ValidationError

from ..languages import iso_code, word_count
from .llm import valid_unicode
from .prompts import checked_group

REASONS = (
    "empty", "invalid_json", "not_an_object", "not_a_list",  # parsing
    "missing_field", "wrong_type", "empty_field", "control_characters", "invalid_text", "identical_texts", "too_short",
    "too_long", "wrong_language",  # checks
)  # fmt: skip


class ParseError(ValueError):
    """A reply that holds no usable JSON; `reason` is one of REASONS ("invalid_json", "not_a_list", "empty", ...)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- finding the JSON in a reply --------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\r?\n?(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"^\s*```[ \t]*[\w+-]*[ \t]*\r?\n?")
_DOUBLE_QUOTES = {'"', "\u201c", "\u201d", "\u201e", "\u201f", "\u2033", "\uff02"}  # " “ ” „ ‟ ″ ＂
_SINGLE_QUOTES = {"'", "\u2018", "\u2019", "\u201a", "\u201b"}  # ' ‘ ’ ‚ ‛
_STRUCTURAL_AFTER_CLOSE = set(",:}]")


def _candidates(text: str) -> list[str]:
    """Where JSON may sit, most specific first: each fenced block, an unclosed opening fence's tail, the whole reply."""
    found = [match.group(2) for match in _FENCE.finditer(text)]
    if not found and _OPEN_FENCE.match(text):  # a reply cut off before its closing fence
        found.append(_OPEN_FENCE.sub("", text, count=1))
    found.append(text)
    return [block.strip() for block in found if block.strip()]


def _balanced_spans(text: str, opener: str, closer: str):
    """Yield top-level `opener...closer` spans in order; stop at the first one left open (a truncated reply)."""
    start = text.find(opener)
    while start != -1:
        depth, quote, index = 0, None, start
        while index < len(text):
            char = text[index]
            if quote is not None:
                if char == "\\":
                    index += 1
                elif char == quote:
                    quote = None
            elif char == '"':
                quote = char
            elif char == opener:
                depth += 1
            elif char == closer:
                depth -= 1
                if depth == 0:
                    break
            index += 1
        if index >= len(text):
            return  # never closed: whatever follows lies inside the cut-off structure
        yield text[start : index + 1]
        start = text.find(opener, index + 1)


def _next_significant(text: str, index: int) -> str:
    """The first non-space character at or after `index`, or "" at the end."""
    while index < len(text) and text[index].isspace():
        index += 1
    return text[index] if index < len(text) else ""


def repair_json(text: str) -> str:
    """Rewrite common LLM slips into strict JSON: trailing commas, curly or single quotes as string delimiters, unescaped
    inner double quotes. Brackets are never added, so a truncated reply stays invalid.

    >>> print(repair_json("{\u201ca\u201d: 'it's', 'b': [1, 2,],}"))
    {"a": "it's", "b": [1, 2]}
    """
    out: list[str] = []
    quote_family: set[str] | None = None  # the delimiter family of the string we are inside, None outside strings
    index = 0
    while index < len(text):
        char = text[index]
        if quote_family is None:
            if char in _DOUBLE_QUOTES:
                quote_family = _DOUBLE_QUOTES
                out.append('"')
            elif char in _SINGLE_QUOTES:
                quote_family = _SINGLE_QUOTES
                out.append('"')
            elif char == "," and _next_significant(text, index + 1) in ("}", "]"):
                pass  # a trailing comma: drop it
            else:
                out.append(char)
        elif char == "\\" and index + 1 < len(text):
            following = text[index + 1]
            # \' is a Python escape JSON lacks; everything else passes through for json to judge
            out.append("'" if following == "'" else char + following)
            index += 1
        elif char in quote_family and _next_significant(text, index + 1) in _STRUCTURAL_AFTER_CLOSE | {""}:
            quote_family = None
            out.append('"')
        elif char == '"':
            out.append('\\"')  # an inner quote the model forgot to escape
        else:
            out.append(char)
        index += 1
    return "".join(out)


def _loads(text: str) -> Any:
    """json.loads that allows raw newlines and tabs inside strings (models write them)."""
    return json.loads(text, strict=False)


def _json_values(text: str, opener: str, closer: str):
    """Every JSON value the reply may hold, best guess first: a fenced block or the whole reply as it is, then each
    top-level `opener...closer` span as it is and repaired."""
    candidates = _candidates(text)
    for candidate in candidates:
        try:
            yield _loads(candidate)
        except json.JSONDecodeError:
            pass
    for candidate in candidates:
        # spans come from the reply as written, and only each span is repaired: an apostrophe in the prose around
        # the JSON must not be taken for a string delimiter
        for span in _balanced_spans(candidate, opener, closer):
            for attempt in (span, repair_json(span)):
                try:
                    yield _loads(attempt)
                    break
                except json.JSONDecodeError:
                    continue


def _first_json(text: str, opener: str, closer: str, accept):
    """accept(value) of the first JSON value in the reply that it accepts (it raises ParseError to refuse one).

    Fails with the first refusal when values were found but none fit, else with invalid_json.
    """
    refusal = None
    for value in _json_values(text, opener, closer):
        try:
            return accept(value)
        except ParseError as err:
            refusal = refusal or err
    if refusal is not None:
        raise refusal
    raise ParseError("invalid_json", f"no complete JSON {'object' if opener == '{' else 'list'} found")


def _as_object(value: Any) -> dict[str, Any]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]  # some models wrap the one object in a list
    if not isinstance(value, dict):
        raise ParseError("not_an_object", f"expected a JSON object, got {type(value).__name__}")
    return value


def parse_json_object(text: str) -> dict[str, Any]:
    """The JSON object in an LLM reply: plain, inside a code fence, inside prose, or after the usual repairs.

    >>> parse_json_object('Here it is: {"input": "a", "positive_document": "b",}')
    {'input': 'a', 'positive_document': 'b'}
    """
    if text is None or not str(text).strip():
        raise ParseError("empty", "the reply is empty")
    return _first_json(str(text), "{", "}", _as_object)


# --- task lists -------------------------------------------------------------------------------------------------------

_ITEM_LINE = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*\u2022+])\s+(.+?)\s*$")
_TASK_KEYS = ("task", "task_definition", "definition", "description", "instruction")


def _clean_task(item: str) -> str:
    # a lone surrogate ("\\ud800" in the JSON) cannot be written to tasks.jsonl nor hashed into a request's key
    item = " ".join(valid_unicode(item).replace("**", "").split())
    item = item.rstrip(",").strip()
    if len(item) >= 2 and item[0] in _DOUBLE_QUOTES | _SINGLE_QUOTES and item[-1] in _DOUBLE_QUOTES | _SINGLE_QUOTES:
        item = item[1:-1].strip()
    return item


def _tasks_from_value(value: Any) -> list[str]:
    """Strings from a parsed JSON list (or an object holding one list); other shapes raise not_a_list."""
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ParseError("not_a_list", f"expected a JSON list, got an object with keys {sorted(value)[:5]}")
        value = lists[0]
    if not isinstance(value, list):
        raise ParseError("not_a_list", f"expected a JSON list of strings, got {type(value).__name__}")
    tasks = []
    for position, item in enumerate(value):
        if isinstance(item, dict):  # [{"task": "..."}]: take the one obvious string
            strings = [item[k] for k in _TASK_KEYS if isinstance(item.get(k), str)]
            strings = strings or [v for v in item.values() if isinstance(v, str)]
            item = strings[0] if len(strings) >= 1 else None
        if not isinstance(item, str):
            raise ParseError("not_a_list", f"item {position} is not a string")
        tasks.append(item)
    return tasks


def _tasks_from_lines(text: str) -> list[str]:
    """Numbered or bulleted lines; failing those, plain lines of sentence length (a list that lost its brackets)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    items = [match.group(1) for match in map(_ITEM_LINE.match, lines) if match]
    if items:
        return items
    # plain lines count only when there are several sentence-long ones, so a chatty refusal is not taken for tasks
    plain = [line for line in lines if not line.endswith(":") and not line.startswith("```") and len(line.split()) >= 5]
    return plain if len(plain) >= 3 else []


def parse_task_list(text: str) -> list[str]:
    """The task definitions in a brainstorm reply: a JSON list (plain, fenced, in prose), a Python-style list of quoted
    strings, or numbered/bulleted lines. Items are whitespace-normalised and deduplicated, in order.

    >>> parse_task_list("```python\\n['Classify a review.', 'Given a claim, find evidence.',]\\n```")
    ['Classify a review.', 'Given a claim, find evidence.']
    """
    if text is None or not str(text).strip():
        raise ParseError("empty", "the reply is empty")
    text = str(text)
    looks_like_list = any(candidate.startswith(("[", "{")) for candidate in _candidates(text))
    try:
        tasks = _first_json(text, "[", "]", _tasks_from_value)
    except ParseError:
        if looks_like_list:
            raise  # a bracketed reply that will not parse (often truncated): do not guess from its lines
        tasks = _tasks_from_lines(text)
        if not tasks:
            raise ParseError("not_a_list", "no JSON list and no list-like lines in the reply") from None
    cleaned = list(dict.fromkeys(task for task in map(_clean_task, tasks) if task))
    if not cleaned:
        raise ParseError("empty", "the list holds no task definitions")
    return cleaned


# --- language -----------------------------------------------------------------------------------------------------------

MIN_LETTERS_FOR_LANGUAGE = 20  # below this the detector guesses; don't reject on a guess
# Reject when the detector gives the requested language (with its close relatives) less than this probability. Measured on
# the Tatoeba sentences of 73 of our languages (20+ letters): 0.1% of right-language sentences fall below it, while 99.6% of
# them fall below it when English was requested instead (tests/test_parsing.py checks both on deu/fra/rus/spa).
MAX_EXPECTED_PROBABILITY = 0.01
# Languages the detector confuses with each other; one answering for another is not a wrong language.
_CLOSE_LANGUAGES = ({"bs", "hr", "sr"}, {"id", "ms"}, {"no", "nn", "da"}, {"zh", "wuu", "yue"}, {"ar", "ary", "arz"},
                    {"uz", "uzs"}, {"gl", "pt"}, {"ca", "oc"}, {"fa", "sdh"})  # fmt: skip


@cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)  # the model ships inside the wheel


def detect_language(text: str) -> tuple[str, float]:
    """(py3langid code, probability) of the text's language.

    >>> detect_language("Das Wetter ist heute wirklich schön.")[0]
    'de'
    """
    code, probability = _identifier().classify(str(text))
    return code, float(probability)


def _letters(text: str) -> int:
    return sum(1 for char in text if unicodedata.category(char).startswith("L"))


def check_language(text: str, language: str) -> bool:
    """False only when the detector all but rules out `language` (and its close relatives) for `text`.

    True where it cannot judge: a language py3langid lacks (Sindhi, Sundanese, Yiddish), or a text too short to tell.

    >>> check_language("Das Wetter ist heute wirklich schön.", "French")
    False
    """
    expected = iso_code(language)
    if expected is None or _letters(text) < MIN_LETTERS_FOR_LANGUAGE:
        return True
    group = next((group for group in _CLOSE_LANGUAGES if expected in group), {expected})
    probabilities = dict(_identifier().rank(str(text)))
    return sum(probabilities.get(code, 0.0) for code in group) >= MAX_EXPECTED_PROBABILITY


# --- validation -------------------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """Whether an example is kept; `reason` is one of REASONS when not, `detail` says which field and why."""

    ok: bool
    reason: str | None = None
    detail: str = ""


# A text passes within this factor of a length the prompt asked for: models count words loosely. Small models write
# far shorter texts than asked (a 0.5B model answers "at least 300 words" with 20 to 80), so a run may loosen it
# (GenerateConfig.length_tolerance; 0 switches the length check off).
LENGTH_TOLERANCE = 2.0
_PYDANTIC_REASONS = {"missing": "missing_field", "string_too_short": "empty_field"}


# Unicode's control characters (category Cc: U+0000-001F, U+007F-009F) but newline, tab and carriage return; lone
# surrogates (category Cs); U+FFFD. One regex pass: judging runs on every reply.
_BROKEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")


def _bad_character(text: str) -> tuple[str, str] | None:
    """(reason, detail) for the first character in `text` that only a broken reply holds, else None:
    - a control character other than newline, tab and carriage return ("control_characters");
    - a lone surrogate (a JSON escape such as "\\ud800" alone, which examples.jsonl could not even hold) or U+FFFD, the
      replacement character that a broken encoding leaves behind: a lone surrogate in the reply itself (made storable
      as U+FFFD by llm.valid_unicode), invalid UTF-8 decoded with "replace", or a server that detokenised half of a
      multi-byte character ("invalid_text"). A text with a character lost is not a training example.
    """
    found = _BROKEN.search(text)
    if found is None:
        return None
    c = found.group()
    if c == "\ufffd":
        return "invalid_text", "holds U+FFFD, the replacement character of a broken encoding"
    if unicodedata.category(c) == "Cs":
        return "invalid_text", f"holds the lone surrogate U+{ord(c):04X} (a broken encoding)"
    return "control_characters", f"holds the control character U+{ord(c):04X}"


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


def validate_example(task_type: str, obj: Any, placeholders: dict[str, Any] | None = None,
                     length_tolerance: float = LENGTH_TOLERANCE) -> Verdict:
    """Check one parsed reply: the group's schema, distinct texts, the length rules (within a factor
    `length_tolerance` of the asked-for length; 0: not checked), then the language of each text.

    >>> validate_example("short-short", {"input": "cat", "positive_document": "cat"}, {"language": "English"}).reason
    'identical_texts'
    """
    group = checked_group(task_type)
    placeholders = placeholders or {}
    if not isinstance(obj, dict):
        return Verdict(False, "not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    for name in group.fields:  # before the schema, which would call a lone surrogate a "wrong_type"
        bad = _bad_character(obj[name]) if isinstance(obj.get(name), str) else None
        if bad is not None:
            return Verdict(False, bad[0], f"{name} {bad[1]}")
    try:
        fields = group.schema().model_validate(obj).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        return Verdict(False, _PYDANTIC_REASONS.get(first["type"], "wrong_type"), f"{name}: {first['msg']}")
    for left, right in group.distinct_fields:
        if _normalised(fields[left]) == _normalised(fields[right]):
            return Verdict(False, "identical_texts", f"{left} and {right} are the same text")
    for name, low, high in group.length_rules(placeholders) if length_tolerance else ():
        words = word_count(fields[name])
        if low is not None and words * length_tolerance < low:
            return Verdict(False, "too_short", f"{name} has {words} words; at least {low} were asked for")
        if high is not None and words > high * length_tolerance:
            return Verdict(False, "too_long", f"{name} has {words} words; fewer than {high} were asked for")
    for name, language_key in group.language_fields:
        language = placeholders.get(language_key)
        if language and not check_language(fields[name], str(language)):
            detected, probability = detect_language(fields[name])
            return Verdict(
                False, "wrong_language", f"{name} should be {language}, reads as {detected} (p={probability:.2f})"
            )
    return Verdict(True)


def to_example_fields(task_type: str, obj: dict[str, Any]) -> tuple[str, str, str | None]:
    """(query, positive, negative) from a group's JSON (its fields in that order); negative is None for short-short and
    long-long.

    >>> to_example_fields("long-short", {"input_text": "Great film!", "label": "positive", "misleading_label": "negative"})
    ('Great film!', 'positive', 'negative')
    """
    values = [str(obj[name]).strip() for name in checked_group(task_type).fields]
    return values[0], values[1], values[2] if len(values) > 2 else None


# --- one reply, judged -------------------------------------------------------------------------------------------------


def reply_problem(text: str | None, finish_reason: str = "stop", refusal: str | None = None) -> tuple[str, str] | None:
    """(reason, detail) to reject a reply before parsing it: a refusal, a reply cut off at the token limit, a content
    filter, or nothing at all; None when it may be parsed.

    >>> reply_problem('{"a": 1}', "length")
    ('truncated', 'the reply hit the token limit (finish_reason length)')
    """
    if refusal:
        return "refusal", refusal
    if finish_reason == "length":
        return "truncated", "the reply hit the token limit (finish_reason length)"
    if finish_reason == "content_filter":
        return "content_filter", "the provider's content filter stopped the reply"
    if not (text or "").strip():
        return "empty", "the reply is empty"
    return None


def judge(task_type: str, text: str | None, finish_reason: str, refusal: str | None,
          placeholders: dict[str, Any], length_tolerance: float = LENGTH_TOLERANCE) -> tuple:
    """Parse and validate one generation reply: ("reject", reason, detail) or ("ok", fields, (query, positive, negative)).

    A pure function of the reply, so it can run in a worker process.

    >>> judge("sts", None, "stop", "I can't help with that.", {"language": "English"})
    ('reject', 'refusal', "I can't help with that.")
    """
    problem = reply_problem(text, finish_reason, refusal)
    if problem:
        return ("reject", *problem)
    try:
        obj = parse_json_object(text)
    except ParseError as err:
        return ("reject", err.reason, err.detail)
    verdict = validate_example(task_type, obj, placeholders, length_tolerance)
    if not verdict.ok:
        return ("reject", verdict.reason or "invalid", verdict.detail)
    return ("ok", obj, to_example_fields(task_type, obj))
