"""The llama.cpp server of our own (generation/llama_server.py), the notebooks' endpoint choice, and the length tolerance
that small models need.

Without llama-cpp-python: the GGUF resolution, the install and fetch messages, a server process that dies or never
answers (a stand-in command in its place), and `length_tolerance` from the CLI down to the verdict, re-judged from a
response cache without a request. With it and the Qwen2.5-Coder-0.5B-Instruct GGUF: the real server, sent two requests
at once through our openai backend with no API key, answers both whole; skipped with a reason otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthembed import cli
from synthembed.errors import SynthembedError
from synthembed.generation import llama_server
from synthembed.generation.commands import Endpoint, open_endpoint
from synthembed.generation.llama_server import LlamaServer, check_server_packages, resolve_gguf
from synthembed.generation.llm import ChatRequest, ChatResponse
from synthembed.generation.parsing import judge
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.generation.rundir import check_out_dir, read_config
from synthembed.paths import models_dir

QWEN = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
QWEN_GGUF = "qwen2.5-coder-0.5b-instruct.gguf"


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def models(tmp_path, monkeypatch):
    """An empty models folder as SYNTHEMBED_MODELS."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("SYNTHEMBED_MODELS", str(folder))
    return folder


def _python(code: str) -> list[str]:
    """A launcher that runs `code` in place of llama_cpp.server (the server's arguments follow in sys.argv)."""
    return [sys.executable, "-c", code]


# --- the model and the packages --------------------------------------------------------------------------------------


def test_gguf_resolves_from_a_path_a_name_a_hub_id_or_the_folder_beside_it(models):
    gguf = models / QWEN_GGUF
    gguf.write_bytes(b"GGUF")
    (models / "qwen2.5-coder-0.5b-instruct").mkdir()
    for name in (QWEN, "qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct", str(gguf),
                 str(models / "qwen2.5-coder-0.5b-instruct")):
        assert resolve_gguf(name) == gguf.resolve(), name


def test_a_missing_gguf_names_the_fetch_command_and_an_unknown_name_the_known_ones(models):
    with pytest.raises(SynthembedError, match=r"qwen2.5-coder-0.5b-instruct.gguf.*get-models .* --only qwen2.5-coder"):
        resolve_gguf(QWEN)
    with pytest.raises(SynthembedError, match="no GGUF file at"):
        resolve_gguf(models / "absent.gguf")
    with pytest.raises(SynthembedError, match="neither a .gguf file nor .*HuggingFaceTB/SmolLM2-135M-Instruct"):
        resolve_gguf("some-org/some-model")


def test_missing_llama_cpp_names_the_wheel_and_missing_server_packages_the_extra(models, monkeypatch):
    (models / QWEN_GGUF).write_bytes(b"GGUF")
    monkeypatch.setattr(llama_server, "find_spec", lambda name: None)
    with pytest.raises(SynthembedError, match=r"llama-cpp-python is not installed.*pip install \.\./shared/wheels/llama_cpp_python-.*\.whl && pip install -e '\.\[llama\]'"):
        check_server_packages()
    with pytest.raises(SynthembedError, match="llama-cpp-python is not installed"):
        LlamaServer(QWEN).start()  # before anything is launched
    monkeypatch.setattr(llama_server, "find_spec", lambda name: None if name in ("uvicorn", "sse_starlette") else object())
    with pytest.raises(SynthembedError, match=r"needs uvicorn, sse_starlette: pip install -e '\.\[llama\]'"):
        check_server_packages()


def test_the_command_line_switches_interruption_off_and_names_the_model(models):
    (models / QWEN_GGUF).write_bytes(b"GGUF")
    server = LlamaServer(QWEN, n_ctx=1024, port=5555)
    argv = server.argv()
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    pairs = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert pairs == {"--model": str((models / QWEN_GGUF).resolve()), "--model_alias": QWEN, "--host": "127.0.0.1",
                     "--port": "5555", "--n_ctx": "1024", "--n_threads": str(os.cpu_count()),
                     "--interrupt_requests": "False"}
    assert LlamaServer(models / QWEN_GGUF).alias == "qwen2.5-coder-0.5b-instruct"  # a path: the file's stem


# --- starting and stopping -----------------------------------------------------------------------------------------


