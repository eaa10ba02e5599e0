"""Evaluation results as tables: per task and per MTEB category, beside MTEB's published scores and the paper's Table 1
(reference.py), as DataFrames, markdown and JSON; and the numbers notebook 04 records.

    from synthembed.evaluation.tables import load_results, task_table, to_markdown
    runs = {"baseline": load_results("runs/eval/baseline.json")}
    print(to_markdown(task_table(runs)))
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SynthembedError
from ..files import write_json_atomic
from ..reference import PAPER_TABLE1, PUBLISHED

# MTEB's categories in the paper's order (Table 1), then bitext; any other kind sorts after them.
CATEGORIES = ("classification", "clustering", "pair-classification", "reranking", "retrieval", "sts", "summarization",
              "bitext", "average")  # fmt: skip


def main_score(entry: dict[str, Any]) -> float:
    """An entry's main score; NaN where the results file holds null (mteb returned NaN: JSON has no NaN), so a
    broken score stays visibly missing in means and tables instead of failing them or passing for 0."""
    score = entry["main_score"]
    return float("nan") if score is None else float(score)


def averages(entries: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean main score per task kind, and "average" over all tasks (as MTEB averages: over tasks, not categories).

    >>> averages([{"kind": "sts", "main_score": 1.0}, {"kind": "retrieval", "main_score": 0.5}])
    {'retrieval': 0.5, 'sts': 1.0, 'average': 0.75}
    """
    entries = list(entries)
    by_kind: dict[str, list[float]] = {}
    for entry in entries:
        by_kind.setdefault(entry["kind"], []).append(main_score(entry))
    out = {kind: float(np.mean(scores)) for kind, scores in sorted(by_kind.items())}
    if entries:
        out["average"] = float(np.mean([main_score(e) for e in entries]))
    return out


