"""The files and batches endpoints of OpenAI's Batch API, for the loopback stand-in (loopback.py routes them here), with
scripted batch faults, so that the openai-batch backend is tested offline.

    from synthembed.testing.batch_api import BatchFaults
    with LoopbackServer() as server:
        server.batch_api.faults = BatchFaults(failed_line=0.1, expire_batches=1, hold_batches=1)
        ...                                   # files.create / batches.create / batches.retrieve / files.content
        server.batch_api.release()            # let the held batches run

Endpoints: POST /v1/files (multipart: purpose, file), GET /v1/files/{id}, GET /v1/files/{id}/content, POST /v1/batches,
GET /v1/batches (a list, newest first), GET /v1/batches/{id}, POST /v1/batches/{id}/cancel.

A batch validates its input file (JSONL lines with a unique custom_id, method POST, the batch's url, a body), then
answers each line through the stand-in's own chat route (its latency, transport faults and scripted answers; the line's
"headers" carry the marker an HTTP request would), LINES_IN_PARALLEL at a time over all batches, and writes an output
file of the answered lines and an error file of the others, in OpenAI's result format.

Scripted faults (BatchFaults):
- failed_line: rate of lines, drawn by a hash of the custom_id, answered 500 the first time their request is seen (a
  follow-up batch gets the answer);
- expire_batches: the first N batches created answer half their lines, then expire (the rest: "batch_expired" errors);
- hold_batches: the first N batches created stay "in_progress" until `release()`, as across a client's restart;
- enqueued_token_limit: the organization's batch queue limit: a batch whose input tokens, with those of the batches
  validated and not yet ended, would pass it fails validation with OpenAI's `token_limit_exceeded` error, naming the
  limit. The stand-in counts a line's input tokens as its messages' UTF-8 bytes / `bytes_per_token` plus 7, its own
  tokenizer: a `bytes_per_token` below the client's estimate (4) counts more tokens than the client expects;
- fail_creates, fail_retrieves: the next N batches.create (nothing is made) or batches.retrieve calls answer 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..taskgroups import MARKER_HEADER

LINES_IN_PARALLEL = 256  # requests the stand-in answers at once over all its batches: its capacity is this / latency
_ROUTE = re.compile(r"^/v1/(files|batches)(?:/([^/]+))?(?:/(content|cancel))?/?$")


@dataclass
class BatchFaults:
    failed_line: float = 0.0
    expire_batches: int = 0
    hold_batches: int = 0
    enqueued_token_limit: int = 0  # 0: none
    bytes_per_token: float = 4.0
    fail_creates: int = 0
    fail_retrieves: int = 0


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: {name: (filename, bytes)}."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(b"--" + match.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        disposition = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            parts[name.group(1)] = (filename.group(1) if filename else None, data.removesuffix(b"\r\n"))
    return parts


class BatchAPI:
    """Files and batches of one stand-in server (a loopback.LoopbackServer, which owns this object: its chat route
    answers the lines). `created` counts batches.create calls, `uploads` the files made (uploaded or written)."""

    def __init__(self, server: Any, faults: BatchFaults | None = None, lines_in_parallel: int = LINES_IN_PARALLEL):
        self.server = server
        self.faults = faults or BatchFaults()
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.created = 0
        self.uploads = 0
        self.lines_in_parallel = lines_in_parallel
        self._seen: set[str] = set()  # custom_ids answered before (failed_line hits a request's first time only)
        self.enqueued: dict[str, int] = {}  # batch id -> input tokens, of the batches validated and not ended
        self.peak_enqueued = 0
        self.refused = 0  # batches failed for the enqueued-token limit
        self._released: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()

    @staticmethod
    def handles(path: str) -> bool:
        return bool(_ROUTE.match(path))

    def release(self) -> None:
        """Let held batches run (called from any thread)."""
        loop = self.server._loop
        if loop is not None and self._released is not None:
            loop.call_soon_threadsafe(self._released.set)
        self.faults.hold_batches = 0

    # --- routing ----------------------------------------------------------------------------------------------------

    async def route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                    query: str = "") -> tuple[int, dict, Any]:
        kind, ident, action = _ROUTE.match(path).groups()
        if kind == "files":
            if method == "POST" and ident is None:
                return self._upload(headers.get("content-type", ""), body)
            if method == "GET" and ident in self.files:
                return (200, {}, self.contents[ident]) if action == "content" else (200, {}, self.files[ident])
            return 404, {}, _error(f"no such file: {ident}", "not_found")
        if method == "POST" and ident is None:
            if self.faults.fail_creates > 0:  # refused before anything is made: the client's create fails
                self.faults.fail_creates -= 1
                return 500, {}, _error("The server had an error (scripted batches.create)", "server_error")
            return self._create(body)
        if method == "GET" and ident is None:
            return 200, {}, self._list(urllib.parse.parse_qs(query))
        batch = self.batches.get(ident or "")
        if batch is None:
            return 404, {}, _error(f"no such batch: {ident}", "not_found")
        if method == "POST" and action == "cancel":
            if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                batch["status"] = "cancelling"
                batch["cancelling_at"] = int(time.time())
            return 200, {}, batch
        if method == "GET" and action is None and self.faults.fail_retrieves > 0:
            self.faults.fail_retrieves -= 1
            return 500, {}, _error("The server had an error (scripted batches.retrieve)", "server_error")
        return (200, {}, batch) if method == "GET" and action is None else (404, {}, _error("no route", "not_found"))

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """A page of batches, newest first, as OpenAI pages them: `limit` (default 20) after the id `after`."""
        newest_first = list(reversed(self.batches.values()))  # created in this order, with a one-second clock
        limit = int((query.get("limit") or ["20"])[0])
        after = (query.get("after") or [None])[0]
        start = next((i + 1 for i, b in enumerate(newest_first) if b["id"] == after), len(newest_first)) if after else 0
        page = newest_first[start : start + limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(newest_first)}  # fmt: skip

    def _upload(self, content_type: str, body: bytes) -> tuple[int, dict, Any]:
        parts = _multipart(content_type, body)
        if "file" not in parts or parts.get("purpose", (None, b""))[1] != b"batch":
            return 400, {}, _error("a file and purpose=batch are required", "invalid_request_error")
        self.uploads += 1
        ident = f"file-loopback{self.uploads:06d}"
        filename, content = parts["file"]
        self.contents[ident] = content
        self.files[ident] = {
            "id": ident,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename or "upload.jsonl",
            "purpose": "batch",
            "status": "processed",
        }
        return 200, {}, self.files[ident]

    def _new_file(self, lines: list[dict[str, Any]], name: str) -> str | None:
        if not lines:
            return None
        self.uploads += 1
        ident = f"file-loopback{self.uploads:06d}"
        content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
        self.contents[ident] = content
        self.files[ident] = {
            "id": ident,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": "batch_output",
            "status": "processed",
        }
        return ident

    def _create(self, body: bytes) -> tuple[int, dict, Any]:
        try:
            request = json.loads(body)
            file_id, endpoint, window = request["input_file_id"], request["endpoint"], request["completion_window"]
        except (ValueError, KeyError, TypeError):
            return (
                400,
                {},
                _error("input_file_id, endpoint and completion_window are required", "invalid_request_error"),
            )
        if file_id not in self.files or endpoint != "/v1/chat/completions" or window != "24h":
            return (
                400,
                {},
                _error(f"bad batch: file {file_id}, endpoint {endpoint}, window {window}", "invalid_request_error"),
            )
        self.created += 1
        now = int(time.time())
        batch = {
            "id": f"batch_loopback{self.created:06d}",
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": request.get("metadata"),
        }
        self.batches[batch["id"]] = batch
        held = self.created <= self.faults.hold_batches
        expires = self.created <= self.faults.expire_batches
        task = asyncio.ensure_future(self._run(batch, held, expires))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return 200, {}, batch

    # --- running a batch --------------------------------------------------------------------------------------------

    def _validate(self, content: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the lines, the errors that fail the batch: OpenAI's {code, message, line})."""
        lines, errors, ids = [], [], set()
        for number, raw in enumerate(content.decode("utf-8", "replace").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "not JSON", "param": None, "line": number})
                continue
            ok = (
                isinstance(line, dict)
                and isinstance(line.get("custom_id"), str)
                and line.get("method") == "POST"
                and line.get("url") == "/v1/chat/completions"
                and isinstance(line.get("body"), dict)
            )
            if not ok or line["custom_id"] in ids:
                errors.append(
                    {
                        "code": "invalid_request",
                        "message": "each line needs a unique custom_id, method POST, "
                        "url /v1/chat/completions and a body",
                        "param": None,
                        "line": number,
                    }
                )
                continue
            ids.add(line["custom_id"])
            lines.append(line)
        return lines, errors

    async def _line(self, line: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(answered, the result line) of one request, through the stand-in's chat route."""
        custom_id = line["custom_id"]
        result: dict[str, Any] = {
            "id": f"batch_req_{hashlib.sha256(custom_id.encode()).hexdigest()[:24]}",
            "custom_id": custom_id,
            "response": None,
            "error": None,
        }
        first = custom_id not in self._seen
        self._seen.add(custom_id)
        draw = int(hashlib.sha256(f"{self.server.seed}:failed_line:{custom_id}".encode()).hexdigest()[:8], 16) / 2**32
        async with self._slots:
            if first and draw < self.faults.failed_line:
                self.server.served["batch_failed_line"] += 1
                status, payload = 500, _error("The server had an error (scripted batch line)", "server_error")
            else:
                marker = (line.get("headers") or {}).get(MARKER_HEADER)
                route_headers = {MARKER_HEADER.lower(): marker} if marker else {}
                status, _, payload = await self.server._route(
                    "POST", "/v1/chat/completions", route_headers, json.dumps(line["body"]).encode("utf-8")
                )
        result["response"] = {"status_code": status, "request_id": result["id"], "body": payload}
        return status == 200, result

    async def _run(self, batch: dict[str, Any], held: bool, expires: bool) -> None:
        content = self.contents[batch["input_file_id"]]
        lines, errors = self._validate(content)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.lines_in_parallel)
            self._released = asyncio.Event()
        if errors or not lines:
            batch.update(
                status="failed",
                failed_at=int(time.time()),
                errors={
                    "object": "list",
                    "data": errors or [{"code": "empty_file", "message": "no lines", "param": None, "line": None}],
                },
            )
            return
        if not self._enqueue(batch, lines):
            return
        try:
            await self._answer(batch, lines, held, expires)
        finally:
            self.enqueued.pop(batch["id"], None)

    def _input_tokens(self, line: dict[str, Any]) -> int:
        messages = line["body"].get("messages") or []
        text = sum(len(str(m.get("content") or "").encode("utf-8")) for m in messages if isinstance(m, dict))
        return int(text / self.faults.bytes_per_token) + 7

    def _enqueue(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> bool:
        """Count the batch's input tokens into the queue, or fail it as OpenAI does when they would pass the limit."""
        tokens = sum(self._input_tokens(line) for line in lines)
        limit = self.faults.enqueued_token_limit
        if limit and sum(self.enqueued.values()) + tokens > limit:
            self.refused += 1
            model = lines[0]["body"].get("model", "the model")
            message = (f"Enqueued token limit reached for {model} in organization org-loopback. Limit: {limit:,} "
                       "enqueued tokens. Please try again once some in_progress batches have been completed.")  # fmt: skip
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}]})  # fmt: skip
            return False
        self.enqueued[batch["id"]] = tokens
        self.peak_enqueued = max(self.peak_enqueued, sum(self.enqueued.values()))
        return True

    async def _answer(self, batch: dict[str, Any], lines: list[dict[str, Any]], held: bool, expires: bool) -> None:
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = len(lines)
        if held:
            await self._released.wait()
        todo = lines[: (len(lines) + 1) // 2] if expires else lines
        outputs: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []

        async def one(line: dict[str, Any]) -> None:
            if batch["status"] == "cancelling":
                return
            answered, result = await self._line(line)
            (outputs if answered else failures).append(result)
            batch["request_counts"]["completed" if answered else "failed"] += 1

        await asyncio.gather(*(one(line) for line in todo))
        done = {r["custom_id"] for r in outputs + failures}
        end = "expired" if expires else "cancelled" if batch["status"] == "cancelling" else "completed"
        for line in lines:
            if line["custom_id"] not in done and end != "completed":
                code = "batch_expired" if end == "expired" else "batch_cancelled"
                self.server.served[code] += 1
                failures.append(
                    {
                        "id": f"batch_req_{line['custom_id'][:24]}",
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": code, "message": f"the batch {end} first"},
                    }
                )
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        batch["output_file_id"] = self._new_file(outputs, f"{batch['id']}_output.jsonl")
        batch["error_file_id"] = self._new_file(failures, f"{batch['id']}_error.jsonl")
        batch.update(status=end, **{f"{end}_at": int(time.time())})
