"""What notebook 01 shows of the prompts: reproducible prompt hashes, replies judged as the pipeline judges them, and the
numbers it records."""

from __future__ import annotations

import json
from collections import Counter

from synthembed.generation.llm import ChatResponse, LLMError
from synthembed.generation.preview import judge_reply, prompt_hashes, prompts_summary
from synthembed.generation.prompts import brainstorm_prompt, generation_prompt
from synthembed.languages import language_weights
from synthembed.taskgroups import ASYMMETRIC_TASK_TYPES, TASK_TYPES

TASKS = dict.fromkeys(ASYMMETRIC_TASK_TYPES, "Given a question, retrieve documents that answer it.")
PLACEHOLDERS = {"high_score": "4", "low_score": "2.5", "unit": "sentence", "difficulty": "college", "language": "English"}


def test_prompt_hashes_are_reproducible():
    first = prompt_hashes(7, TASKS)
    assert len(first) == len(ASYMMETRIC_TASK_TYPES) + len(TASK_TYPES)
    assert first == prompt_hashes(7, TASKS) and first != prompt_hashes(8, TASKS)


def test_replies_are_judged_as_the_pipeline_does():
    brainstorm = brainstorm_prompt("short-long")
    sts = generation_prompt("sts", None, PLACEHOLDERS)
    good = {"S1": "The cat sat on the mat all day.", "S2": "All day the cat sat on the mat.",
            "S3": "Dogs bark loudly at passing cars."}
    rows = [
        judge_reply(brainstorm, ChatResponse('["Given a claim, retrieve evidence.", "Given a word, find synonyms."]')),
        judge_reply(sts, ChatResponse(json.dumps(good))),
        judge_reply(sts, ChatResponse(json.dumps({**good, "S2": good["S1"]}))),
        judge_reply(sts, ChatResponse(None, refusal="No.")),
        judge_reply(sts, ChatResponse('{"S1": "a", "S2"')),
        judge_reply(sts, LLMError("gave up", "rate_limit")),
        judge_reply(brainstorm, None),
    ]
    assert [row["verdict"].split(":")[0] for row in rows] == [
        "ok", "ok", "identical_texts", "refusal", "invalid_json", "rate_limit", "no answer"]
    assert rows[0]["parsed"].startswith("2 tasks") and rows[1]["parsed"]["S3"] == good["S3"]
    assert rows[1]["stage"] == "generate" and rows[1]["task group"] == "sts" and rows[0]["stage"] == "brainstorm"


def test_prompts_summary_has_the_keys_notebook_01_records():
    weights = language_weights()
    draws = Counter({"English": 431, "German": 569})
    rows = [{"verdict": "ok"}, {"verdict": "refusal"}, {"verdict": "ok"}]
    summary = prompts_summary(weights, draws, True, rows, 0.0012, True)
    assert summary == {
        "task_types": list(TASK_TYPES), "n_languages": 93, "english_weight": weights["English"],
        "english_sampled_share": 0.431, "same_seed_same_prompts": True, "live_requests": 3, "live_parsed_ok": 2,
        "live_cost_usd": 0.0012, "stand_in": True,
    }