def load_results(path: str | Path) -> dict[str, Any]:
    """A results JSON written by `evaluate_model` / `synthembed evaluate`."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SynthembedError(f"{path}: not a results file ({err})") from None
    if "tasks" not in results:
        raise SynthembedError(f"{path}: not a results file (no 'tasks')")
    return results


WHOLE_TASK = "whole task"
MAX_BAR_TASKS = 12  # model_table's bar plot shows tasks up to this many, categories beyond


def subset_note(entry: dict[str, Any]) -> str | None:
    """How a task entry's data was cut: "subset: 40 queries" (or pairs, test rows), None where the whole task ran.

    >>> subset_note({"limit": 40, "data_subset": {"count": 40, "unit": "queries"}})
    'subset: 40 queries'
    >>> subset_note({"limit": None}) is None
    True
    """
    if entry.get("data_subset"):
        return f"subset: {entry['data_subset']['count']} {entry['data_subset']['unit']}"
    if entry.get("limit") is not None:  # a results file written before subsets were counted
        return f"subset: at most {entry['limit']}"
    return None


def protocol_note(entry: dict[str, Any]) -> str | None:
    """How a task entry was scored, in words: "mteb's SICK-R" for a task (or a folder bound to one) scored with the
    official protocol; for a folder with no official counterpart, the settings its kind's defaults gave it. None for
    results files written before the protocol was recorded.

    >>> protocol_note({"protocol": {"bound_to": None, "n_experiments": 10, "samples_per_label": 8,
    ...                             "classifier": "LogisticRegression(C=1.0, max_iter=100)"}})
    'not an mteb task: n_experiments 10, samples_per_label 8, classifier LogisticRegression(C=1.0, max_iter=100)'
    """
    protocol = entry.get("protocol")
    if not protocol:
        return None
    if protocol.get("bound_to"):  # as one subset, or on only some of its splits, where the folder held no more
        parts = [protocol["subset"]] if protocol.get("subset") else []
        parts += [f"{'/'.join(protocol['splits'])} only"] if protocol.get("splits") else []
        return f"mteb's {protocol['bound_to']}" + (f" ({', '.join(parts)})" if parts else "")
    settings = ", ".join(f"{k} {v}" for k, v in protocol.items() if k != "bound_to")
    return "not an mteb task" + (f": {settings}" if settings else "")


def task_table(runs: dict[str, dict[str, Any]], published: dict[str, dict[str, float]] | None = None):
    """Per task, main score x100 for each run (columns) beside published scores, and what data ran ("data": the whole
    task or "subset: N queries"; published scores are on whole tasks). -> DataFrame (task, kind, metric, ..., data)"""
    import pandas as pd

    published = PUBLISHED if published is None else published
    rows: dict[str, dict[str, Any]] = {}
    for label, results in runs.items():
        for entry in results["tasks"]:
            row = rows.setdefault(
                entry["name"],
                {"task": entry["name"], "kind": entry["kind"], "metric": entry["main_score_name"], "data": None},
            )
            note = subset_note(entry) or WHOLE_TASK
            row["data"] = note if row["data"] in (None, note) else f"{row['data']}; {label}: {note}"
            if protocol_note(entry):
                row["protocol"] = protocol_note(entry)
            row[label] = round(100 * main_score(entry), 2)
    for label, scores in published.items():
        if any(name in rows for name in scores):
            for name, value in scores.items():
                if name in rows:
                    rows[name][f"{label} (published)"] = value
    frame = pd.DataFrame(list(rows.values()))
    notes = [c for c in ("data", "protocol") if c in frame.columns]
    return frame[[c for c in frame.columns if c not in notes] + notes]  # last: after the scores they qualify


def category_table(runs: dict[str, dict[str, Any]], paper: dict[str, dict[str, float]] | None = None):
    """Per task kind (MTEB category), mean main score x100 for each run beside the paper's Table 1. -> DataFrame

    The paper's columns average 56 MTEB datasets; ours average whatever tasks ran, so they compare only when the
    same tasks ran (MTEB(eng, v1) in the default profile). A category that ran on subsets is named so
    ("sts (subsets)").
    """
    import pandas as pd

    paper = PAPER_TABLE1 if paper is None else paper
    table = {label: {k: None if v is None else round(100 * v, 2) for k, v in results["averages"].items()}
             for label, results in runs.items()}  # fmt: skip
    present = [k for k in CATEGORIES if any(k in t for t in table.values())] + sorted(
        {k for t in table.values() for k in t} - set(CATEGORIES)
    )
    frame = pd.DataFrame({label: [t.get(k) for k in present] for label, t in table.items()}, index=present)
    for label, column in paper.items():
        frame[f"{label} (paper)"] = [column.get(k) for k in present]
    on_subsets = {e["kind"] for r in runs.values() for e in r["tasks"] if subset_note(e)}
    on_subsets |= {"average"} if on_subsets else set()
    frame.index = [k + " (subsets)" if k in on_subsets else k for k in present]
    frame.index.name = "category"
    return frame.reset_index()


def model_table(runs: dict[str, dict[str, Any]], published: dict[str, dict[str, float]] | None = None):
    """The paper's Table 1 in shape: one row per model; a column per task, then per MTEB category and the average
    over tasks (x100). A column over a subset says so ("SciFact (subset: 40 queries)", "retrieval (subsets)").

    Rows of MTEB's published scores (`published`, default reference.PUBLISHED) are added for the runs labelled like a
    published model, as "<model> (MTEB, published)"; published scores are on whole tasks, so they fill only the
    columns of whole tasks, never a subset's. -> DataFrame (model, task columns..., categories..., average)
    """
    import pandas as pd

    published = PUBLISHED if published is None else published
    columns: dict[tuple[str, str | None], str] = {}  # (task, subset note) -> column name
    kinds: dict[str, str] = {}  # column -> its task kind
    for results in runs.values():
        for entry in results["tasks"]:
            note = subset_note(entry)
            name = columns.setdefault((entry["name"], note), entry["name"] + (f" ({note})" if note else ""))
            kinds[name] = entry["kind"]
    subset = {name: note is not None for (_, note), name in columns.items()}
    rows = {label: {columns[(e["name"], subset_note(e))]: 100 * main_score(e) for e in results["tasks"]}
            for label, results in runs.items()}  # fmt: skip
    for label in runs:
        if label in published:
            whole = {name: published[label][task] for (task, note), name in columns.items()
                     if note is None and task in published[label]}  # fmt: skip
            if whole:
                rows[f"{label} (MTEB, published)"] = whole

    order = {kind: i for i, kind in enumerate(CATEGORIES)}
    present = sorted(set(kinds.values()), key=lambda k: (order.get(k, len(order)), k))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(kinds))
    category_columns = []
    for kind in present + ["average"]:
        members = [c for c in kinds if kind in ("average", kinds[c])]
        # a row missing one of the category's tasks gets no mean there: it would average other tasks than the rest
        category_columns.append(kind + (" (subsets)" if any(subset[c] for c in members) else ""))
        table[category_columns[-1]] = table[members].mean(axis=1, skipna=False)
    table = table.round(2)
    table.index.name = "model"
    table = table.reset_index()
    # what the bar plot shows: the tasks and the average, or for a benchmark (MTEB's 56 tasks) the categories
    bars = list(kinds) if len(kinds) <= MAX_BAR_TASKS else category_columns[:-1]
    table.attrs["bar_columns"] = bars + category_columns[-1:]
    return table


def embedding_settings(runs: dict[str, dict[str, Any]]):
    """How each model was embedded (as loaded: pooling, max_len, instructions): rows that must agree for a fair
    comparison (an untrained decoder and ours) can be read side by side. -> DataFrame"""
    import pandas as pd

    return pd.DataFrame(
        [{"label": label, "model": r["model"], "pooling": r.get("pooling"), "max_len": r.get("max_len"),
          "instructions": "on" if r["instructions"] else "off"} for label, r in runs.items()]  # fmt: skip
    )


def to_markdown(frame) -> str:
    """A DataFrame as a GitHub markdown table (no tabulate dependency); missing values shown as blanks."""
    columns = list(frame.columns)
    lines = ["| " + " | ".join(str(c) for c in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            value = row[c]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.2f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(runs: dict[str, dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """tasks, categories and models (the Table 1 shape) as .json and .md in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    written = {}
    frames = {"tasks": task_table(runs), "categories": category_table(runs), "models": model_table(runs)}
    for stem, frame in frames.items():
        written[f"{stem}.json"] = write_json_atomic(
            out_dir / f"{stem}.json", json.loads(frame.to_json(orient="records"))
        )
        path = out_dir / f"{stem}.md"
        path.write_text(to_markdown(frame))
        written[f"{stem}.md"] = path
    return written


