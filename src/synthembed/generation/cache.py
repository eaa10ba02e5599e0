"""The response cache: every answered chat request in one SQLite file, so a rerun costs nothing and a killed run resumes.

    from synthembed.generation.cache import ResponseCache
    cache = ResponseCache("runs/gen/cache.sqlite")
    cache.get(request)          # a ChatResponse with cached=True, or None
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SynthembedError, storage_error
from .llm import ChatRequest, ChatResponse


class ResponseCache:
    """SQLite file of answered requests, keyed by `ChatRequest.key()`. Each response is committed as it arrives
    (WAL journal), so a run killed at any moment keeps every answer it paid for.

    >>> cache = ResponseCache(":memory:")
    >>> cache.get(ChatRequest("m", [{"role": "user", "content": "hi"}])) is None
    True
    """

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = str(path)
        if readonly and not (self.path == ":memory:" or Path(self.path).is_file()):
            raise SynthembedError(f"response cache {self.path}: no such file")
        with self._guard():
            if not readonly and self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, check_same_thread=False)
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                # durable across a killed process, which is what resume needs
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, text TEXT, "
                    "finish_reason TEXT, refusal TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, model TEXT, "
                    "created REAL, fingerprint TEXT)"
                )
                self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
                self.conn.commit()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's failures as errors that name the file and what to do: a full disk or read-only folder (a
        StorageError), a file that is not a response cache or is damaged. A misuse of SQLite (a bug) is not caught."""
        try:
            yield
        except OSError as err:  # making its folder
            raise storage_error(err, self.path, "response cache") or err from None
        except sqlite3.DatabaseError as err:  # OperationalError too
            if isinstance(err, sqlite3.ProgrammingError | sqlite3.IntegrityError):
                raise
            stored = storage_error(err, self.path, "response cache")
            if stored is not None:
                raise stored from None
            if "disk I/O error" in str(err) or "unable to open" in str(err):
                raise SynthembedError(f"response cache {self.path}: cannot read or write it ({err}: a full disk, a "
                                      "folder that is not writable, or a failing device)") from None  # fmt: skip
            if "locked" in str(err):
                raise SynthembedError(f"response cache {self.path}: {err} (another process is writing it)") from None
            raise SynthembedError(
                f"response cache {self.path} is damaged or not a response cache ({err}). Move it away (or delete it "
                "with its -wal and -shm files) to start a new one: the answers it held will be asked for again"
            ) from None

    def get(self, request: ChatRequest) -> ChatResponse | None:
        with self._guard():
            row = self.conn.execute(
                "SELECT text, finish_reason, refusal, prompt_tokens, completion_tokens, model, fingerprint, created "
                "FROM responses WHERE key = ?",
                (request.key(),),
            ).fetchone()
        if row is None:
            return None
        text, finish_reason, refusal, prompt_tokens, completion_tokens, model, fingerprint, created = row
        return ChatResponse(text, finish_reason or "stop", refusal, prompt_tokens or 0, completion_tokens or 0,
                            model or "", True, system_fingerprint=fingerprint, created=created)

    def has(self, key: str) -> bool:
        """Whether the request with this key (ChatRequest.key()) has an answer here."""
        with self._guard():
            return self.conn.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def put(self, request: ChatRequest, response: ChatResponse) -> None:
        with self._guard():
            self.conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              _row(request, response))  # fmt: skip
            self.conn.commit()

    def put_many(self, pairs: list[tuple[ChatRequest, ChatResponse]]) -> None:
        """Many answers in one commit (a batch's results); an answer the cache holds already stays as it is, with its
        time, so that one paid for by an earlier session never counts as this session's."""
        with self._guard():
            self.conn.executemany("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                  [_row(request, response) for request, response in pairs])  # fmt: skip
            self.conn.commit()

    def __len__(self) -> int:
        with self._guard():
            return self.conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def get_meta(self, name: str) -> str | None:
        with self._guard():
            try:
                row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            except sqlite3.OperationalError as err:
                if "no such table" not in str(err):
                    raise
                return None  # a cache from before the meta table
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self._guard():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
            self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def _row(request: ChatRequest, response: ChatResponse) -> tuple:
    return (
        request.key(),
        json.dumps(request.as_dict(), ensure_ascii=False),
        response.text,
        response.finish_reason,
        response.refusal,
        response.prompt_tokens,
        response.completion_tokens,
        response.model,
        time.time(),
        response.system_fingerprint,
    )
