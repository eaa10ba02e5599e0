"""The Batch API's files, as the openai-batch backend (batch.py) writes and reads them in a run directory: the JSONL
request and result formats, batch input files written a line at a time within the API's limits, and the index of which
batch file holds which request.

    OUT/batches.json                  one entry per batch file: its upload, batch id, status, whether it was imported
    OUT/batches/00001.jsonl           a batch input file: {"custom_id", "method", "url", "body"} per line
    OUT/batches/index.sqlite          request key -> the newest batch file that holds it
    OUT/batches/00001.output.jsonl    a batch's downloaded results, while they are put in the cache (then deleted)

The same input files run on your own GPUs through vLLM's offline batch runner, which reads this format and writes the
result format that `read_result_line` parses ({"id", "custom_id", "response": {"status_code", "body"}, "error"});
`--backend batch-files` reads its results from beside the input file:
    vllm run-batch -i OUT/batches/00001.jsonl -o OUT/batches/00001.results.jsonl --model mistralai/Mistral-7B-Instruct-v0.2
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import iter_jsonl
from ..errors import SynthembedError
from ..taskgroups import MARKER_HEADER
from . import rundir
from .llm import ChatRequest, ChatResponse, LLMError, RetryableError
from .tokens import bytes_counter, prompt_tokens

BATCH_ENDPOINT = "/v1/chat/completions"
INDEX_FILE = "index.sqlite"
# Line errors that a later batch may not meet again; any other error status is the request's own fault.
PASSING_CODES = ("batch_expired", "batch_cancelled", "batch_failed", "no_answer", "bad_response", "rate_limit_exceeded")


API_MAX_REQUESTS, API_MAX_BYTES = 50_000, 200_000_000  # what OpenAI takes in one batch input file
# Requests per file by default: a fifth of what the API takes, because a batch's answers come all at once when it ends
# and the run judges them then: at 10,000 the last one is judged 15 s after it ends, at 50,000 in 66 s
# (docs/benchmarks.md, 100k requests); smaller files also bring answers in sooner and resubmit less per failure.
FILE_REQUESTS = 10_000


@dataclass(frozen=True)
class BatchLimits:
    """What one batch file may hold: FILE_REQUESTS requests and 200 MB unless told otherwise, within OpenAI's limits
    (50,000 requests, 200 MB); with `max_tokens`, at most that many input tokens as estimated by tokens.prompt_tokens
    at the byte rule (a share of the provider's enqueued-token limit: batch_queue.py)."""

    max_requests: int = FILE_REQUESTS
    max_bytes: int = API_MAX_BYTES
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_requests <= API_MAX_REQUESTS:
            raise SynthembedError(f"a batch file holds 1 to {API_MAX_REQUESTS:,} requests, not {self.max_requests!r} "
                                  "(--batch-file-requests)")  # fmt: skip
        if not 1 <= self.max_bytes <= API_MAX_BYTES:
            raise SynthembedError(f"a batch file holds 1 to {API_MAX_BYTES:,} bytes, not {self.max_bytes!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise SynthembedError(f"a batch file's input tokens must be at least 1, not {self.max_tokens!r}")


def batch_line(request: ChatRequest, marker: bool = False) -> dict[str, Any]:
    """One line of a batch input file: {"custom_id", "method", "url", "body"} with custom_id the request's cache key.

    `marker` adds the request's marker as the line's "headers" (what the openai backend sends as an HTTP header): only
    for the loopback stand-in, which answers from it; OpenAI's files hold the four documented keys alone.

    >>> sorted(batch_line(ChatRequest("m", [{"role": "user", "content": "hi"}])))
    ['body', 'custom_id', 'method', 'url']
    """
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [dict(m) for m in request.messages],
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    line = {"custom_id": request.key(), "method": "POST", "url": BATCH_ENDPOINT, "body": body}
    if marker and request.marker is not None:
        line["headers"] = {MARKER_HEADER: request.marker}
    return line


def request_of_line(obj: dict[str, Any]) -> ChatRequest:
    """The ChatRequest a batch input line was written from, checked against its custom_id (the request's key), so that
    an answer is never cached under another request.

    >>> line = batch_line(ChatRequest("m", [{"role": "user", "content": "hi"}], seed=3))
    >>> request_of_line(line).key() == line["custom_id"]
    True
    """
    body = obj.get("body") or {}
    try:
        request = ChatRequest(
            model=body["model"],
            messages=body["messages"],
            temperature=body.get("temperature", 1.0),
            top_p=body.get("top_p", 1.0),
            max_tokens=body.get("max_tokens"),
            seed=body.get("seed"),
            marker=(obj.get("headers") or {}).get(MARKER_HEADER),
        )
    except (KeyError, TypeError) as err:
        raise SynthembedError(f"batch line {obj.get('custom_id')!r} has no chat request body ({err})") from None
    if request.key() != obj.get("custom_id"):
        raise SynthembedError(f"batch line {obj.get('custom_id')!r}: its body is not the request of that custom_id")
    return request


def read_result_line(obj: dict[str, Any], request: ChatRequest) -> ChatResponse | LLMError:
    """A line of a batch output or error file as the answer to `request`: a ChatResponse, a RetryableError (worth a
    follow-up batch) or an LLMError (final)."""
    error = obj.get("error") or {}
    response = obj.get("response") or {}
    status = response.get("status_code")
    if status == 200 and not error:
        return _chat_response(response.get("body"), request)
    body_error = (response.get("body") or {}).get("error") if isinstance(response.get("body"), dict) else None
    code = error.get("code") or (body_error or {}).get("code") or (f"http_{status}" if status else "no_answer")
    message = error.get("message") or (body_error or {}).get("message") or f"status {status}"
    text = f"batch line failed ({code}): {message}"
    if code in PASSING_CODES or status is None or status >= 500 or status in (408, 409, 429):
        return RetryableError(text, "rate_limit" if status == 429 else str(code))
    return LLMError(text, f"http_{status}")


def _chat_response(body: Any, request: ChatRequest) -> ChatResponse | RetryableError:
    """The ChatResponse of a chat.completion body, checked by the openai client's own model of one; a body that is not
    one (or has no choice) is a passing fault of this line, as it is for the openai backend."""
    from openai.types.chat import ChatCompletion

    try:
        reply = ChatCompletion.model_validate(body)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        return RetryableError(f"malformed response body: {err}"[:300], "bad_response")
    if not reply.choices:
        return RetryableError("response without choices", "bad_response")
    choice, usage = reply.choices[0], reply.usage
    return ChatResponse(
        text=choice.message.content,
        finish_reason=choice.finish_reason or "stop",
        refusal=choice.message.refusal,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        model=reply.model or request.model,
        system_fingerprint=reply.system_fingerprint,
    )


# --- writing input files -----------------------------------------------------------------------------------------------


class BatchFileWriter:
    """Batch input files written a line at a time, each within `limits`: a full file is closed and handed to `finish`
    (its temporary path, line count, byte count, sha256, custom_ids and estimated input tokens), which gives it its
    number and records it.

    Only one file is open at a time, on disk, so writing 500k requests holds one file's custom_ids in memory. A
    request whose line alone is over the byte limit is refused (`add` returns False); one over the token limit goes in
    a file of its own (the limit is a share of the queue's: batch_queue.FILE_SHARE).
    """

    def __init__(self, folder: Path, tag: str, limits: BatchLimits,
                 finish: Callable[[Path, int, int, str, list[str], int], None], marker: bool = False):  # fmt: skip
        self.folder, self.tag, self.limits, self.finish, self.marker = folder, tag, limits, finish, marker
        self._handle = None
        self._path: Path | None = None
        self._keys: list[str] = []
        self._bytes = 0
        self._tokens = 0
        self._sha = hashlib.sha256()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, request: ChatRequest) -> bool:
        line = (json.dumps(batch_line(request, self.marker), ensure_ascii=False) + "\n").encode("utf-8")
        tokens = prompt_tokens(request.messages, bytes_counter)  # cheap, and the same wherever the file is written
        max_tokens = self.limits.max_tokens
        if len(line) > self.limits.max_bytes:
            return False
        full = (len(self._keys) >= self.limits.max_requests or self._bytes + len(line) > self.limits.max_bytes
                or (max_tokens is not None and self._tokens + tokens > max_tokens))  # fmt: skip
        if self._keys and full:
            self.close()
        if self._handle is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._path = self.folder / f".open-{self.tag}.jsonl.tmp"
            self._handle = self._path.open("wb")
            self._keys, self._bytes, self._tokens, self._sha = [], 0, 0, hashlib.sha256()
        self._handle.write(line)
        self._sha.update(line)
        self._bytes += len(line)
        self._tokens += tokens
        self._keys.append(request.key())
        return True

    def close(self) -> None:
        """Close the open file, if any, and hand it to `finish`."""
        if self._handle is None:
            return
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        self.finish(self._path, len(self._keys), self._bytes, self._sha.hexdigest(), self._keys, self._tokens)
        self._keys = []


def drop_unfinished(folder: Path) -> None:
    """Remove input files a killed session left half written: their requests are in no batch, and are planned again."""
    if folder.is_dir():
        for path in folder.glob(".open-*.jsonl.tmp"):
            path.unlink(missing_ok=True)


def iter_input_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a batch input file, one at a time."""
    for _, obj in iter_jsonl(path):
        yield obj


# --- reading result files ----------------------------------------------------------------------------------------------


class ResultLines:
    """A batch's downloaded output and error files, looked up by custom_id without holding their lines: the offset of
    each line is kept (about 100 bytes a line), the line is read when asked for. An answer in the output file wins
    over an error for the same custom_id."""

    def __init__(self, paths: list[Path]):
        self._handles = [path.open("rb") for path in paths if path.is_file()]
        self._where: dict[str, tuple[int, int]] = {}
        for number, handle in enumerate(self._handles):
            while True:
                offset = handle.tell()
                raw = handle.readline()
                if not raw:
                    break
                if not raw.strip():
                    continue
                key = json.loads(raw).get("custom_id")
                if key is not None and key not in self._where:
                    self._where[key] = (number, offset)

    def get(self, key: str) -> dict[str, Any] | None:
        found = self._where.get(key)
        if found is None:
            return None
        handle = self._handles[found[0]]
        handle.seek(found[1])
        return json.loads(handle.readline())

    def close(self) -> None:
        for handle in self._handles:
            handle.close()


# --- the index: which batch file holds a request -----------------------------------------------------------------------


class BatchIndex:
    """request key -> the number of the newest batch file that holds it, in SQLite beside the batch files (a dict of
    500k keys would be the largest thing the run holds). Built from the input files where a run from before the index
    has none."""

    def __init__(self, folder: Path, entries: list[dict[str, Any]], out: Path):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / INDEX_FILE
        fresh = not path.is_file()
        self.conn = sqlite3.connect(path, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS lines (key TEXT PRIMARY KEY, batch INTEGER NOT NULL)")
        self.conn.commit()
        if fresh:
            for entry in entries:
                path = rundir.batch_input_path(out, entry["file"])
                if path.is_file():
                    self.add(entry["n"], (obj["custom_id"] for obj in iter_input_lines(path)))

    def add(self, number: int, keys) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO lines VALUES (?, ?)", ((key, number) for key in keys))
        self.conn.commit()

    def get(self, key: str) -> int | None:
        row = self.conn.execute("SELECT batch FROM lines WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.conn.close()
