"""Notebook 04 in the smoke profile: the baseline's scores on small subsets of the shared data, tables and plots written,
and the trained models from notebook 03 evaluated beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TASKS = ["SciFact", "STSBenchmark", "SICK-R", "Banking77Classification"]


@pytest.mark.notebook
@pytest.mark.slow
def test_04_evaluate_results(smoke_study, shared_data):
    run_dir, results = smoke_study
    r = results["04_evaluate"]
    assert r["profile"] == "smoke" and r["limit"] == 40
    assert r["tasks"] == TASKS
    scores = r["baseline_scores"]
    # a real model on real (small) subsets: well above chance, below perfect
    assert 0.4 < scores["SciFact"] < 1.0
    assert 0.5 < scores["STSBenchmark"] <= 1.0 and 0.5 < scores["SICK-R"] <= 1.0
    assert 0.3 < scores["Banking77Classification"] <= 1.0
    assert r["instructions"][r["baseline"]] is False  # MiniLM is scored as published, without instructions
    eval_dir = Path(run_dir) / "eval"
    for name in ("tasks.md", "tasks.json", "categories.md", "categories.json", "task_scores.png", "category_scores.png"):
        assert (eval_dir / name).is_file(), name
    table = json.loads((eval_dir / "tasks.json").read_text())
    assert {row["task"] for row in table} == set(TASKS)
    # every trained model found in {run_dir}/train was evaluated on the same tasks, with instructions
    for label in r["trained_models"]:
        assert set(r["trained_scores"][label]) == set(TASKS)
        assert r["instructions"][f"ours: {label}"] is True
    if (Path(run_dir) / "train").is_dir() and any((Path(run_dir) / "train").rglob("synthembed_config.json")):
        assert r["trained_models"], "notebook 03 exported models but notebook 04 found none"