def test_a_server_that_exits_is_an_error_with_the_end_of_its_log(models, tmp_path):
    (models / QWEN_GGUF).write_bytes(b"GGUF")
    server = LlamaServer(QWEN, command=_python("import sys; print('gguf_init: failed to load model'); sys.exit(3)"),
                         log_path=tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(SynthembedError, match=r"(?s)exited with code 3 .*gguf_init: failed to load model"):
        server.start()
    assert time.monotonic() - started < 20 and server.process is None
    assert "failed to load model" in (tmp_path / "server.log").read_text()  # the log its error names is kept


def test_a_server_that_never_answers_is_stopped_at_the_deadline_even_if_it_ignores_sigterm(models, tmp_path):
    (models / QWEN_GGUF).write_bytes(b"GGUF")
    code = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(os.getpid(), flush=True); "
            "time.sleep(60)")
    server = LlamaServer(QWEN, command=_python(code), startup_timeout=1.0, grace=0.5, log_path=tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(SynthembedError, match=r"did not answer http://127\.0\.0\.1:\d+/v1/models within 1 s"):
        server.start()
    assert time.monotonic() - started < 15
    pid = int((tmp_path / "server.log").read_text().split()[0])
    with pytest.raises(ProcessLookupError):  # killed after the grace period, and reaped
        os.kill(pid, 0)


# A server that answers GET /v1/models (and nothing else) on the --port it is given: the start-up handshake.
_MODELS_SERVER = """
import http.server, json, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
alias = sys.argv[sys.argv.index("--model_alias") + 1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": alias}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_start_returns_once_the_models_route_answers_and_close_stops_the_process(models):
    import urllib.request

    (models / QWEN_GGUF).write_bytes(b"GGUF")
    with LlamaServer(QWEN, command=_python(_MODELS_SERVER), startup_timeout=30) as server:
        process, log_dir = server.process, server.log_path.parent
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as reply:
            assert json.load(reply)["data"][0]["id"] == QWEN
    assert process.poll() is not None and server.process is None
    assert not log_dir.exists()  # a clean close removes the temporary log


# --- a server that ends with its kernel ------------------------------------------------------------------------------

# A parent that starts a child through popen_with_parent from a thread that ends at once (PR_SET_PDEATHSIG follows the
# thread that forked), waits a moment, says "ready" and whether the child runs, and sleeps until it is killed. argv: "prctl" or "guardian", the
# file the child writes its pid to.
_PARENT = """
import sys, threading, time
from synthembed.generation import llama_server
if sys.argv[1] == "guardian":
    llama_server._prctl = None  # as where there is no PR_SET_PDEATHSIG
child = "import os, pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text(str(os.getpid())); time.sleep(120)"
started = []
thread = threading.Thread(target=lambda: started.append(llama_server.popen_with_parent([sys.executable, "-c", child,
                                                                                       sys.argv[2]])))
thread.start()
thread.join()
time.sleep(0.5)  # the thread is gone; the child must not be
print("ready", started[0].poll() is None, flush=True)
time.sleep(120)
"""

# A kernel that starts a LlamaServer (the models-route stand-in in place of llama_cpp.server) and is then SIGKILLed.
_KERNEL = """
import sys, time
from synthembed.generation.llama_server import LlamaServer
server = LlamaServer(sys.argv[1], command=[sys.executable, "-c", sys.argv[2]], startup_timeout=60).start()
print(server.process.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:  # a zombie (ended, not yet reaped by whoever adopted it) has ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    return not _running(pid)


def _kill_parent_and_check(parent: subprocess.Popen, child: int) -> None:
    assert _running(child), "the child ended before its parent"
    parent.kill()  # SIGKILL: no atexit hook, no finally
    parent.wait()
    gone = _gone_within(child, 2.0)
    if not gone:
        os.kill(child, 9)  # don't leave it to the next test
    assert gone, "the child outlived its SIGKILLed parent by 2 s"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["prctl", "guardian"])
def test_a_child_started_with_its_parent_ends_within_two_seconds_of_a_sigkill(how, tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, how, str(pid_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().split() == ["ready", "True"], "the child ended with the thread that started it"
        deadline = time.monotonic() + 30
        while not pid_file.is_file() or not pid_file.read_text():  # the child may start slowly on a busy machine
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)  # the child ran on after the thread that started it had ended
        _kill_parent_and_check(parent, int(pid_file.read_text()))
    finally:
        parent.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_llama_server_ends_with_a_sigkilled_kernel(models, tmp_path):
    (models / QWEN_GGUF).write_bytes(b"GGUF")
    kernel = subprocess.Popen([sys.executable, "-c", _KERNEL, str(models / QWEN_GGUF), _MODELS_SERVER],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _kill_parent_and_check(kernel, int(kernel.stdout.readline()))
    finally:
        kernel.kill()


def test_endpoints_cap_concurrency_and_say_where_requests_go():
    endpoint = Endpoint("http://127.0.0.1:1/v1", False, max_concurrency=2, timeout=600.0)
    assert endpoint.concurrency(16) == 2 and endpoint.concurrency(1) == 1
    assert endpoint.generate_options(16) == {"base_url": "http://127.0.0.1:1/v1", "concurrency": 2, "timeout": 600.0,
                                             "backoff": 1.0, "stand_in": False}
    assert Endpoint(None, False).concurrency(16) == 16
    with pytest.raises(SynthembedError, match="needs a model"):
        open_endpoint("llama-cpp")
    with pytest.raises(SynthembedError, match="'llama-cpp'"):
        open_endpoint("vllm")
    with open_endpoint("loopback") as endpoint:
        assert endpoint.stand_in and endpoint.base_url.endswith("/v1")
        assert endpoint.backend(8).base_url == endpoint.base_url  # no OPENAI_API_KEY needed for a local server


# --- the length tolerance -----------------------------------------------------------------------------------------


def _short_long_reply(words: int) -> str:
    doc = " ".join(random.Random(words).choice(["river", "stone", "market", "winter", "garden", "letter"])
                   for _ in range(words))
    return json.dumps({"user_query": "how do rivers shape valleys", "positive_document": doc,
                       "hard_negative_document": "Gardens need water and light to grow well in the spring."})


def test_a_short_document_is_rejected_at_the_default_tolerance_and_kept_at_zero():
    placeholders = {"language": "English", "num_words": "300", "query_length": "5 to 15 words"}
    reply = _short_long_reply(40)  # a 0.5B model's "300-word" document
    assert judge("short-long", reply, "stop", None, placeholders)[:2] == ("reject", "too_short")
    assert judge("short-long", reply, "stop", None, placeholders, 2.0)[:2] == ("reject", "too_short")
    assert judge("short-long", _short_long_reply(150), "stop", None, placeholders, 2.0)[0] == "ok"  # 150 * 2 >= 300
    assert judge("short-long", reply, "stop", None, placeholders, 0)[0] == "ok"
    assert judge("short-long", reply, "stop", None, placeholders, 8.0)[0] == "ok"


def test_the_tolerance_is_checked_and_recorded_only_where_it_differs_from_the_default(tmp_path):
    with pytest.raises(SynthembedError, match="length_tolerance must be 0"):
        GenerateConfig(length_tolerance=0.5)
    assert "length_tolerance" not in GenerateConfig().as_dict()
    assert GenerateConfig(length_tolerance=0).as_dict()["length_tolerance"] == 0.0
    # A run written before the setting existed (no length_tolerance in its config.json) resumes at the default.
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"plan": GenerateConfig().as_dict(), "runtime": {}}))
    assert check_out_dir(run, GenerateConfig(length_tolerance=2.0).as_dict()) is True
    with pytest.raises(SynthembedError, match="length_tolerance: run has None, asked for 0.0"):
        check_out_dir(run, GenerateConfig(length_tolerance=0).as_dict())


