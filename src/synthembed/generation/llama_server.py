"""A llama.cpp server of our own: llama-cpp-python's OpenAI-compatible server for one GGUF, started and stopped here.

    from synthembed.generation.llama_server import LlamaServer
    with LlamaServer("Qwen/Qwen2.5-Coder-0.5B-Instruct", n_ctx=4096) as server:   # or a path to any .gguf file
        generate("runs/gen", GenerateConfig(model=server.alias), base_url=server.base_url, concurrency=2)

The model is a path to a .gguf file, or a name or hub id of a real model that get-models fetches (paths.LOCAL_MODELS):
its GGUF lies in paths.models_dir() as `<folder>.gguf`, beside the transformers folder converted from it.

Two facts about llama-cpp-python's server (0.3.x) shape how it is run:
- It holds one llama context behind a lock: requests queue, one is answered at a time (llama.cpp's own `llama-server
  -np N` has parallel slots; this one has none). A client should keep few requests in flight (SERVER_CONCURRENCY), or a
  queued one waits past its timeout and is sent again while the server still works on it.
- `--interrupt_requests` defaults to True: a new request cancels a streamed reply in progress (in 0.3.36 only streamed
  ones: the non-streamed requests of our openai backend run to their end either way). It is switched off here, so that
  every client of the server gets whole replies.

The server ends with the process that started it, however that ends: close(), the atexit hook, and also a SIGKILLed
notebook kernel, whose atexit hooks never run (`popen_with_parent`: PR_SET_PDEATHSIG on Linux, a guardian elsewhere).

Installing it: the wheel in ../shared/wheels (`pip install ../shared/wheels/llama_cpp_python-*.whl`), then the server's
own packages (`pip install -e ".[llama]"`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import ctypes.util
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from ..errors import SynthembedError
from ..paths import LOCAL_MODELS, fetch_hint, local_folder_name, models_dir, repo_root

# The import names of llama-cpp-python and of the packages its server needs (pyproject's `llama` extra).
SERVER_PACKAGES = ("llama_cpp", "uvicorn", "fastapi", "pydantic_settings", "sse_starlette", "starlette_context")
SERVER_CONCURRENCY = 2  # requests in flight: one answered, one queued behind it, so the server never idles between
LOG_TAIL_CHARS = 3000


def install_hint() -> str:
    """How to install llama-cpp-python and its server's packages, naming the wheel in ../shared/wheels when it is there."""
    wheels = sorted((repo_root().parent / "shared" / "wheels").glob("llama_cpp_python-*.whl"))
    wheel = f"../shared/wheels/{wheels[-1].name}" if wheels else "../shared/wheels/llama_cpp_python-*.whl"
    return f"pip install {wheel} && pip install -e '.[llama]'"


def check_server_packages() -> None:
    """Raise a SynthembedError naming what to install when llama-cpp-python or one of its server's packages is missing."""
    missing = [name for name in SERVER_PACKAGES if find_spec(name) is None]
    if "llama_cpp" in missing:
        raise SynthembedError(f"llama-cpp-python is not installed; install it with: {install_hint()}")
    if missing:
        raise SynthembedError(f"llama-cpp-python's server needs {', '.join(missing)}: pip install -e '.[llama]'")


def resolve_gguf(model: str | Path) -> Path:
    """The GGUF file of `model`: a path to a .gguf file, a transformers folder with its GGUF beside it, or a name or hub
    id of a real model get-models fetches (its `<folder>.gguf` in models_dir()).

    >>> resolve_gguf("Qwen/Qwen2.5-Coder-0.5B-Instruct")  # doctest: +SKIP
    PosixPath('/root/.cache/synthembed/models/qwen2.5-coder-0.5b-instruct.gguf')
    """
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if path.is_file():
            return path.resolve()
        raise SynthembedError(f"no GGUF file at {path}")
    if path.is_dir() and path.with_name(path.name + ".gguf").is_file():  # get-models' layout: <name>/ beside <name>.gguf
        return path.with_name(path.name + ".gguf").resolve()
    folder = local_folder_name(str(model))
    if folder is None:
        raise SynthembedError(f"{str(model)!r} is neither a .gguf file nor one of the models get-models fetches "
                              f"({', '.join(LOCAL_MODELS)})")
    gguf = models_dir() / f"{folder}.gguf"
    if not gguf.is_file():
        raise SynthembedError(f"no GGUF of {str(model)!r} in {models_dir()} ({gguf.name}); {fetch_hint(str(model))}")
    return gguf


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return text[-chars:].strip() or "(the log is empty)"


# --- a child process that ends with its parent -------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _load_prctl():
    """libc's prctl, looked up here in the parent (a forked child should call it, not load a library), or None off
    Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


_prctl = _load_prctl()


class _LastingThread:
    """A daemon thread that runs the functions handed to it, one at a time, for as long as the process lives.

    PR_SET_PDEATHSIG signals the child when the *thread* that forked it ends, not the process: a server started from a
    short-lived thread (a ThreadPoolExecutor's, llm.run_async's inside Jupyter) would be stopped when that thread
    finished. Children started from this thread end only with the process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn):
        with self._lock:  # (re)started on first use, and in a forked child, which has no threads
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="synthembed-spawner", daemon=True)
                self._thread.start()
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            fn, done = self._jobs.get()
            try:
                done.set_result(fn())
            except BaseException as err:  # handed back to the caller's thread
                done.set_exception(err)


