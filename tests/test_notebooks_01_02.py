"""Notebooks 01 (prompts) and 02 (generation) in the smoke study: their recorded numbers, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthembed.taskgroups import TASK_TYPES

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_01_prompts_results(smoke_study):
    _, results = smoke_study
    r = results["01_prompts"]
    assert r["task_types"] == list(TASK_TYPES)
    assert r["n_languages"] == 93
    assert r["english_weight"] == pytest.approx(0.431)
    assert r["english_sampled_share"] == pytest.approx(0.431, abs=0.02)  # the sampler follows the weights
    assert r["same_seed_same_prompts"] is True
    assert r["live_requests"] == 10 and r["live_parsed_ok"] >= 8
    assert r["live_cost_usd"] > 0
    assert r["stand_in"] is True  # the smoke profile's LLM is the loopback stand-in


def test_02_generate_results(smoke_study):
    run_dir, results = smoke_study
    r = results["02_generate"]
    assert r["complete"] is True and r["stand_in"] is True
    assert r["accepted"] >= 200  # a few hundred examples for notebook 03 to train on
    assert sorted(r["task_types_present"]) == sorted(TASK_TYPES)
    assert len(r["languages_present"]) >= 6
    assert 0.6 <= r["acceptance_rate"] < 1.0  # the stand-in's scripted faults are rejected, the rest accepted
    assert set(r["rejections"]) >= {"invalid_json", "refusal", "truncated"}
    assert r["cost_usd"] > 0 and r["total_tokens"] > 0
    generation = Path(r["generation_dir"])
    assert generation == Path(run_dir) / "generation"
    stats = json.loads((generation / "stats.json").read_text())
    assert stats["accepted"] == r["accepted"] == len((generation / "examples.jsonl").read_text().splitlines())
    assert "stand-in" in stats["note"]
    # the curation section: its counts add up, and the stand-in's Tatoeba sentences are caught as evaluation overlap
    c = r["curation"]
    assert c["input"] == r["accepted"] and c["kept"] + c["dropped"] == c["input"]
    assert sum(c["dropped_by_filter"].values()) == c["dropped"] and c["by_eval_set"].get("Tatoeba", 0) > 0
    curated = Path(c["dir"]) / "examples.jsonl"
    assert len(curated.read_text().splitlines()) == c["kept"] > 0