def task_scores(results: dict[str, Any], digits: int = 4) -> dict[str, float]:
    """{task name: main score (0 to 1), rounded} of one results dict.

    >>> task_scores({"tasks": [{"name": "SciFact", "main_score": 0.645123}]})
    {'SciFact': 0.6451}
    >>> task_scores({"tasks": [{"name": "STSBenchmark", "main_score": None}]})  # mteb's NaN, kept missing
    {'STSBenchmark': None}
    """
    return {t["name"]: _rounded(t["main_score"], digits) for t in results["tasks"]}


def _rounded(value: float | None, digits: int) -> float | None:
    """A score rounded for a JSON summary; None for a missing (null or NaN) one, since JSON has no NaN."""
    return None if value is None or np.isnan(value) else round(value, digits)


def evaluation_summary(
    runs: dict[str, dict[str, Any]], trained: Mapping[str, str], baseline: str | None = None
) -> dict[str, Any]:
    """Notebook 04's numbers (what its test reads back): the baseline's tasks and scores, each trained model's scores,
    every run's scores, averages and whether it got instructions, which tasks ran on subsets, and the paper's Table 1
    average.

    Args:
        runs: evaluate_model results by label.
        trained: trained model label (find_trained_models') -> its label in `runs`.
        baseline: the baseline's label in `runs` (default the first run that is not a trained model).

    >>> evaluation_summary(runs, {"synthetic": "ours: synthetic"})["trained_scores"]  # doctest: +SKIP
    {'synthetic': {'SciFact': 0.41, ...}}
    """
    if baseline is None:
        baseline = next((label for label in runs if label not in trained.values()), next(iter(runs)))
    return {
        "tasks": [t["name"] for t in runs[baseline]["tasks"]],
        "baseline": baseline,
        "baseline_scores": task_scores(runs[baseline]),
        "trained_models": list(trained),
        "trained_scores": {label: task_scores(runs[key]) for label, key in trained.items()},
        "averages": {label: {k: _rounded(v, 4) for k, v in run["averages"].items()} for label, run in runs.items()},
        "instructions": {label: run["instructions"] for label, run in runs.items()},
        # what data each task's scores are on: "subset: 40 queries", or None for the whole task
        "subsets": {t["name"]: subset_note(t) for t in runs[baseline]["tasks"]},
        "scores": {label: task_scores(run) for label, run in runs.items()},  # every model, in the table's order
        "paper_table1_average": PAPER_TABLE1["E5-mistral full data"]["average"],
    }
