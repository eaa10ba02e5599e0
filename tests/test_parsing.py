"""Parsing LLM replies (JSON objects, task lists) and validating examples: real replies, the usual breakages, reasons."""

from __future__ import annotations

import ast
import builtins
import json
import random

import pytest

from synthembed.generation.parsing import (
    REASONS,
    ParseError,
    Verdict,
    check_language,
    detect_language,
    parse_json_object,
    parse_task_list,
    repair_json,
    to_example_fields,
    validate_example,
)

# --- real LLM outputs in ../shared/data/synthetic_samples ------------------------------------------------------------


def _camel(shared_data):
    path = shared_data / "synthetic_samples" / "camel" / "single_agent_examples.extracted.jsonl"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_real_triplets_parse_validate_and_map(shared_data):
    lines = _camel(shared_data)
    assert len(lines) == 6
    for line in lines:
        obj = parse_json_object(line)
        assert obj == json.loads(line)  # a valid reply is taken as is, byte for byte
        verdict = validate_example("short-long", obj, {"language": "English"})
        assert verdict == Verdict(True), verdict
        query, positive, negative = to_example_fields("short-long", obj)
        assert (query, positive, negative) == (
            obj["user_query"].strip(),
            obj["positive_document"].strip(),
            obj["hard_negative_document"].strip(),
        )
        # the same reply as chat models wrap it parses to the same object
        assert parse_json_object(f"Here is the example you asked for:\n```json\n{line}\n```\nLet me know!") == obj
        pretty = json.dumps(obj, indent=2, ensure_ascii=False)
        assert parse_json_object(pretty.replace('"\n}', '",\n}')) == obj  # with a trailing comma
        # the real English triplet fails when German was asked for
        assert validate_example("short-long", obj, {"language": "German"}).reason == "wrong_language"


def test_real_task_lists_parse(shared_data):
    folder = shared_data / "synthetic_samples"
    brainstormed = (folder / "camel" / "task_generation_examples.extracted.txt").read_text(encoding="utf-8")
    expected = [line.strip() for line in brainstormed.splitlines() if line.strip()]
    assert parse_task_list(brainstormed) == expected and len(expected) == 6
    assert parse_task_list(json.dumps(expected)) == expected
    assert parse_task_list("```json\n" + json.dumps(expected, indent=4) + "\n```") == expected
    for name in ("short-long.txt", "long-long.txt"):
        text = (folder / "seed_tasks" / name).read_text(encoding="utf-8")
        lines = list(dict.fromkeys(" ".join(line.split()) for line in text.splitlines() if line.strip()))
        assert parse_task_list(text) == lines
        assert len(lines) > 30
        numbered = "\n".join(f"{i}. {line}" for i, line in enumerate(lines, start=1))
        assert parse_task_list("Here are the tasks:\n" + numbered) == lines
        python_style = "[" + ", ".join("'" + line.replace("'", "\\'") + "'" for line in lines) + ",]"
        assert parse_task_list(python_style) == lines


# --- JSON objects ---------------------------------------------------------------------------------------------------

OBJ = {"S1": "Der Hund schläft.", "S2": "Der Hund ruht sich aus.", "S3": "Die Katze jagt eine Maus."}


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(OBJ, ensure_ascii=False),
        "```json\n" + json.dumps(OBJ, ensure_ascii=False, indent=2) + "\n```",
        "```\n" + json.dumps(OBJ, ensure_ascii=False) + "\n```",
        "Sure! Here is one example:\n" + json.dumps(OBJ, ensure_ascii=False) + "\nI hope this helps.",
        '{"S1": "Der Hund schläft.", "S2": "Der Hund ruht sich aus.", "S3": "Die Katze jagt eine Maus.",}',
        "{\n  \u201cS1\u201d: \u201cDer Hund schläft.\u201d,\n  \u201cS2\u201d: \u201cDer Hund ruht sich aus.\u201d,\n"
        "  \u201cS3\u201d: \u201cDie Katze jagt eine Maus.\u201d\n}",
        "{'S1': 'Der Hund schläft.', 'S2': 'Der Hund ruht sich aus.', 'S3': 'Die Katze jagt eine Maus.'}",
        "[" + json.dumps(OBJ, ensure_ascii=False) + "]",
        "```json\n" + json.dumps(OBJ, ensure_ascii=False),  # closing fence cut off, object complete
    ],
    ids=[
        "plain",
        "fenced-json",
        "fenced",
        "prose",
        "trailing-comma",
        "smart-quotes",
        "single-quotes",
        "wrapped",
        "open-fence",
    ],
)
def test_json_object_forms(reply):
    assert parse_json_object(reply) == OBJ


