"""Atomic file writes shared by every stage: a reader (or a resumed run) sees the old file or the whole new one,
never half of one, even after a SIGKILL.

    from synthembed.files import write_json_atomic
    write_json_atomic("runs/gen/stats.json", {"examples": 12})
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import SynthembedError


def replace_atomic(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path`.

    >>> replace_atomic("/tmp/x.txt", lambda tmp: tmp.write_text("hi")).read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share a temp file
    try:
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
