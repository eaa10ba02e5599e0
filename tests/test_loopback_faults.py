"""The loopback stand-in: it answers every group and language with the right JSON, and each scripted fault (429 with
Retry-After, 500, a hung request, malformed JSON, fenced JSON, a truncated reply, a refusal, the wrong language) is
survived by the pipeline, loses nothing, and is counted in stats.json."""

from __future__ import annotations

import json
import random
import string

import openai
import pytest

from synthembed.generation.parsing import check_language, parse_json_object, parse_task_list, validate_example
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.generation.prompts import brainstorm_prompt, generation_prompt, sample_placeholders
from synthembed.taskgroups import MARKER_HEADER, TASK_GROUP, TASK_TYPES
from synthembed.testing.loopback import Faults, LoopbackServer
from synthembed.testing.scripted import TextSource, _any_group, read_request

LANGUAGES = "English,German,French,Japanese"
CONFIG = dict(model="loopback", tasks_per_type=1, examples_per_task=3, languages=LANGUAGES, seed=1)


def _run(out, server, **kwargs):
    return generate(out, GenerateConfig(**CONFIG), base_url=server.base_url, concurrency=8, backoff=0.01,
                    progress=False, **kwargs)


def _examples(out):
    return {e["id"]: e for e in map(json.loads, (out / "examples.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("baseline") / "run"
    with LoopbackServer() as server:
        stats = _run(out, server)
    return out, stats


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OPENAI_API_KEY", raising=False)
        mp.delenv("OPENAI_BASE_URL", raising=False)
        yield mp


def test_baseline_answers_every_group_in_its_language(baseline):
    out, stats = baseline
    planned = stats["requests"]["generate_planned"]
    assert planned == len(TASK_TYPES) * 3
    assert stats["accepted"] == planned and stats["rejected"] == 0  # a fault-free stand-in passes validation
    assert all(row["accepted"] == 3 for row in stats["by_task_type"].values())
    for e in _examples(out).values():
        assert set(e["fields"]) == set(TASK_GROUP[e["task_type"]].fields)
    assert stats["tokens"]["total"] > 0 and stats["cost_usd"] > 0 and stats["llm"]["stand_in"]


@pytest.mark.parametrize("data_dir", ["shared", "none"])
def test_text_in_the_requested_language_with_and_without_shared_data(data_dir, tmp_path):
    texts = TextSource(None if data_dir == "shared" else tmp_path)  # an empty folder: the built-in word lists
    rng = random.Random(0)
    for language in ("English", "German", "French", "Spanish", "Russian", "Japanese", "Chinese", "Arabic", "Polish"):
        text = texts.text(language, 40, rng)
        assert check_language(text, language), (language, text[:80])


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_scripted_answers_have_the_groups_fields(task_type):
    rng = random.Random(3)
    with LoopbackServer() as server:
        client = openai.OpenAI(api_key="unused", base_url=server.base_url, max_retries=0)
        if task_type in ("short-long", "long-short", "short-short", "long-long"):
            prompt = brainstorm_prompt(task_type, rng)
            asked = read_request(prompt.marker, prompt.text)
            assert (asked.kind, asked.task_type) == ("brainstorm", task_type)
            reply = client.chat.completions.create(model="loopback", messages=prompt.messages,
                                                   extra_headers={MARKER_HEADER: prompt.marker})
            assert len(parse_task_list(reply.choices[0].message.content)) >= 10
        placeholders = sample_placeholders(task_type, rng, ["English", "German", "French"])
        prompt = generation_prompt(task_type, None if task_type in ("sts", "bitext") else "Given a query, retrieve documents.", placeholders)
        assert read_request(prompt.marker, prompt.text).task_type == task_type
        reply = client.chat.completions.create(model="loopback", messages=prompt.messages,
                                               extra_headers={MARKER_HEADER: prompt.marker})
        obj = parse_json_object(reply.choices[0].message.content)
        assert validate_example(task_type, obj, prompt.placeholders).ok
        assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_rewording_the_templates_does_not_break_the_stand_in(tmp_path, monkeypatch_module, monkeypatch):
    """The stand-in reads the marker that the prompt builder sets, not the wording: templates that name no field, no
    group and no language still get answers with the group's fields, lengths and languages."""
    from synthembed.generation import prompts

    reworded = {"brainstorm": string.Template("Reworded: a few ideas, please, like these.\n$examples"),
                "generate": string.Template("Reworded: one more item, please. $task")}
    monkeypatch.setattr(prompts, "_template", lambda name: reworded[name.split("_")[0]])
    prompt = generation_prompt("bitext", None, sample_placeholders("bitext", random.Random(0), ["English", "German"]))
    assert "S1" not in prompt.text and "German" not in prompt.text and "English" not in prompt.text
    with LoopbackServer() as server:
        stats = _run(tmp_path / "run", server)
    assert stats["requests"]["generate_planned"] == len(TASK_TYPES) * 3
    assert stats["accepted"] == stats["requests"]["generate_planned"] and stats["rejected"] == 0
    for e in _examples(tmp_path / "run").values():
        assert set(e["fields"]) == set(TASK_GROUP[e["task_type"]].fields)
    assert server.served["chat"] == 0  # every request was recognized from its marker


def test_a_request_without_a_marker_is_a_plain_chat():
    asked = read_request(None, "Say something in German, please.")
    assert asked.kind == "chat" and asked.languages == ("German",)
    assert read_request("not json", "hi").kind == "chat"
    assert read_request('{"stage": "generate", "task_type": "medium-medium"}').kind == "chat"


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_the_fallback_composer_answers_any_group(task_type):
    """A group without a composer of its own still gets valid examples: each field in its language, within its rules."""
    rng = random.Random(4)
    texts = TextSource()
    for _ in range(5):
        placeholders = sample_placeholders(task_type, rng, ["English", "German", "French"])
        obj = _any_group(TASK_GROUP[task_type], texts, rng, placeholders)
        verdict = validate_example(task_type, obj, placeholders)
        assert verdict.ok, (verdict, placeholders)


@pytest.mark.parametrize("fault", ["rate_limit", "server_error", "hang"])
def test_transport_faults_are_retried_and_lose_nothing(fault, baseline, tmp_path):
    out_base, base_stats = baseline
    faults = Faults(**{fault: 1.0}, retry_after=0.05, hang_seconds=3.0)
    with LoopbackServer(faults=faults) as server:
        stats = _run(tmp_path / "run", server, timeout=0.5)
    # every distinct request faulted once, on its first attempt
    assert server.served[fault] == stats["requests"]["brainstorm"] + stats["requests"]["generate_answered"] > 0
    kind = {"rate_limit": "rate_limit", "server_error": "server_error", "hang": "timeout"}[fault]
    assert stats["faults"]["http_retries"][kind] == server.served[fault]
    assert stats["faults"]["failed_requests"] == {}
    assert _examples(tmp_path / "run") == _examples(out_base)  # every request answered on retry: nothing lost


@pytest.mark.parametrize("fault,reason", [("malformed", "invalid_json"), ("truncated", "truncated"),
                                          ("refusal", "refusal"), ("wrong_language", "wrong_language")])
def test_content_faults_are_rejected_and_counted(fault, reason, baseline, tmp_path):
    out_base, base_stats = baseline
    with LoopbackServer(faults=Faults(**{fault: 0.5}, brainstorm=False)) as server:
        stats = _run(tmp_path / "run", server)
    faulted = server.served[fault]
    assert faulted > 0
    rejected = stats["rejections"].get(reason, 0)
    if fault == "wrong_language":
        # a short text (a label, a 3-word query) can slip past the detector; most are caught
        assert rejected >= 0.6 * faulted
    else:
        assert rejected == faulted == stats["faults"][reason]
    assert stats["accepted"] + stats["rejected"] == base_stats["requests"]["generate_planned"]
    accepted, reference = _examples(tmp_path / "run"), _examples(out_base)
    assert accepted and all(reference[i] == e for i, e in accepted.items())  # the unfaulted answers, unchanged
    rejects = [json.loads(line) for line in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert all(r["response"] is not None and r["reason"] for r in rejects)


def test_fenced_json_is_accepted_and_counted(baseline, tmp_path):
    out_base, base_stats = baseline
    with LoopbackServer(faults=Faults(fenced=1.0)) as server:
        stats = _run(tmp_path / "run", server)
    assert _examples(tmp_path / "run").keys() == _examples(out_base).keys()
    assert stats["faults"]["fenced_json"] == server.served["fenced"] - server.served["brainstorm"] > 0


def test_faulty_brainstorms_are_replaced_by_later_rounds(tmp_path, monkeypatch_module):
    # Every fault at once on brainstorms too: groups still get their tasks from later rounds.
    with LoopbackServer(faults=Faults.uniform(0.1, hang_seconds=3.0), seed=5) as server:
        stats = _run(tmp_path / "run", server, timeout=0.5)
    assert stats["complete"]
    assert all(row["tasks"] >= 1 for row in stats["by_task_type"].values())
    assert sum(stats["rejections"].values()) == stats["rejected"] and stats["accepted"] > 0
    for fault, reason in (("malformed", "invalid_json"), ("truncated", "truncated"), ("refusal", "refusal")):
        counted = stats["rejections"].get(reason, 0) + stats["brainstorm_rejections"].get(reason, 0)
        assert counted == server.served[fault], fault
    assert sum(server.served[f] for f in ("malformed", "truncated", "refusal")) > 0