def test_repairs_keep_content_intact():
    # curly quotes inside a value, an unescaped inner quote, a raw newline, an apostrophe in a single-quoted string
    reply = '{\u201cS1\u201d: \u201eEr sagte \u201eJa\u201c.\u201c, "S2": "He said "yes" loudly", "S3": "two\nlines",}'
    assert parse_json_object(reply) == {
        "S1": "Er sagte \u201eJa\u201c.",
        "S2": 'He said "yes" loudly',
        "S3": "two\nlines",
    }
    assert parse_json_object("{'label': 'children's books', 'n': 3}") == {"label": "children's books", "n": 3}
    assert repair_json('{"a": [1, 2,], }') == '{"a": [1, 2] }'
    valid = json.dumps({"a": 'x", "y', "b": "{}[],:"})
    assert parse_json_object(valid) == json.loads(valid)  # valid JSON is never "repaired"


def test_round_trip_of_awkward_strings():
    """Random objects full of quotes, braces, newlines and non-Latin text survive dumping, wrapping and parsing."""
    rng = random.Random(0)
    alphabet = list("abc XYZ \"'{}[],:\\\n\t") + ["\u201c", "\u201d", "é", "Ж", "中", "\u2019", "🙂"]
    for _ in range(200):
        obj = {
            f"k{i}": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for i in range(rng.randint(1, 4))
        }
        text = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
        wrapped = rng.choice(["{}", "```json\n{}\n```", "Here you go:\n{}\nDone.", "```\n{}\n```"]).replace("{}", text)
        assert parse_json_object(wrapped) == obj


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('{"S1": "Der Hund", "S2": "Die Ka', "invalid_json"),  # truncated inside a string
        ('{"S1": "a", "S2": {"x": "b"}', "invalid_json"),  # truncated: the complete inner object must not be taken
        ('```json\n{"input": "a", "positive_document": "b"', "invalid_json"),
        ("I'm sorry, I can't help with that.", "invalid_json"),
        ("", "empty"),
        ("   \n", "empty"),
        ('["a", "b"]', "not_an_object"),
        ("42", "not_an_object"),
    ],
)
def test_json_object_failures(reply, reason):
    with pytest.raises(ParseError) as info:
        parse_json_object(reply)
    assert info.value.reason == reason and reason in REASONS
    assert isinstance(info.value, ValueError)


def test_nothing_is_evaluated(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("model output must never be evaluated")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(ast, "literal_eval", forbidden)
    assert parse_task_list("['a task here', 'another task here']") == ["a task here", "another task here"]
    assert parse_json_object("{'a': 'b',}") == {"a": "b"}
    with pytest.raises(ParseError):
        parse_json_object("{'a': __import__('os').getcwd()}")


# --- task lists -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        '["Given a claim, find evidence.", "Classify a review by sentiment."]',
        'Here are some tasks:\n```json\n[\n  "Given a claim, find evidence.",\n  "Classify a review by sentiment.",\n]\n```',
        "```python\n['Given a claim, find evidence.', 'Classify a review by sentiment.']\n```",
        '{"tasks": ["Given a claim, find evidence.", "Classify a review by sentiment."]}',
        '[{"task": "Given a claim, find evidence."}, {"task": "Classify a review by sentiment."}]',
        "1. Given a claim, find evidence.\n2) Classify a review by sentiment.",
        "Tasks:\n- **Given a claim, find evidence.**\n* Classify a review by sentiment.",
        '["Given a claim,   find evidence.", "Given a claim, find evidence.", "Classify a review by sentiment.", ""]',
        "[\u201cGiven a claim, find evidence.\u201d, \u201cClassify a review by sentiment.\u201d]",
        'Here are [2] tasks, see [1]:\n["Given a claim, find evidence.", "Classify a review by sentiment."]',
    ],
    ids=[
        "json",
        "fenced-trailing-comma",
        "python",
        "object",
        "objects",
        "numbered",
        "bulleted",
        "duplicates",
        "smart-quotes",
        "brackets-in-prose",
    ],  # fmt: skip
)
def test_task_list_forms(reply):
    assert parse_task_list(reply) == ["Given a claim, find evidence.", "Classify a review by sentiment."]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('["Given a claim, find evidence.", "Classify a rev', "invalid_json"),  # truncated: no guessing from lines
        ('```json\n[\n  "Given a claim, find evidence.",\n  "Classify a rev', "invalid_json"),
        ("Sorry, I cannot do that.", "not_a_list"),
        ("[1, 2, 3]", "not_a_list"),
        ("", "empty"),
        ('["", "  "]', "empty"),
    ],
)
def test_task_list_failures(reply, reason):
    with pytest.raises(ParseError) as info:
        parse_task_list(reply)
    assert info.value.reason == reason


# --- validation -------------------------------------------------------------------------------------------------------


def _words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


