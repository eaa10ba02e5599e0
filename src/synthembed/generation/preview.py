"""A look at the prompts before a run (notebook 01): the same seed gives the same prompts, a few prompts sent to the LLM
are judged as the pipeline judges them, and the numbers the notebook records.

    from synthembed.generation.preview import judge_reply, prompt_hashes, prompts_summary
    prompt_hashes(0, {"short-long": "Given a question, retrieve answers.", ...}) == prompt_hashes(0, {...})   # True
    rows = [judge_reply(prompt, reply) for prompt, reply in zip(prompts, client.run(requests))]
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from ..taskgroups import ASYMMETRIC_TASK_TYPES, TASK_TYPES
from .llm import ChatResponse
from .parsing import ParseError, judge, parse_task_list, reply_problem
from .prompts import Prompt, brainstorm_prompt, generation_prompt, sample_placeholders


def prompt_hashes(seed: int, tasks: Mapping[str, str]) -> list[str]:
    """sha256 of every prompt one draw from Random(seed) gives: a brainstorm prompt per asymmetric group, then a
    generation prompt per group (`tasks[group]` is the task definition of an asymmetric group).

    >>> tasks = dict.fromkeys(ASYMMETRIC_TASK_TYPES, "Given a question, retrieve answers.")
    >>> prompt_hashes(3, tasks) == prompt_hashes(3, tasks) != prompt_hashes(4, tasks)
    True
    """
    rng = random.Random(seed)
    hashes = [brainstorm_prompt(t, rng).sha256() for t in ASYMMETRIC_TASK_TYPES]
    return hashes + [generation_prompt(t, tasks.get(t), sample_placeholders(t, rng)).sha256() for t in TASK_TYPES]


def judge_reply(prompt: Prompt, reply: Any) -> dict[str, Any]:
    """One table row for a prompt's reply, judged as the pipeline would: stage, task group, language, verdict ("ok", or
    why not) and what was parsed.

    >>> judge_reply(brainstorm_prompt("long-long"), ChatResponse('["Given an essay, retrieve essays."]'))["verdict"]
    'ok'
    """
    row: dict[str, Any] = {"stage": prompt.stage, "task group": prompt.task_type, "language": prompt.language}
    if not isinstance(reply, ChatResponse):  # an LLMError after retries, or None where the budget stopped the run
        return {**row, "verdict": getattr(reply, "kind", "no answer"), "parsed": str(reply)[:80]}
    shown = (reply.text or reply.refusal or "")[:80]
    problem = reply_problem(reply.text, reply.finish_reason, reply.refusal)
    if problem is not None:
        return {**row, "verdict": problem[0], "parsed": shown}
    if prompt.stage == "brainstorm":
        try:
            tasks = parse_task_list(reply.text)
        except ParseError as err:
            return {**row, "verdict": err.reason, "parsed": shown}
        return {**row, "verdict": "ok", "parsed": f"{len(tasks)} tasks, e.g. {tasks[0]!r}"}
    judged = judge(prompt.task_type, reply.text, reply.finish_reason, reply.refusal, prompt.placeholders)
    if judged[0] == "reject":
        return {**row, "verdict": f"{judged[1]}: {judged[2]}", "parsed": shown}
    return {**row, "verdict": "ok", "parsed": {k: str(v)[:60] for k, v in judged[1].items()}}


def prompts_summary(weights: Mapping[str, float], draws: Mapping[str, int], same_seed_same_prompts: bool,
                    rows: list[dict[str, Any]], cost_usd: float, stand_in: bool) -> dict[str, Any]:
    """The numbers notebook 01 records: the groups, the language weights and a sample drawn with them, whether the
    same seed gave the same prompts, and how the live replies (`rows` of judge_reply) fared.

    >>> prompts_summary({"English": 0.5, "German": 0.5}, {"English": 3, "German": 1}, True, [], 0.0, True)["english_sampled_share"]
    0.75
    """
    return {
        "task_types": list(TASK_TYPES),
        "n_languages": len(weights),
        "english_weight": weights["English"],
        "english_sampled_share": draws.get("English", 0) / max(1, sum(draws.values())),
        "same_seed_same_prompts": bool(same_seed_same_prompts),
        "live_requests": len(rows),
        "live_parsed_ok": sum(1 for row in rows if row["verdict"] == "ok"),
        "live_cost_usd": cost_usd,
        "stand_in": bool(stand_in),
    }