class ShortWriter:
    """A backend whose documents are far too short: task lists for brainstorms, 12-word documents for examples."""

    name = "short-writer"
    batch_size = 1
    concurrency = 1

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        self.calls += len(requests)
        out = []
        for r in requests:
            if json.loads(r.marker)["stage"] == "brainstorm":
                text = json.dumps([f"Given a question about topic {i}, retrieve passages that answer it." for i in range(20)])
            else:
                words = random.Random(r.seed).choices(["river", "stone", "market", "winter", "garden", "letter",
                                                       "valley", "morning", "bridge", "forest"], k=12)
                text = json.dumps({"user_query": f"question number {r.seed} about rivers",
                                   "positive_document": " ".join(words).capitalize() + ".",
                                   "hard_negative_document": f"Document {r.seed} is about something else entirely."})
            out.append(ChatResponse(text, "stop", prompt_tokens=10, completion_tokens=20, model=r.model))
        return out

    async def aclose(self) -> None:
        return None


def test_a_run_judged_again_at_another_tolerance_comes_from_the_cache_alone(tmp_path):
    config = dict(model="small-llm", task_types="short-long", tasks_per_type=2, examples_per_task=3,
                  languages="English", seed=3)
    backend = ShortWriter()
    first = generate(tmp_path / "strict", GenerateConfig(**config), backend=backend, progress=False)
    assert first["accepted"] == 0 and first["rejections"] == {"too_short": 6}
    sent = backend.calls
    with pytest.raises(SynthembedError, match="length_tolerance"):  # one run, one rule: no resume at another tolerance
        generate(tmp_path / "strict", GenerateConfig(**config, length_tolerance=0), backend=backend, progress=False)
    # Replay: every answer from the first run's cache (a request it lacks would be an error, never a call).
    assert cli.main(["generate", "--out", str(tmp_path / "loose"), "--backend", "replay", "--cache",
                     str(tmp_path / "strict" / "cache.sqlite"), "--length-tolerance", "0", "--quiet"]) == 0
    loose = json.loads((tmp_path / "loose" / "stats.json").read_text())
    assert loose["accepted"] == 6 and loose["rejections"] == {} and loose["session"]["requests"] == 0
    assert read_config(tmp_path / "loose")["plan"]["length_tolerance"] == 0.0
    assert backend.calls == sent
    assert loose["tokens"] == first["tokens"]  # the same replies, judged again


