"""The statistics of a generation run (stats.json): counts by task group, language and rejection reason, faults, tokens
and cost, and their plain-text summary (shown by `synthembed stats RUN`, commands.py).

    from synthembed.generation.stats import format_stats, generation_summary, load_stats
    print(format_stats(load_stats("runs/gen")))
    generation_summary("runs/gen")      # the key numbers notebook 02 records
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from ..data import iter_jsonl
from ..taskgroups import STAND_IN_FINGERPRINT
from . import rundir
from .cache import ResponseCache
from .cost import cost_usd, price_of
from .llm import LLMClient
from .plan import GenerateConfig, all_brainstorm_plans, iter_generation_plan

STAND_IN_NOTE = (
    "The LLM of this run is the loopback stand-in server: scripted responses composed from word lists and Tatoeba "
    "sentences, not text written by a language model. The numbers show that the pipeline works, not what an LLM would write."
)


def _plan_totals(config: GenerateConfig, tasks: Mapping[str, Sequence[str]], cache: ResponseCache,
                 prices: dict[str, tuple[float, float]], done: set[str]) -> dict[str, Any]:
    """One pass over the run's plan, planned a request at a time (never held whole): tokens, cost and answered requests
    of every session from the cache rows of its requests; generation requests per group and per model, and those with
    neither an example nor a reject (`done` holds the request ids that have one)."""
    totals: dict[str, Any] = {"prompt": 0, "completion": 0, "cost": 0.0, "unpriced": set(), "fingerprints": set(),
                              "brainstorm": 0, "generate": 0, "planned": 0, "pending": 0,
                              "by_type": Counter(), "by_model": Counter()}  # fmt: skip
    for planned in chain(all_brainstorm_plans(config), iter_generation_plan(config, tasks)):
        if planned.stage == "generate":
            totals["planned"] += 1
            totals["pending"] += planned.request_id not in done
            totals["by_type"][planned.task_type] += 1
            totals["by_model"][planned.request.model] += 1
        hit = cache.get(planned.request)
        if hit is None:
            continue
        model = hit.model or planned.request.model
        totals["fingerprints"].add(hit.system_fingerprint or "")
        totals[planned.stage] += 1
        totals["prompt"] += hit.prompt_tokens
        totals["completion"] += hit.completion_tokens
        totals["cost"] += cost_usd(model, hit.prompt_tokens, hit.completion_tokens, prices)
        if price_of(model, prices) is None:
            totals["unpriced"].add(model)
    return totals


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a run's JSONL file one at a time (a half-written last line dropped first)."""
    rundir.truncate_partial_line(path)
    if path.is_file():
        yield from (obj for _, obj in iter_jsonl(path))


def _file_counts(out: Path, config: GenerateConfig) -> dict[str, Any]:
    """Counts from examples.jsonl and rejects.jsonl, read a line at a time (a run's files are never held whole)."""
    counts: dict[str, Any] = {"accepted": 0, "rejected": 0, "done": set(), "fenced": 0}
    for name in ("by_type", "by_model", "by_language", "bitext", "reasons", "brainstorm_reasons", "rejected_by_type"):
        counts[name] = Counter()
    for e in _records(out / rundir.EXAMPLES_FILE):
        request_id = e["meta"].get("request_id")
        counts["accepted"] += 1
        counts["done"].add(request_id)
        counts["by_type"][e["task_type"]] += 1
        counts["by_language"][e["language"]] += 1
        counts["fenced"] += bool(e["meta"].get("fenced"))
        if request_id is not None:  # the model it was asked of: a draw from its id alone (plan.py)
            counts["by_model"][config.generation_model(request_id)] += 1
        if e["task_type"] == "bitext":
            placeholders = e["meta"]["placeholders"]
            counts["bitext"][f"{placeholders.get('src_lang')}-{placeholders.get('tgt_lang')}"] += 1
    for r in _records(out / rundir.REJECTS_FILE):
        counts["done"].add(r["request_id"])
        counts["fenced"] += bool(r.get("fenced"))
        if r["stage"] == "generate":
            counts["rejected"] += 1
            counts["reasons"][r["reason"]] += 1
            counts["rejected_by_type"][r["task_type"]] += 1
        else:
            counts["brainstorm_reasons"][r["reason"]] += 1
    return counts


def _by_task_type(config: GenerateConfig, plan: dict[str, Any], files: dict[str, Any],
                  tasks: list[dict]) -> dict[str, dict[str, int]]:
    """tasks, requests, accepted and rejected per group of the run."""
    rows = {t: {"tasks": 0, "requests": plan["by_type"][t], "accepted": files["by_type"][t],
                "rejected": files["rejected_by_type"][t]} for t in config.task_types}
    for row in tasks:
        rows[row["task_type"]]["tasks"] += 1
    for t in rows:
        if t not in config.brainstorm_groups:
            rows[t]["tasks"] = 1  # one fixed instruction
    return rows