_SPAWNER = _LastingThread()

# Where PR_SET_PDEATHSIG is missing: a guardian process between us and the child. It forwards SIGTERM and SIGINT,
# checks every 0.2 s whether its parent (us) is still there (an orphan's parent id changes), stops the child when not,
# and exits with the child's code. argv: parent pid, seconds the child gets to stop, then the child's command.
_GUARDIAN = """
import os, signal, subprocess, sys, time
parent, grace, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
child = subprocess.Popen(argv)
def stop(*_):
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
    sys.exit(child.wait())
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while child.poll() is None:
    if os.getppid() != parent:
        stop()
    time.sleep(0.2)
sys.exit(child.returncode)
"""


def popen_with_parent(argv: Sequence[str], grace: float = 10.0, **popen_kwargs) -> subprocess.Popen:
    """subprocess.Popen(argv, **popen_kwargs) for a child that ends when this process ends, however it ends (SIGKILL
    included, where no atexit hook runs).

    On Linux the child asks the kernel for SIGTERM when its parent goes (prctl PR_SET_PDEATHSIG, set between fork and
    exec; it survives exec), and is started from a thread that lives as long as the process (_LastingThread); a parent
    gone before the prctl took effect is caught by comparing the parent id. Elsewhere a guardian process stands between
    (_GUARDIAN): the Popen's pid is then the guardian's, which passes SIGTERM on and stops the child within `grace`
    seconds."""
    parent = os.getpid()
    if _prctl is not None:
        prctl, sigterm = _prctl, int(signal.SIGTERM)

        def end_with_parent() -> None:  # in the child, between fork and exec
            prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the prctl: nobody will send the signal
                os._exit(1)

        return _SPAWNER.run(lambda: subprocess.Popen(list(argv), preexec_fn=end_with_parent, **popen_kwargs))
    guarded = [sys.executable, "-c", _GUARDIAN, str(parent), str(max(0.1, grace / 2)), *argv]
    return subprocess.Popen(guarded, **popen_kwargs)


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server for one GGUF, in a subprocess on a free local port.

    `start()` returns once GET /v1/models answers; a server that exits or does not answer within `startup_timeout`
    seconds is a SynthembedError with the tail of its log. `close()` stops it (SIGTERM, then SIGKILL after `grace`
    seconds). The log goes to a file (`log_path`, default a temporary folder, removed on close unless the start failed),
    never to a pipe that could fill up and stall the server.

    `alias` is the model name the server answers to and reports in replies (default: `model` as given, or the file's
    stem for a path). `command` replaces `python -m llama_cpp.server` (tests start something else).
    """

    def __init__(self, model: str | Path, *, alias: str | None = None, n_ctx: int = 4096, n_threads: int | None = None,
                 host: str = "127.0.0.1", port: int | None = None, log_path: str | Path | None = None,
                 startup_timeout: float = 120.0, grace: float = 10.0, command: Sequence[str] | None = None):
        self.gguf = resolve_gguf(model)
        is_path = Path(model).expanduser().exists()
        self.alias = alias or (self.gguf.stem if is_path else str(model))
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads or os.cpu_count() or 1)
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.command = list(command) if command is not None else None
        self._temp_dir: Path | None = None
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def argv(self) -> list[str]:
        """The server's command line."""
        launcher = self.command if self.command is not None else [sys.executable, "-m", "llama_cpp.server"]
        return [*launcher, "--model", str(self.gguf), "--model_alias", self.alias, "--host", self.host,
                "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
                "--interrupt_requests", "False"]

    def start(self) -> LlamaServer:
        if self.process is not None:
            return self
        if self.command is None:
            check_server_packages()
        self.port = self.port or free_port(self.host)
        if self.log_path is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="synthembed-llama-"))
            self.log_path = self._temp_dir / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own handle; ours can close
            self.process = popen_with_parent(self.argv(), self.grace, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)  # fmt: skip
        # A kernel that exits without close() stops it here; one that is SIGKILLed, through popen_with_parent.
        atexit.register(self.close)
        try:
            self._wait_until_ready()
        except BaseException:
            self._temp_dir = None  # keep the log its error names
            self.close()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise SynthembedError(f"the llama.cpp server for {self.gguf.name} exited with code {code} before it "
                                      f"answered; the end of its log ({self.log_path}):\n{_tail(self.log_path)}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise SynthembedError(f"the llama.cpp server for {self.gguf.name} did not answer {self.base_url}/models "
                                      f"within {self.startup_timeout:g} s; the end of its log ({self.log_path}):\n"
                                      f"{_tail(self.log_path)}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def close(self) -> None:
        atexit.unregister(self.close)
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(self.grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
            self.log_path = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
