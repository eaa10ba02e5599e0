"""Atomic file writes shared by every stage: a reader (or a resumed run) sees the old file or the whole new one,
never half of one, even after a SIGKILL; and the lock that keeps a run folder to one process at a time.

    from synthembed.files import write_json_atomic
    write_json_atomic("runs/gen/stats.json", {"examples": 12})
    with folder_lock("runs/gen", "synthembed generate"): ...   # a second process gets a SynthembedError naming this one
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import SynthembedError, writing

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def replace_atomic(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path`.

    >>> replace_atomic("/tmp/x.txt", lambda tmp: tmp.write_text("hi")).read_text()
    'hi'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share a temp file
    try:
        with writing(path):  # a full disk or read-only folder: a StorageError naming `path`, not a traceback
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented UTF-8 JSON (non-JSON values such as paths as their str), atomically. NaN and infinity,
    which json.dumps would write as bare `NaN` (not JSON: strict parsers and other languages reject the file), are
    written as null; a writer that must say so calls `without_non_finite` first.

    >>> write_json_atomic("/tmp/x.json", {"a": 1}).read_text().splitlines()[1].strip()
    '"a": 1'
    """
    text = json.dumps(without_non_finite(obj)[0], indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n"
    return replace_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def without_non_finite(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """(`obj` with every NaN or infinite float replaced by None, where each was as a path like `tasks[0].main_score`).

    >>> without_non_finite({"a": [1.0, float("nan")]})
    ({'a': [1.0, None]}, ['a[1]'])
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where]
    found: list[str] = []
    if isinstance(obj, dict):
        clean = {}
        for key, value in obj.items():
            clean[key], inner = without_non_finite(value, f"{where}.{key}" if where else str(key))
            found += inner
        return clean, found
    if isinstance(obj, list | tuple):
        items = []
        for i, value in enumerate(obj):
            item, inner = without_non_finite(value, f"{where}[{i}]")
            items.append(item)
            found += inner
        return items, found
    return obj, found


def check_writable(path: str | Path, what: str) -> None:
    """Raise a SynthembedError naming `what` (an option such as "--out") unless a file or folder can be created at
    `path`: a probe file is created and removed in `path` itself where it is a folder, else in its nearest existing
    parent, and nothing else is written. Lets a
    command fail before hours of work instead of at its last write.

    >>> check_writable("/proc/x/y.json", "--out")  # doctest: +SKIP
    Traceback (most recent call last):
    synthembed.errors.SynthembedError: --out /proc/x/y.json: cannot write there ...
    """
    path = Path(path).expanduser().absolute()
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise SynthembedError(f"{what} {path}: cannot write there ({err})") from None


# --- one process per folder --------------------------------------------------------------------------------------------

# The lock file a folder's holder keeps open (and flock()s) while it works in it; it says who holds it. Other code that
# asks whether a folder is empty ignores it (folder_entries): a holder killed by SIGKILL leaves it behind, harmless.
LOCK_FILE = ".synthembed.lock"


def folder_entries(folder: str | Path) -> list[Path]:
    """The entries of `folder` other than its lock file ([] where there is no such folder)."""
    folder = Path(folder)
    return [p for p in folder.iterdir() if p.name != LOCK_FILE] if folder.is_dir() else []


def _holder(path: Path) -> str:
    """Who holds the lock at `path`, in words, from what it wrote there."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not written its pid yet)"
    return f"{info.get('command', 'another process')} (pid {info['pid']} on {info.get('host', '?')}, since {info.get('started', '?')})"


@contextmanager
def folder_lock(folder: str | Path, command: str, enabled: bool = True, option: str = "--out") -> Iterator[Path]:
    """Hold `folder` (created if absent) for this process alone while the block runs, or raise a SynthembedError naming
    the process that holds it. `command` (e.g. "synthembed generate") is what the holder is called in that message;
    `option` names the folder in messages.

    The lock is flock() on LOCK_FILE inside the folder: the kernel drops it when its holder ends in any way, SIGKILL
    included, so a killed run never leaves a stale lock. The file records the holder's pid, host and start time for the
    message, and is removed on release (as is the folder where this call created it and left it empty, so a run that
    could not start leaves nothing behind). `enabled=False` (the other ranks of a multi-process training run) does
    nothing.

    >>> with folder_lock("/tmp/run", "synthembed generate"):  # doctest: +SKIP
    ...     with folder_lock("/tmp/run", "synthembed generate"):
    ...         pass
    Traceback (most recent call last):
    synthembed.errors.SynthembedError: --out /tmp/run is in use by synthembed generate (pid 4242 on host, since ...) ...
    """
    folder = Path(folder).expanduser()
    if not enabled or fcntl is None:  # no flock (Windows): no lock
        yield folder
        return
    if folder.exists() and not folder.is_dir():
        raise SynthembedError(f"{option} {folder} is a file; a folder is needed there")
    created = not folder.exists()
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, option, folder, command)
    except OSError as err:
        raise SynthembedError(f"{option} {folder}: cannot write there ({err})") from None
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": started}
        os.write(fd, json.dumps(holder).encode())
        yield folder
    finally:
        # Unlinked while still held: a process that opened the old file meanwhile sees that it is gone and retries.
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty (or taken by another process): left as it is
                folder.rmdir()


def _acquire(path: Path, option: str, folder: Path, command: str) -> int:
    """An open descriptor of `path` holding its exclusive flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            time.sleep(0.05)  # the holder writes who it is right after taking the lock
            raise SynthembedError(
                f"{option} {folder} is in use by {_holder(path)}; one folder serves one process at a time (two would mix "
                f"their files), so this {command} did not start: wait for that one to end, stop it, or choose another "
                f"{option}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # locked a file its holder removed on release: lock the one at `path` now