def _faults(previous: dict[str, Any], client: LLMClient, files: dict[str, Any]) -> dict[str, Any]:
    """Retries and failures over every session, and the content faults found in the replies."""
    http = Counter(previous.get("faults", {}).get("http_retries", {}))
    http.update(client.usage.retries)
    failed = Counter(previous.get("faults", {}).get("failed_requests", {}))
    failed.update(client.usage.failures)
    reasons = files["reasons"] + files["brainstorm_reasons"]
    return {
        "http_retries": dict(sorted(http.items())),
        "failed_requests": dict(sorted(failed.items())),
        "fenced_json": files["fenced"],
        **{reason: reasons[reason] for reason in ("refusal", "truncated", "invalid_json", "wrong_language")},
    }


def compute_stats(out: Path, config: GenerateConfig, tasks: Mapping[str, Sequence[str]], cache: ResponseCache,
                  prices: dict[str, tuple[float, float]], runtime: dict[str, Any], client: LLMClient,
                  previous: dict[str, Any], timing: dict[str, float],
                  unanswered: dict[str, int] | None = None) -> dict[str, Any]:
    """stats.json: counts from the files, tokens and cost from the cache rows of every planned request (the plan of
    `tasks`, the task definitions generation used). `unanswered`: per brainstorm group, its requests this session got
    no answer to; such a group's generation requests wait. Files and plan are read a record at a time."""
    unanswered = unanswered or {}
    files = _file_counts(out, config)
    plan = _plan_totals(config, tasks, cache, prices, files["done"])
    accepted, rejected = files["accepted"], files["rejected"]
    waiting = sum(n for t, n in config.planned_requests().items() if t in unanswered)
    # The stand-in signs its answers; a model named "loopback" is the stand-in too (whatever served it).
    stand_in = (bool(runtime.get("stand_in")) or config.model.startswith("loopback")
                or STAND_IN_FINGERPRINT in plan["fingerprints"])
    generation_reasons = files["reasons"]
    return {
        "note": STAND_IN_NOTE if stand_in else "",
        "llm": {"backend": runtime["backend"], "model": config.model, "base_url": runtime.get("base_url"),
                "stand_in": stand_in, "workers": runtime.get("workers")},
        "config": config.as_dict(),
        # Complete: every planned request has an answer or a verdict (a rerun of an incomplete run retries the rest).
        "complete": plan["pending"] == 0 and not unanswered,
        "stopped": client.stopped,
        "max_cost": runtime.get("max_cost"),
        "requests": {"brainstorm": plan["brainstorm"], "generate_planned": plan["planned"],
                     "generate_answered": plan["generate"], "pending": plan["pending"],
                     "brainstorm_unanswered": sum(unanswered.values()), "waiting_for_tasks": waiting,
                     "groups_waiting_for_tasks": sorted(unanswered)},
        "accepted": accepted,
        "rejected": rejected,
        "acceptance_rate": round(accepted / max(1, accepted + rejected), 4),
        "by_task_type": _by_task_type(config, plan, files, rundir.read_tasks(out)),
        "by_model": {m: {"requests": n, "accepted": files["by_model"][m]} for m, n in plan["by_model"].items()},
        "by_language": dict(files["by_language"].most_common()),
        "bitext_pairs": dict(files["bitext"].most_common()),
        "rejections": dict(generation_reasons.most_common()),
        "brainstorm_rejections": dict(files["brainstorm_reasons"].most_common()),
        "duplicates": {"exact": generation_reasons["duplicate"], "near": generation_reasons["near_duplicate"]},
        "faults": _faults(previous, client, files),
        "tokens": {"prompt": plan["prompt"], "completion": plan["completion"],
                   "total": plan["prompt"] + plan["completion"]},
        "cost_usd": round(plan["cost"], 6),
        "cost_is_hypothetical": stand_in,
        "unpriced_models": sorted(plan["unpriced"]),
        "price_usd_per_1m_tokens": dict(zip(("input", "output"), price_of(config.model, prices) or (None, None), strict=True)),
        "session": {**client.usage.as_dict(), **timing},
        "sessions": int(previous.get("sessions", 0)) + 1,
    }


