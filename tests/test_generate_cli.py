"""`synthembed generate` and `synthembed stats` from the command line: SIGKILL and resume equals an uninterrupted run,
bad input is a clear error, stats prints and plots."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from synthembed.testing.loopback import Faults, LoopbackServer

CONCURRENCY = 4


def _cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "synthembed.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kwargs)


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _args(out, server):
    return ["generate", "--out", out, "--model", "loopback", "--tasks-per-type", 3, "--examples-per-task", 6,
            "--languages", "English,German,Japanese", "--seed", 2, "--concurrency", CONCURRENCY,
            "--base-url", server.base_url, "--quiet"]


def _lines(path):
    return sorted(path.read_text().splitlines())


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    # Latency keeps the run going long enough to be killed in the middle; rate limits and fences keep it honest.
    with LoopbackServer(latency=0.05, faults=Faults(rate_limit=0.1, fenced=0.1, malformed=0.1, brainstorm=False)) as server:
        full = _cli(*_args(tmp_path / "full", server), env=_env())
        assert full.returncode == 0, full.stderr
        run = tmp_path / "run"
        served_before = server.served["generate"] + server.served["brainstorm"]
        proc = subprocess.Popen([sys.executable, "-m", "synthembed.cli", *map(str, _args(run, server))], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            examples = run / "examples.jsonl"
            if examples.is_file() and len(examples.read_text().splitlines()) >= 20:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert len(_lines(run / "examples.jsonl")) < len(_lines(tmp_path / "full" / "examples.jsonl"))
        resumed = _cli("generate", "--out", run, "--quiet", env=_env())  # settings and endpoint come from config.json
        assert resumed.returncode == 0, resumed.stderr
        served = server.served["generate"] + server.served["brainstorm"] - served_before
    assert _lines(run / "examples.jsonl") == _lines(tmp_path / "full" / "examples.jsonl")
    assert _lines(run / "rejects.jsonl") == _lines(tmp_path / "full" / "rejects.jsonl")
    stats = json.loads((run / "stats.json").read_text())
    assert stats["complete"] and stats["sessions"] == 1 + 0  # the killed session never wrote stats
    with sqlite3.connect(run / "cache.sqlite") as conn:
        rows = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    # Only requests in flight at the moment of the kill can have been answered twice.
    assert rows <= served <= rows + CONCURRENCY


def test_generate_cli_errors_are_clear(tmp_path):
    bad = _cli("generate", "--out", tmp_path / "x", "--task-types", "short-long,retrieval", env=_env())
    assert bad.returncode == 2 and "unknown task type" in bad.stderr and "Traceback" not in bad.stderr
    no_key = _cli("generate", "--out", tmp_path / "y", env=_env())
    assert no_key.returncode == 2 and "OPENAI_API_KEY" in no_key.stderr
    assert not (tmp_path / "y").exists()  # a run that could not start leaves nothing behind
    replay = _cli("generate", "--out", tmp_path / "z", "--backend", "replay", env=_env())
    assert replay.returncode == 2 and "--cache" in replay.stderr
    missing = _cli("stats", tmp_path / "nothing", env=_env())
    assert missing.returncode == 2 and "not a generation run" in missing.stderr
    helped = _cli("generate", "--help", env=_env())
    assert helped.returncode == 0 and "--max-cost" in helped.stdout and "--examples-per-task" in helped.stdout


def test_stats_cli_prints_and_plots(tmp_path):
    with LoopbackServer() as server:
        done = _cli("generate", "--out", tmp_path / "run", "--model", "loopback", "--task-types", "sts,bitext",
                    "--tasks-per-type", 2, "--examples-per-task", 2, "--languages", "English,French",
                    "--base-url", server.base_url, "--quiet", env=_env())
    assert done.returncode == 0, done.stderr
    shown = _cli("stats", tmp_path / "run", "--plots", tmp_path / "plots", env=_env())
    assert shown.returncode == 0, shown.stderr
    assert "stand-in" in shown.stdout and "sts" in shown.stdout and "cost $" in shown.stdout
    for name in ("task_types.png", "languages.png", "rejections.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
