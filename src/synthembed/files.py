"""Atomic file writes shared by every stage: a reader (or a resumed run) sees the old file or the whole new one,
never half of one, even after a SIGKILL.

    from synthembed.files import write_json_atomic
    write_json_atomic("runs/gen/stats.json", {"examples": 12})
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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
    """Write `obj` as indented UTF-8 JSON (non-JSON values such as paths as their str), atomically.

    >>> write_json_atomic("/tmp/x.json", {"a": 1}).read_text().splitlines()[1].strip()
    '"a": 1'
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    return replace_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
