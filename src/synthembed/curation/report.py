"""A curation folder's files, read back and summarised: the counts table, the notebook's numbers, the CLI's summary.

from synthembed.curation.report import counts_table, read_curation
table = counts_table(read_curation("runs/curated"))   # one row per (filter, reason): action and examples
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from .judge import DROP_REASONS

CURATION_FILE = "curation.json"
DROPPED_FILE = "dropped.jsonl"
SCORES_FILE = "scores.jsonl"
JUDGE_CACHE_FILE = "judge_cache.sqlite"


def read_curation(out: str | Path) -> dict[str, Any]:
    path = Path(out) / CURATION_FILE
    if not path.is_file():
        raise SynthembedError(f"{out} is not a curation folder: no {CURATION_FILE}")
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(out: str | Path, name: str) -> list[dict[str, Any]]:
    """dropped.jsonl or scores.jsonl of a curation folder ([] where absent)."""
    path = Path(out) / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def counts_table(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (filter, reason): what it did and to how many examples, for a notebook table or the CLI."""
    rows = []
    filters = stats["filters"]
    for name, method in (
        ("near_duplicate", "by_method"),
        ("contamination", "by_eval_set"),
        ("false_negative", "by_task_type"),
        ("judge", "by_reason"),
    ):
        entry = filters.get(name, {})
        if not entry.get("ran"):
            rows.append({"filter": name, "reason": "(not run)", "action": "", "examples": 0})
            continue
        for reason, count in sorted(entry.get(method, {}).items()):
            action = "dropped"
            if name == "judge":
                action = {"negative_preferred": "relabelled"}.get(
                    reason, "dropped" if reason in DROP_REASONS else "kept"
                )
            rows.append({"filter": name, "reason": reason, "action": action, "examples": count})
        if not entry.get(method):
            rows.append({"filter": name, "reason": "(none found)", "action": "", "examples": 0})
    mining = filters.get("mining", {})
    if mining.get("ran"):
        rows += [
            {"filter": "mining", "reason": k, "action": action, "examples": mining[k]}
            for k, action in (
                ("filled", "negative added"),
                ("replaced", "negative replaced"),
                ("no_candidate", "kept as is"),
            )
        ]
    return rows


def curation_summary(out: str | Path) -> dict[str, Any]:
    """The key numbers of a curation, as notebook 02 records them."""
    stats = read_curation(out)
    margins = stats["filters"].get("false_negative", {}).get("margins", {})
    return {
        "curation": {
            "dir": str(out),
            "input": stats["input"],
            "kept": stats["kept"],
            "dropped": stats["dropped"],
            "relabelled": stats["relabelled"],
            "dropped_by_filter": stats["dropped_by_filter"],
            "by_eval_set": stats["filters"]["contamination"].get("by_eval_set", {}),
            "negative_wins": margins.get("negative_wins"),
            "scored": margins.get("count"),
        }
    }


def format_curation(stats: dict[str, Any]) -> str:
    lines = [
        f"curated {stats['source']}: {stats['input']} examples -> {stats['kept']} kept, {stats['dropped']} dropped, "
        f"{stats['relabelled']} relabelled"
    ]
    lines += [f"  {r['filter']:<15} {r['reason']:<30} {r['action']:<22} {r['examples']}" for r in counts_table(stats)]
    margins = stats["filters"].get("false_negative", {}).get("margins")
    if margins and margins.get("count"):
        lines.append(
            f"  margins (positive - negative cosine): median {margins['median']}, p05 {margins['p05']}, "
            f"{margins['negative_wins']} of {margins['count']} below 0"
        )
    return "\n".join(lines)