@pytest.mark.parametrize(
    ("task_type", "obj", "placeholders", "reason"),
    [
        ("sts", {"S1": "a", "S2": "b"}, {}, "missing_field"),
        ("sts", {"S1": "a", "S2": "  ", "S3": "c"}, {}, "empty_field"),
        ("sts", {"S1": "a", "S2": ["b"], "S3": "c"}, {}, "wrong_type"),
        ("sts", {"S1": "The cat", "S2": "the  CAT", "S3": "c"}, {}, "identical_texts"),
        ("long-short", {"input_text": "t", "label": "Sport", "misleading_label": "sport"}, {}, "identical_texts"),
        ("long-long", {"input": _words(100, "alpha"), "positive_document": _words(400, "beta")}, {}, "too_short"),
        ("long-long", {"input": _words(400, "alpha"), "positive_document": _words(140, "beta")}, {}, "too_short"),
        (
            "short-long",
            {"user_query": "q", "positive_document": _words(40), "hard_negative_document": "n"},
            {"num_words": "500"},
            "too_short",
        ),  # fmt: skip
        (
            "short-long",
            {"user_query": _words(30), "positive_document": "p", "hard_negative_document": "n"},
            {"query_length": "less than 5 words"},
            "too_long",
        ),  # fmt: skip
        (
            "long-short",
            {"input_text": _words(50), "label": "a", "misleading_label": "b"},
            {"num_words": "less than 10"},
            "too_long",
        ),  # fmt: skip
        (
            "long-short",
            {"input_text": _words(20), "label": "a", "misleading_label": "b"},
            {"num_words": "at least 200"},
            "too_short",
        ),  # fmt: skip
    ],
)
def test_rejection_reasons(task_type, obj, placeholders, reason):
    verdict = validate_example(task_type, obj, placeholders)
    assert not verdict.ok and verdict.reason == reason and verdict.detail
    assert reason in REASONS


def test_acceptance_and_tolerances():
    assert validate_example("long-long", {"input": _words(300, "alpha"), "positive_document": _words(310, "beta")}).ok
    # within a factor two of the asked length: models count words loosely
    assert validate_example("long-long", {"input": _words(160, "alpha"), "positive_document": _words(400, "beta")}).ok
    ok = {"user_query": "rain in Oslo tomorrow", "positive_document": _words(300), "hard_negative_document": "n"}
    assert validate_example("short-long", ok, {"num_words": "500", "query_length": "less than 5 words"}).ok
    # extra keys are ignored, a numeric label counts as text
    assert validate_example("long-short", {"input_text": "t", "label": 4, "misleading_label": 1, "note": "x"}).ok
    assert to_example_fields("long-short", {"input_text": "t", "label": 4, "misleading_label": 1}) == ("t", "4", "1")
    assert to_example_fields("short-short", {"input": " a ", "positive_document": "b"}) == ("a", "b", None)
    assert to_example_fields("bitext", {"S1": "a", "S2": "b", "S3": "c"}) == ("a", "b", "c")
    assert validate_example("sts", ["not", "a", "dict"]).reason == "not_an_object"


# --- language -------------------------------------------------------------------------------------------------------


def _flores(shared_data, code: str, n: int = 60) -> list[str]:
    path = shared_data / "multilingual" / "flores200" / "devtest" / f"{code}.devtest"
    return path.read_text(encoding="utf-8").splitlines()[:n]


def test_language_check_on_real_sentences(shared_data):
    sentences = {lang: _flores(shared_data, code) for lang, code in
                 [("German", "deu_Latn"), ("French", "fra_Latn"), ("Russian", "rus_Cyrl"), ("English", "eng_Latn")]}  # fmt: skip
    for language, lines in sentences.items():
        assert all(check_language(line, language) for line in lines), language  # no false rejections
        for other in sentences:
            if other != language:
                caught = sum(not check_language(line, other) for line in lines) / len(lines)
                assert caught > 0.9, (language, other, caught)
    assert detect_language(sentences["Russian"][0])[0] == "ru"
    # undetectable languages and fragments are not judged
    assert check_language(sentences["German"][0], "Yiddish")
    assert check_language("Ja, gut.", "French")
    # close languages answering for each other are not a wrong language
    assert check_language("Ini adalah kalimat dalam bahasa Indonesia yang cukup panjang untuk diuji.", "Malay")


def test_wrong_language_outputs_are_caught(shared_data):
    de, fr, en = (
        _flores(shared_data, "deu_Latn", 3),
        _flores(shared_data, "fra_Latn", 3),
        _flores(shared_data, "eng_Latn", 3),
    )
    sts = {"S1": de[0], "S2": de[1], "S3": de[2]}
    assert validate_example("sts", sts, {"language": "German"}).ok
    verdict = validate_example("sts", sts, {"language": "French"})
    assert verdict.reason == "wrong_language" and "S1" in verdict.detail
    bitext = {"S1": en[0], "S2": de[0], "S3": de[1]}
    assert validate_example("bitext", bitext, {"src_lang": "English", "tgt_lang": "German", "language": "English"}).ok
    verdict = validate_example("bitext", {**bitext, "S3": fr[1]}, {"src_lang": "English", "tgt_lang": "German"})
    assert verdict.reason == "wrong_language" and "S3" in verdict.detail
    swapped = validate_example("bitext", bitext, {"src_lang": "German", "tgt_lang": "English"})
    assert swapped.reason == "wrong_language"
