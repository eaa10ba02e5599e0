"""The reliability suite (issue 11): a real `synthembed generate`, with an API key set, against the loopback stand-in
sending every raw-socket fault at once (garbage bodies, resets mid-body, trickled answers, bodies of several MB, bytes
that are not UTF-8, lone surrogates, 429s, 500s, hangs, malformed JSON), stopped first by a 401 whose body echoes the
key, then resumed; the slow part also kills it with SIGKILL at a random moment and resumes it. It prints one line,

    faults injected N, survived N, examples lost 0, duplicated 0, key leaks 0

where a fault is survived when the request it hit was answered in the end (the run's response cache holds an answer to
it, which the run gave its verdict); an example is lost when the server delivered a good answer to a generation request
and examples.jsonl holds no example of it after the resume; duplicated counts repeated example ids; key leaks count the
API key in everything the runs printed and every file of the run directory.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from synthembed.cli import main
from synthembed.generation.prompts import brainstorm_prompt
from synthembed.taskgroups import MARKER_HEADER
from synthembed.testing.loopback import TRANSPORT_FAULTS, Faults, LoopbackServer
from synthembed.testing.raw_faults import RAW_FAULTS, Served, request_key

KEY = "sk-proj-Q7vTz2Lx9Rk4Wm8Nb3Hc6Jd1"
# Every transport and raw fault but the 401 (which ends a run, so it gets a run of its own), and one content fault.
MIX = Faults(rate_limit=0.06, server_error=0.06, hang=0.05, garbage=0.08, reset=0.08, trickle=0.06, huge=0.05,
             bad_utf8=0.08, lone_surrogate=0.06, malformed=0.05, retry_after=0.05, hang_seconds=3.0,
             trickle_seconds=3.0, huge_bytes=2_000_000)  # fmt: skip
# 4 brainstorms and 36 generation requests; a timeout well under the hang and the trickle
ARGS = ["generate", "--model", "loopback", "--tasks-per-type", "2", "--examples-per-task", "3",
        "--languages", "English,German", "--timeout", "0.75", "--concurrency", "8", "--quiet"]  # fmt: skip


@dataclasses.dataclass
class Tally:
    injected: int
    survived: int
    lost: int
    duplicated: int
    leaks: int
    by_fault: Counter

    def line(self) -> str:
        return (f"faults injected {self.injected}, survived {self.survived}, examples lost {self.lost}, "
                f"duplicated {self.duplicated}, key leaks {self.leaks}")  # fmt: skip


def _answered(run_dir: Path) -> set[str]:
    """The stand-in's keys of the requests the run's response cache holds an answer to."""
    with sqlite3.connect(run_dir / "cache.sqlite") as db:
        rows = db.execute("SELECT request FROM responses").fetchall()
    return {request_key(r["model"], r["messages"], r["seed"]) for r in (json.loads(row[0]) for row in rows)}


def tally(log: list[Served], run_dir: Path, outputs: list[str]) -> Tally:
    examples = [json.loads(line) for line in (run_dir / "examples.jsonl").read_text(encoding="utf-8").splitlines()]
    unique = {e["id"]: e for e in examples}
    # a good answer to a generation request must be an example: counted by prompt (two seeds of one prompt, two)
    wanted = Counter(sha for sha, _ in {(s.prompt_sha256, s.seed) for s in log if s.kind == "generate" and s.good})
    held = Counter(e["meta"]["prompt_sha256"] for e in unique.values())
    faults = [s for s in log if s.outcome != "ok" or s.content_fault]
    answered = _answered(run_dir)
    secret = KEY[8:].encode()  # the key's tail: any part of it shown is a leak
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    leaks = sum(text.encode().count(secret) for text in outputs) + sum(p.read_bytes().count(secret) for p in files)
    return Tally(
        injected=len(faults),
        survived=sum(s.key in answered for s in faults),
        lost=sum(max(0, n - held[sha]) for sha, n in wanted.items()),
        duplicated=len(examples) - len(unique),
        leaks=leaks,
        by_fault=Counter(s.outcome if s.outcome != "ok" else s.content_fault for s in faults),
    )


def _report(result: Tally, capture) -> None:
    with capture.disabled():  # the line shows in CI's log, whatever pytest captures
        print(f"\n{result.line()}")
    assert result.injected > 0
    assert result.survived == result.injected, result.by_fault
    assert (result.lost, result.duplicated, result.leaks) == (0, 0, 0), result.line()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_generate_survives_every_fault_and_a_401_loses_nothing_and_leaks_no_key(tmp_path, api_key, capfd):
    out, outputs = tmp_path / "run", []
    # 1. a 401 that echoes the Authorization header ends the run, and the message does not show the key
    with LoopbackServer(faults=Faults(unauthorized=1.0)) as refusing:
        assert main([*ARGS, "--out", str(out), "--base-url", refusing.base_url]) == 2
    printed = capfd.readouterr()
    outputs += [printed.out, printed.err]
    assert "401" in printed.err and refusing.served["unauthorized"] > 0
    # 2. every other fault at once: the resumed run ends complete
    with LoopbackServer(faults=MIX, seed=3) as server:
        assert main([*ARGS, "--out", str(out), "--base-url", server.base_url]) == 0
        printed = capfd.readouterr()
        outputs += [printed.out, printed.err]
        stats = json.loads((out / "stats.json").read_text())
        assert stats["complete"] and stats["requests"]["generate_planned"] == 36
        # 3. a rerun has nothing to do and sends nothing
        sent = len(server.log)
        assert main([*ARGS, "--out", str(out), "--base-url", server.base_url]) == 0
        printed = capfd.readouterr()
        outputs += [printed.out, printed.err]
        assert len(server.log) == sent
    result = tally(refusing.log + server.log, out, outputs)
    # every fault was drawn at least once: the suite cannot pass by not injecting one
    assert set(result.by_fault) >= {*TRANSPORT_FAULTS, *RAW_FAULTS, "malformed"}, result.by_fault
    # a trickled answer is cut off at the per-request deadline, or (a client timing out per socket read) waited for
    assert all(not s.delivered or s.good for s in server.log if s.outcome == "trickle")
    _report(result, capfd)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_loses_nothing(tmp_path, capsys):
    """A `synthembed generate` process killed with SIGKILL at a random moment (a number of requests into the run, plus
    a random fraction of a second; SYNTHEMBED_KILL_SEED repeats a failure) and resumed. Answers trickle for a minute
    here, so the run ends in time only because --timeout is a deadline per request."""
    seed = int(os.environ.get("SYNTHEMBED_KILL_SEED") or random.randrange(1_000_000))
    rng = random.Random(seed)
    out = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    env.pop("OPENAI_BASE_URL", None)
    faults = dataclasses.replace(MIX, trickle_seconds=60.0)
    with LoopbackServer(faults=faults, latency=0.02, seed=seed % 97) as server:
        command = [sys.executable, "-m", "synthembed.cli", *ARGS, "--out", str(out), "--base-url", server.base_url]
        victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        kill_after = rng.randint(1, 30)  # of some 45 requests the run sends
        deadline = time.monotonic() + 120
        while len(server.log) < kill_after and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        victim.send_signal(signal.SIGKILL)
        killed = victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL, f"the run ended before the kill (seed {seed})"
        started = time.monotonic()
        resumed = subprocess.run(command, capture_output=True, env=env, timeout=300)
        took = time.monotonic() - started
    outputs = [b.decode("utf-8", "replace") for b in (*killed, resumed.stdout, resumed.stderr)]
    assert resumed.returncode == 0, (f"seed {seed}, killed after {kill_after} requests", outputs[-1][-2000:])
    assert json.loads((out / "stats.json").read_text())["complete"], seed
    assert all(not s.delivered for s in server.log if s.outcome == "trickle"), "a 60 s trickle was waited for"
    assert took < 60, f"the resumed run took {took:.0f} s (seed {seed})"
    _report(tally(server.log, out, outputs), capsys)


# --- the raw faults are what they say they are --------------------------------------------------------------------


def _post(server: LoopbackServer, timeout: float = 10.0) -> tuple[int, bytes]:
    prompt = brainstorm_prompt("short-long", random.Random(0))
    body = json.dumps({"model": "loopback", "messages": prompt.messages}).encode()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json",
                        "Authorization": f"Bearer {KEY}", MARKER_HEADER: prompt.marker})  # fmt: skip
    reply = connection.getresponse()
    return reply.status, reply.read()


@pytest.mark.parametrize("fault", RAW_FAULTS)
def test_each_raw_fault_is_sent_as_described(fault):
    faults = Faults(**{fault: 1.0}, trickle_seconds=0.3, huge_bytes=3_000_000)
    with LoopbackServer(faults=faults) as server:
        if fault == "reset":
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                _post(server)
        else:
            started = time.monotonic()
            status, body = _post(server)
            took = time.monotonic() - started
        again = _post(server)  # the second attempt of the same request: the good answer
        assert again[0] == 200 and json.loads(again[1])["choices"][0]["message"]["content"]
    assert [s.outcome for s in server.log] == [fault, "ok"] and server.log[1].good
    assert server.log[0].good == (fault == "trickle")  # a trickled answer that was waited for arrived intact
    if fault == "garbage":
        with pytest.raises(ValueError):
            json.loads(body)
    elif fault == "huge":
        assert len(body) > 3_000_000 and json.loads(body)["choices"][0]["finish_reason"] == "length"
    elif fault == "bad_utf8":
        with pytest.raises(UnicodeDecodeError):
            body.decode("utf-8")
    elif fault == "lone_surrogate":
        assert b"\\ud800" in body and chr(0xD800) in json.loads(body)["choices"][0]["message"]["content"]
    elif fault == "unauthorized":
        assert status == 401 and KEY in body.decode() and f"Bearer {KEY}" in body.decode()
    elif fault == "trickle":
        # the same answer, but for its "created" second: the trickle may end in the next one
        assert status == 200 and took >= 0.25 and {**json.loads(body), "created": 0} == {**json.loads(again[1]), "created": 0}