def summary_line(stats: dict[str, Any]) -> str:
    """One line for the end of `synthembed generate`: state, counts, tokens and cost."""
    state = "complete" if stats.get("complete") else ("stopped at the cost budget" if stats.get("stopped") else "incomplete")
    line = (f"[generate] {state}: {stats['accepted']} accepted, {stats['rejected']} rejected, "
            f"{stats['tokens']['total']} tokens, ${stats['cost_usd']:.4f}")
    if stats.get("llm", {}).get("stand_in"):
        line += " (loopback stand-in LLM: hypothetical cost)"
    missing = missing_requests(stats)
    if missing:
        line += f"; {missing}"
    return line


def missing_requests(stats: dict[str, Any]) -> str:
    """What an incomplete run still lacks, in words ("" for a complete run).

    >>> missing_requests({"complete": False, "requests": {"pending": 3, "brainstorm_unanswered": 1,
    ...                   "waiting_for_tasks": 8, "groups_waiting_for_tasks": ["long-long"]}})
    '3 generation requests without an answer; 1 brainstorm request without an answer, so 8 generation requests of long-long wait for their tasks'
    """
    if stats.get("complete"):
        return ""
    requests = stats.get("requests", {})
    parts = []
    if requests.get("pending"):
        parts.append(f"{requests['pending']} generation request{'s' * (requests['pending'] != 1)} without an answer")
    if requests.get("brainstorm_unanswered"):
        n = requests["brainstorm_unanswered"]
        parts.append(f"{n} brainstorm request{'s' * (n != 1)} without an answer, so {requests.get('waiting_for_tasks')} "
                     f"generation requests of {', '.join(requests.get('groups_waiting_for_tasks', []))} wait for "
                     "their tasks")
    return "; ".join(parts)


def load_stats(run_dir: str | Path) -> dict[str, Any]:
    """stats.json of a run; a folder without one is not a generation run (SynthembedError)."""
    return rundir.read_stats(run_dir)


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text summary of stats.json."""
    lines = []
    if stats.get("note"):
        lines += [f"NOTE: {stats['note']}", ""]
    llm = stats.get("llm", {})
    lines.append(f"model {llm.get('model')} via {llm.get('backend')}; "
                 f"{'complete' if stats.get('complete') else 'incomplete'}"
                 + (f" (stopped: {stats['stopped']})" if stats.get("stopped") else ""))
    if missing_requests(stats):
        lines.append(f"missing: {missing_requests(stats)} (run generate again on it to retry them)")
    lines.append(f"accepted {stats['accepted']}, rejected {stats['rejected']} "
                 f"(acceptance {100 * stats.get('acceptance_rate', 0):.1f}%)")
    if len(stats.get("by_model", {})) > 1:
        lines.append("by model: " + ", ".join(f"{m} {row['accepted']} of {row['requests']} requests"
                                              for m, row in stats["by_model"].items()))
    lines.append("")
    lines.append(f"{'task group':<14}{'tasks':>7}{'accepted':>10}{'rejected':>10}")
    for t, row in stats["by_task_type"].items():
        lines.append(f"{t:<14}{row['tasks']:>7}{row['accepted']:>10}{row['rejected']:>10}")
    lines.append("")
    lines.append("languages: " + ", ".join(f"{k} {v}" for k, v in stats["by_language"].items()))
    lines.append("rejections: " + (", ".join(f"{k} {v}" for k, v in stats["rejections"].items()) or "none"))
    faults = stats.get("faults", {})
    lines.append(f"http retries: {faults.get('http_retries') or 'none'}; failed requests: {faults.get('failed_requests') or 'none'}")
    tok = stats["tokens"]
    lines.append(f"tokens: {tok['prompt']} prompt + {tok['completion']} completion = {tok['total']}; cost ${stats['cost_usd']:.4f}"
                 + (" (hypothetical: stand-in LLM)" if stats.get("cost_is_hypothetical") else ""))
    return "\n".join(lines)


def generation_summary(run_dir: str | Path) -> dict[str, Any]:
    """The key numbers of a generation run (from its stats.json), as notebook 02 records them.

    >>> record_results(run_dir, "02_generate", **generation_summary(generation_dir))  # doctest: +SKIP
    """
    stats = load_stats(run_dir)
    return {
        "generation_dir": str(run_dir),
        "accepted": stats["accepted"],
        "rejected": stats["rejected"],
        "acceptance_rate": stats["acceptance_rate"],
        "task_types_present": sorted(t for t, row in stats["by_task_type"].items() if row["accepted"] > 0),
        "languages_present": sorted(stats["by_language"]),
        "rejections": stats["rejections"],
        "total_tokens": stats["tokens"]["total"],
        "cost_usd": stats["cost_usd"],
        "complete": stats["complete"],
        "stand_in": stats["llm"]["stand_in"],
    }