# --- the real server -----------------------------------------------------------------------------------------------


def _real_gguf() -> Path:
    try:
        check_server_packages()
    except SynthembedError as err:
        pytest.skip(str(err))
    gguf = models_dir() / QWEN_GGUF
    if not gguf.is_file():
        pytest.skip(f"{gguf} is absent; fetch it with: python3 ../shared/models/get-models {models_dir()} "
                    "--only qwen2.5-coder-0.5b-instruct")
    return gguf


@pytest.mark.slow
def test_the_real_server_answers_two_requests_at_once_both_whole():
    """Two requests in flight against one llama context: the second queues behind the first, and both come back whole
    (stopped by the model, not cut off or failed), each answering its own prompt."""
    from synthembed.generation.backends import OpenAIBackend

    _real_gguf()
    prompts = ["Name three primary colours, separated by commas, and nothing else.",
               "Name the first three planets from the sun, separated by commas, and nothing else."]
    with LlamaServer(QWEN, n_ctx=512, startup_timeout=60) as server:
        backend = OpenAIBackend(base_url=server.base_url, concurrency=2, timeout=60)  # no OPENAI_API_KEY in the env

        async def both():
            requests = [ChatRequest(QWEN, [{"role": "user", "content": p}], temperature=0.0, max_tokens=48, seed=1)
                        for p in prompts]
            try:
                return await asyncio.gather(*(backend.complete([r]) for r in requests))
            finally:
                await backend.aclose()

        replies = [answer[0] for answer in asyncio.run(both())]
    for reply in replies:
        assert reply.finish_reason == "stop" and reply.text.strip() and reply.completion_tokens > 0, reply
        assert reply.model == QWEN
    assert "red" in replies[0].text.lower() and "mercury" in replies[1].text.lower()


@pytest.mark.slow
def test_batch_files_answered_by_the_real_model_come_back_into_the_run(tmp_path):
    """--backend batch-files on a real model: Qwen2.5-Coder-0.5B behind llama.cpp answers each batch file (through
    testing/run_batch, in vllm run-batch's place), and the reruns import them: brainstorm, then generation, then a
    complete run whose every example came from the model, at no cost. By hand at --tasks-per-type 2: 16 requests, 11
    accepted, 42 s."""
    from synthembed.generation.batch_jobs import pending_commands
    from synthembed.testing.run_batch import run_batch_file

    _real_gguf()
    out = tmp_path / "run"
    args = ["generate", "--out", str(out), "--backend", "batch-files", "--model", QWEN, "--tasks-per-type", "1",
            "--examples-per-task", "1", "--languages", "English,German", "--length-tolerance", "0", "--quiet"]  # fmt: skip
    answered = 0
    with LlamaServer(QWEN, n_ctx=4096, startup_timeout=60) as server:
        for _ in range(4):
            code = cli.main(args)
            if code != 3:
                break
            for command in pending_commands(out):
                words = command.split()
                answered += run_batch_file(words[words.index("-i") + 1], words[words.index("-o") + 1], server.base_url)
    stats = json.loads((out / "stats.json").read_text())
    assert code == 0 and stats["complete"] and stats["cost_usd"] == 0
    assert answered == stats["requests"]["brainstorm"] + stats["requests"]["generate_planned"]
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert examples and all(e["meta"]["model"] == QWEN for e in examples)
