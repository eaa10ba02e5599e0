"""The one exception type that the command line turns into a clear message and a non-zero exit.

Raise `SynthembedError` for bad input a user can fix (a missing file, a malformed line, an unknown setting); let genuine
bugs raise whatever they raise, so their tracebacks stay visible. A write that fails because of where it writes (a full
disk, a read-only file system, no permission) is the user's to fix too: `writing` turns it into a `StorageError`.

    with writing("runs/eval.json", "--out"):
        ...  # a full disk raises StorageError("--out runs/eval.json: cannot write there: no space left on the device ...")
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SynthembedError(Exception):
    """Bad input or a failed precondition, with a message that names the file, line or setting at fault."""


class StorageError(SynthembedError, OSError):
    """A write refused by the storage: the disk is full, the file system read-only, the folder not ours. An OSError
    too (with the cause's errno and the file), so code that falls back when a write fails (the embedding cache) still
    catches it."""

    def __init__(self, message: str, code: int | None, filename: str | None):
        super().__init__(code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


_FULL = "no space left on the device"
_REASONS = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than the file system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# Writers that report a storage failure as their own exception, with only text to go by: safetensors (Rust's io error,
# "... (os error 28)"), torch.save's zip writer ("unexpected pos 576 vs 534", what a short write looks like to it),
# SQLite ("database or disk is full", "attempt to write a readonly database").
_TEXT = [
    (re.compile(r"no space left|os error 28|database or disk is full|unexpected pos \d+ vs \d+|file write failed", re.I),
     errno.ENOSPC),
    (re.compile(r"quota exceeded|os error 122", re.I), errno.EDQUOT),
    (re.compile(r"read-only file system|os error 30|readonly database", re.I), errno.EROFS),
    (re.compile(r"permission denied|os error 13", re.I), errno.EACCES),
]  # fmt: skip


def storage_error(
    err: BaseException, path: str | Path | None = None, what: str = "", write: bool = True
) -> StorageError | None:
    """The StorageError for `err` where the storage caused it, naming `path` (else the file `err` names) and `what`
    writes there (an option such as "--out", or "checkpoint"); None for any other error, which keeps its traceback.
    `write=False`: not known to be a write (a permission error may come from a read), so the message does not say so.

    >>> str(storage_error(OSError(errno.ENOSPC, "No space left on device"), "runs/eval.json", "--out"))
    '--out runs/eval.json: cannot write there: no space left on the device; free some space, or write elsewhere'
    >>> storage_error(ValueError("bad value")) is None
    True
    """
    if isinstance(err, StorageError):
        return err
    if isinstance(err, SynthembedError):  # already says what is wrong
        return None
    code = err.errno if isinstance(err, OSError) and err.errno in _REASONS else None
    if code is None:
        code = next((c for pattern, c in _TEXT if pattern.search(str(err))), None)
    if code is None:
        return None
    where = path if path is not None else getattr(err, "filename", None)
    named = f"{what} {where}" if what and where else (what or str(where or "a file"))
    if code in (errno.EACCES, errno.EPERM) and not write:
        message = f"{named}: {_REASONS[code]}"
    else:
        hint = "free some space, or write elsewhere" if code in (errno.ENOSPC, errno.EDQUOT) else "write elsewhere"
        message = f"{named}: cannot write there: {_REASONS[code]}; {hint}"
    return StorageError(message, code, str(where) if where else None)


@contextmanager
def writing(path: str | Path | None, what: str = "") -> Iterator[None]:
    """Run the block; an error the storage caused (see storage_error) leaves it as a StorageError naming `path`."""
    try:
        yield
    except Exception as err:
        converted = storage_error(err, path, what)
        if converted is None or converted is err:
            raise
        raise converted from err
