"""Concurrent use and incomplete runs (issue 11): a run directory, a training --out and a study --out serve one process
at a time (a second is refused, naming the first; a SIGKILLed holder leaves no stale lock); a generation run is complete
only when every planned request has an answer or a verdict, a rerun retries the rest and an incomplete run exits
non-zero; --timeout is a deadline per attempt, not per socket read; judging workers end with their run; a finished
notebook of a study is not overwritten without --overwrite."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from synthembed.errors import SynthembedError
from synthembed.files import LOCK_FILE, folder_lock
from synthembed.generation.backends import OpenAIBackend
from synthembed.generation.commands import INCOMPLETE_EXIT
from synthembed.generation.llm import ChatRequest, LLMClient, LLMError
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.study import finished_at, run_study
from synthembed.taskgroups import MARKER_HEADER
from synthembed.testing.loopback import Faults, LoopbackServer
from synthembed.training import loop
from synthembed.training.args import TrainArguments

CONFIG = dict(model="loopback", tasks_per_type=2, examples_per_task=2, languages="English,German,Spanish", seed=0)
# Holds the lock on argv[1] until its stdin closes, after saying so on stdout.
HOLDER = (
    "import sys\nfrom synthembed.files import folder_lock\n"
    "with folder_lock(sys.argv[1], 'synthembed generate'):\n    print('held', flush=True)\n    sys.stdin.read()\n"
)


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return {**env, "HF_HUB_OFFLINE": "1"}


def _hold(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`, once this returns."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthembed.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        **kwargs,
    )


def _generate(out, server, **kwargs):
    return generate(
        out, GenerateConfig(**CONFIG), base_url=server.base_url, concurrency=4, backoff=0.01, progress=False, **kwargs
    )


def _files(run: Path) -> dict[str, list[str]]:
    return {
        name: sorted((run / name).read_text().splitlines())
        for name in ("examples.jsonl", "rejects.jsonl", "tasks.jsonl")
    }


# --- 1. one process per folder ----------------------------------------------------------------------------------------


def test_a_held_folder_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    holder = _hold(run)
    with pytest.raises(SynthembedError) as refused:
        with folder_lock(run, "synthembed generate"):
            pass
    message = str(refused.value)
    assert f"--out {run} is in use by synthembed generate (pid {holder.pid} on {socket.gethostname()}, since" in message
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run / LOCK_FILE).is_file()  # the killed holder's file is still there, and holds nothing
    with folder_lock(run, "synthembed generate"):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert list(run.iterdir()) == []  # released: the lock file goes with it
    with folder_lock(tmp_path / "new", "synthembed generate"):
        assert (tmp_path / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()  # a folder the lock created and nothing filled is removed with it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    with folder_lock(mine, "synthembed study"):
        pass
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # nothing left in a folder that was there before


def test_two_generate_processes_on_one_run_one_is_refused_and_nothing_is_duplicated(tmp_path):
    run = tmp_path / "run"
    with LoopbackServer(latency=0.1) as server:  # about 5 s of requests: the first run outlasts the second start
        args = [
            "generate",
            "--out",
            run,
            "--model",
            "loopback",
            "--tasks-per-type",
            2,
            "--examples-per-task",
            8,
            "--languages",
            "English,German",
            "--concurrency",
            2,
            "--base-url",
            server.base_url,
            "--quiet",
        ]
        first = subprocess.Popen(
            [sys.executable, "-m", "synthembed.cli", *map(str, args)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 60
        while not (run / "config.json").is_file() and time.time() < deadline:
            time.sleep(0.02)
        second = _cli(*args)
        assert first.poll() is None, "the first run should still be working"
        assert second.returncode == 2, second.stderr
        assert f"is in use by synthembed generate (pid {first.pid} on" in second.stderr
        assert "Traceback" not in second.stderr
        with pytest.raises(SynthembedError, match=f"pid {first.pid}"):  # and from Python the same
            _generate(run, server)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    ids = [json.loads(line)["id"] for line in (run / "examples.jsonl").read_text().splitlines()]
    assert ids and len(ids) == len(set(ids))
    assert json.loads((run / "stats.json").read_text())["complete"]
    assert not (run / LOCK_FILE).exists()


def test_train_holds_its_out_while_it_runs_and_is_refused_on_a_held_one(tmp_path, monkeypatch):
    out = tmp_path / "model"
    args = TrainArguments(data=["examples.jsonl"], base_model="no-model-is-loaded", out=str(out), progress=False)
    seen = {}

    def probe(args, out, on_step):  # in place of the training itself: can another process take --out now?
        seen["other"] = subprocess.run(
            [sys.executable, "-c", HOLDER, str(out)], capture_output=True, text=True, input="", env=_env()
        )
        return out

    monkeypatch.setattr(loop, "_train", probe)
    loop.train(args)
    assert seen["other"].returncode != 0 and f"in use by synthembed train (pid {os.getpid()}" in seen["other"].stderr
    monkeypatch.setenv("RANK", "1")  # the other processes of a multi-process run share rank 0's lock
    loop.train(args)
    assert seen["other"].returncode == 0
    monkeypatch.delenv("RANK")
    holder = _hold(out)
    try:
        with pytest.raises(SynthembedError, match=f"--out {out} is in use by .*pid {holder.pid}"):
            loop.train(args)
    finally:
        holder.stdin.close()
        holder.wait()


# --- 2. complete only when every planned request has an answer or a verdict -------------------------------------------


def test_failed_brainstorms_hold_their_group_back_and_reruns_end_exactly_as_a_run_without_faults(tmp_path):
    with LoopbackServer(seed=1) as clean:
        _generate(tmp_path / "clean", clean)
    # A 500 on each request's first attempt, no retries in a session: a third of the requests fail, a rerun answers them.
    with LoopbackServer(faults=Faults(server_error=0.3), seed=1) as server:
        run = tmp_path / "run"
        first = _generate(run, server, max_retries=0)
        requests = first["requests"]
        assert not first["complete"] and requests["brainstorm_unanswered"] >= 1 and requests["pending"] >= 1
        assert requests["groups_waiting_for_tasks"] and requests["waiting_for_tasks"] == 4 * len(
            requests["groups_waiting_for_tasks"]
        )  # tasks_per_type x examples_per_task each
        written = {json.loads(line)["task_type"] for line in (run / "tasks.jsonl").read_text().splitlines()}
        assert not written & set(requests["groups_waiting_for_tasks"])
        sessions = [first]
        while not sessions[-1]["complete"] and len(sessions) < 5:
            sessions.append(_generate(run, server, max_retries=0))
    assert sessions[-1]["complete"] and len(sessions) > 1
    assert _files(run) == _files(tmp_path / "clean")  # same tasks, examples and rejects as the run without faults


class _Refusing(LoopbackServer):
    """The stand-in, answering 400 (a failure no retry mends) to short-long's brainstorms and to sts's generation
    requests while `refusing`."""

    refusing = True

    async def _route(self, method, path, headers, body, *args, **kwargs):
        marker = json.loads(headers.get(MARKER_HEADER.lower(), "{}"))
        if self.refusing and (marker.get("stage"), marker.get("task_type")) in {
            ("brainstorm", "short-long"),
            ("generate", "sts"),
        }:
            return 400, {}, {"error": {"message": "refused (scripted)", "type": "invalid_request_error"}}
        return await super()._route(method, path, headers, body, *args, **kwargs)


def test_an_incomplete_generate_exits_non_zero_and_its_rerun_finishes(tmp_path):
    run = tmp_path / "run"
    with _Refusing() as server:
        args = [
            "generate",
            "--out",
            run,
            "--model",
            "loopback",
            "--tasks-per-type",
            2,
            "--examples-per-task",
            2,
            "--task-types",
            "short-long,long-short,sts",
            "--languages",
            "English,German",
            "--base-url",
            server.base_url,
            "--quiet",
        ]
        first = _cli(*args)
        assert first.returncode == INCOMPLETE_EXIT, first.stderr
        assert "4 generation requests without an answer" in first.stderr  # sts: 2 slots x 2 examples
        assert "1 brainstorm request without an answer, so 4 generation requests of short-long wait" in first.stderr
        stats = json.loads((run / "stats.json").read_text())
        assert not stats["complete"] and stats["by_task_type"]["short-long"]["tasks"] == 0
        shown = _cli("stats", run)
        assert shown.returncode == 0 and "incomplete" in shown.stdout and "missing: 4 generation" in shown.stdout
        server.refusing = False
        again = _cli("generate", "--out", run, "--quiet")  # settings and endpoint from its config.json
        assert again.returncode == 0, again.stderr
    stats = json.loads((run / "stats.json").read_text())
    assert stats["complete"] and stats["requests"]["pending"] == 0 and stats["by_task_type"]["short-long"]["tasks"] == 2
    done = _cli("generate", "--out", run, "--quiet")
    assert done.returncode == 0, done.stderr  # a complete run: nothing to do, and no error


# --- 3. --timeout is a deadline per attempt -----------------------------------------------------------------------------


class _Trickler:
    """A raw socket server that reads a request and answers a valid chat completion one byte every `every` seconds:
    each socket read gets a byte long before a per-read timeout, the whole answer takes minutes. It stops after
    `limit` bytes and closes, so a client without a deadline fails in seconds too (instead of hanging the test)."""

    def __init__(self, every: float = 0.3, limit: int = 25):
        body = json.dumps(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "slow"}}],
            }
        ).encode()
        self.reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
        self.every, self.limit, self.connections = every, limit, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            for byte in self.reply[: self.limit]:
                if self.closed.wait(self.every):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client gave up: what a deadline does
                    return

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def test_timeout_is_a_deadline_per_attempt_not_per_socket_read():
    server = _Trickler(every=0.3)
    try:
        client = LLMClient(OpenAIBackend(base_url=server.base_url, timeout=1.0), max_retries=1, backoff=0.01)
        started = time.perf_counter()
        [answer] = client.run([ChatRequest("m", ({"role": "user", "content": "hi"},))])
        elapsed = time.perf_counter() - started
    finally:
        server.close()
    assert isinstance(answer, LLMError) and answer.kind == "timeout", answer
    assert "within 1 s" in str(answer) and client.usage.retries["timeout"] == 2 and server.connections == 2
    assert elapsed < 3.5, f"two attempts of 1 s took {elapsed:.1f} s"  # without the deadline: 2 x 7.5 s


def test_timeout_must_be_positive(tmp_path):
    with LoopbackServer() as server, pytest.raises(SynthembedError, match="--timeout must be"):
        _generate(tmp_path / "run", server, timeout=0)
    assert not (tmp_path / "run").exists()


# --- 4. judging workers end with their run ------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def _running(pid: int) -> bool:
    try:  # a zombie (ended, not yet reaped by whoever adopted it) has ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_judging_worker_processes_end_with_their_run(how, tmp_path):
    run = tmp_path / "run"
    with LoopbackServer(latency=0.1) as server:
        args = [
            "generate",
            "--out",
            run,
            "--model",
            "loopback",
            "--tasks-per-type",
            2,
            "--examples-per-task",
            40,
            "--concurrency",
            4,
            "--workers",
            1,
            "--base-url",
            server.base_url,
            "--quiet",
        ]
        proc = subprocess.Popen(
            [sys.executable, "-m", "synthembed.cli", *map(str, args)], env=_env(), stderr=subprocess.DEVNULL
        )
        examples, deadline = run / "examples.jsonl", time.time() + 60
        while time.time() < deadline and not (examples.is_file() and examples.stat().st_size):
            time.sleep(0.05)  # the worker has judged a reply by now
        children = _descendants(proc.pid)
        assert children, "a run with --workers 1 judges in a worker process"
        proc.send_signal(how)
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(pid) for pid in children):
            time.sleep(0.1)
    left = [pid for pid in children if _running(pid)]
    for pid in left:  # don't leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the run ended: {left}"


# --- 5. a study's finished notebooks are not overwritten -----------------------------------------------------------------


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("run_dir = ''\nprofile = ''\n")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def test_a_study_holds_its_out_and_runs_finished_notebooks_again_only_when_told(tmp_path):
    nbs, params, out = tmp_path / "notebooks", tmp_path / "params", tmp_path / "study"
    nbs.mkdir()
    params.mkdir()
    (params / "smoke.yaml").write_text("common: {}\n")
    # Notebook 01 tries to take the study's folder from its kernel, another process, and records what it was told.
    _notebook(
        nbs / "01_first.ipynb",
        (
            "import os\nfrom synthembed.files import folder_lock\nfrom synthembed.study import record_results\n"
            "try:\n    with folder_lock(run_dir, 'synthembed study'):\n        told = 'taken'\n"
            "except Exception as err:\n    told = str(err)\n"
            "record_results(run_dir, '01_first', told=told, kernel=os.getpid())"
        ),
    )
    _notebook(
        nbs / "02_second.ipynb",
        "from synthembed.study import record_results\nrecord_results(run_dir, '02_second', ran=True)",
    )
    study = dict(profile="smoke", out=out, notebooks=nbs, params=params, progress=False)
    run_study(only="01", **study)
    first = json.loads((out / "results" / "01_first.json").read_text())
    assert f"is in use by synthembed study (pid {os.getpid()}" in first["told"]
    with pytest.raises(SynthembedError, match=r"already holds finished notebook\(s\) 01 \(finished .*--only 02 runs"):
        run_study(**study)
    assert not (out / "02_second.ipynb").exists()
    run_study(only="02", **study)  # the one not run yet: how a study is continued
    assert json.loads((out / "results.json").read_text())["02_second"] == {"ran": True}
    with pytest.raises(SynthembedError, match="every notebook has finished there; --overwrite runs them again"):
        run_study(only="01,02", **study)
    run_study(only="01", overwrite=True, **study)
    assert json.loads((out / "results" / "01_first.json").read_text())["kernel"] != first["kernel"]  # ran again
    holder = _hold(out)
    try:
        with pytest.raises(SynthembedError, match=f"pid {holder.pid}"):
            run_study(only="01", overwrite=True, **study)
    finally:
        holder.stdin.close()
        holder.wait()


def test_a_notebook_that_failed_or_was_killed_has_not_finished(tmp_path):
    def executed(**papermill) -> Path:
        path = tmp_path / f"nb{len(list(tmp_path.iterdir()))}.ipynb"
        path.write_text(json.dumps({"cells": [], "metadata": {"papermill": papermill}}))
        return path

    assert finished_at(executed(end_time="2026-01-01T10:00:00", exception=None)) == "2026-01-01T10:00:00"
    assert finished_at(executed(end_time="2026-01-01T10:00:00", exception=True)) is None  # failed in a cell
    assert finished_at(executed(end_time=None, exception=None)) is None  # killed while running
    assert finished_at(tmp_path / "absent.ipynb") is None
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert finished_at(tmp_path / "broken.ipynb") is None
