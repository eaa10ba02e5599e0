"""OpenAI's Batch API as a backend (`--backend openai-batch`): requests go out in JSONL files, answers come back within
24 hours at half the list price, and land in the run's response cache like any other backend's.

    synthembed generate --out runs/gen --backend openai-batch --model gpt-4o-mini --tasks-per-type 4
    synthembed generate --out runs/gen                     # after a kill: polls the same batches, sends nothing twice

How it works, through the official client: each chunk of requests the LLMClient hands over is written to batch files
(OUT/batches/NNNNN.jsonl, within BatchLimits: requests and bytes per file), uploaded (files.create, purpose "batch"),
submitted (batches.create, endpoint /v1/chat/completions, completion window 24h) and polled (batches.retrieve) until the
batch ends; its output and error files (files.content) become ChatResponses, keyed back by custom_id, which is the
request's cache key. Lines that failed for a passing reason (429, 5xx, an expired or cancelled batch, a line with no
answer) go out again in a follow-up batch, `resubmits` times; a 4xx rejection is final.

Resuming: OUT/batches.json (rundir) records every batch file with its upload, its batch id and status, written
atomically before and after each step. A new session maps each request it still needs to the latest batch that holds
it and waits for that batch; only requests in no batch are sent. A file uploaded but not yet submitted is matched against
the account's recent batches (batches.list) by its input file id before it is submitted, so a kill between submitting
and recording does not submit it twice.

Cost is counted at batch prices (`price_factor`, applied to the price table by pipeline.generate). `--max-cost` is
checked between chunks of up to 50,000 requests: a batch once submitted is paid whole. Progress: a "batches" bar of
lines answered over lines submitted, with how many batches are in each status (where stderr is a terminal).

The same files run on your own GPUs through vLLM's offline batch runner, which reads and writes this format:
    vllm run-batch -i OUT/batches/00001.jsonl -o results.jsonl --model mistralai/Mistral-7B-Instruct-v0.2
(`read_result_line` parses its output lines: {"id", "custom_id", "response": {"status_code", "body"}, "error"}).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from ..taskgroups import MARKER_HEADER
from . import rundir
from .llm import ChatRequest, ChatResponse, LLMError, RetryableError, openai_credentials, redact

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
BATCH_PRICE_FACTOR = 0.5  # the Batch API's price: half the list price of the same model
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Line errors that a later batch may not meet again; any other error status is the request's own fault.
PASSING_CODES = ("batch_expired", "batch_cancelled", "batch_failed", "no_answer", "bad_response", "rate_limit_exceeded")


@dataclass(frozen=True)
class BatchLimits:
    """What one batch file may hold: OpenAI's limits (50,000 requests, 200 MB) unless told otherwise."""

    max_requests: int = 50_000
    max_bytes: int = 200_000_000


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


class OpenAIBatchBackend:
    """The Batch API behind the LLMClient: `complete(requests)` returns when every request's batch has ended.

    `state_dir` is the run directory (batches.json and the batch files go there); `poll_interval` seconds between
    batches.retrieve calls; `resubmits` follow-up batches for lines that failed for a passing reason; `markers` sends each
    request's marker along (the loopback stand-in only); `max_in_flight` chunks of requests submitted at once.
    """

    name = "openai-batch"
    price_factor = BATCH_PRICE_FACTOR

    def __init__(
        self,
        state_dir: str | Path,
        base_url: str | None = None,
        limits: BatchLimits | None = None,
        poll_interval: float = 30.0,
        resubmits: int = 1,
        markers: bool = False,
        max_in_flight: int = 64,
        timeout: float = 120.0,
        progress: bool | None = None,
    ):
        import openai

        self.state_dir = Path(state_dir)
        self.limits = limits or BatchLimits()
        self.batch_size = self.limits.max_requests  # the LLMClient hands over chunks of at most one file
        self.concurrency = max(1, int(max_in_flight))
        self.poll_interval = poll_interval
        self.resubmits = max(0, int(resubmits))
        self.markers = markers
        base_url, api_key = openai_credentials(
            base_url, "openai-batch", "a server with the files and batches endpoints"
        )
        self.base_url = base_url
        self._api_key = api_key
        self._openai = openai
        # Reads may be retried by the client; batches.create never is (a lost reply would mean a second batch).
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=3, timeout=timeout)
        self._state: dict[str, Any] | None = None
        self._index: dict[str, int] = {}  # request key -> number of the latest batch file that holds it
        self._lock = asyncio.Lock()
        self._progress = progress
        self._bar = None
        self._counts: dict[int, tuple[int, int]] = {}  # batch file number -> (lines answered, lines)
        self.submitted = 0  # batches this session created (the stand-in's tests count them)

    # --- state: OUT/batches.json and the batch files -----------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self._state is None:
            self._state = rundir.read_batches(self.state_dir)
            for entry in self._state["batches"]:
                for key in rundir.batch_custom_ids(self.state_dir, entry["file"]):
                    self._index[key] = entry["n"]
        return self._state

    def _save(self) -> None:
        rundir.write_batches(self.state_dir, self._load())

    def _entry(self, n: int) -> dict[str, Any]:
        return self._load()["batches"][n - 1]

    def _files(self, requests: list[ChatRequest]) -> list[tuple[list[ChatRequest], bytes]]:
        """The requests as batch files within the limits: (requests, the file's bytes) each."""
        files: list[tuple[list[ChatRequest], bytes]] = []
        chunk: list[ChatRequest] = []
        lines: list[bytes] = []
        size = 0
        for request in requests:
            line = (json.dumps(batch_line(request, self.markers), ensure_ascii=False) + "\n").encode("utf-8")
            if chunk and (len(chunk) >= self.limits.max_requests or size + len(line) > self.limits.max_bytes):
                files.append((chunk, b"".join(lines)))
                chunk, lines, size = [], [], 0
            chunk.append(request)
            lines.append(line)
            size += len(line)
        if chunk:
            files.append((chunk, b"".join(lines)))
        return files

    async def _submit(self, requests: list[ChatRequest], content: bytes) -> int:
        """Write, record, upload and submit one batch file; its number."""
        async with self._lock:  # numbers and the state file, one writer at a time
            state = self._load()
            n = len(state["batches"]) + 1
            name = rundir.write_batch_input(self.state_dir, n, content)
            state["batches"].append(
                {
                    "n": n,
                    "file": name,
                    "requests": len(requests),
                    "bytes": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "input_file_id": None,
                    "batch_id": None,
                    "status": "written",
                    "output_file_id": None,
                    "error_file_id": None,
                    "written_at": time.time(),
                }
            )
            for request in requests:
                self._index[request.key()] = n
            self._save()
        await self._send(n)
        return n

    async def _send(self, n: int) -> None:
        """Upload and submit batch file `n` as far as it has not been (a resumed session finishes what a kill cut)."""
        entry = self._entry(n)
        if entry["batch_id"] is not None:
            return
        if entry["input_file_id"] is None:
            path = rundir.batch_input_path(self.state_dir, entry["file"])
            uploaded = await self._call(self._client.files.create(file=(path.name, path.read_bytes()), purpose="batch"))
            entry["input_file_id"] = uploaded.id
            self._save()
        else:  # uploaded by an earlier session: perhaps submitted too, with the reply lost to a kill
            page = await self._call(self._client.batches.list(limit=100))
            found = next((b for b in page.data if b.input_file_id == entry["input_file_id"]), None)
            if found is not None:
                entry.update(batch_id=found.id, status=found.status)
                self._save()
                return
        batch = await self._call(
            self._client.with_options(max_retries=0).batches.create(
                input_file_id=entry["input_file_id"],
                endpoint=BATCH_ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata={"synthembed_file": entry["file"], "synthembed_sha256": entry["sha256"]},
            )
        )
        self.submitted += 1
        entry.update(batch_id=batch.id, status=batch.status, submitted_at=time.time())
        self._save()

    async def _call(self, awaitable):
        """An API call; a failure becomes a RetryableError (the LLMClient tries the chunk again, which resumes from
        the state) or a SynthembedError (a refused key: every call would fail)."""
        openai = self._openai
        try:
            return await awaitable
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise SynthembedError(
                redact(f"the batch endpoint refused the request ({err.status_code}): {err.message}", self._api_key)
            ) from None
        except openai.APIStatusError as err:
            raise RetryableError(
                redact(f"batch API error {err.status_code}: {err.message}", self._api_key),
                "rate_limit" if err.status_code == 429 else "server_error",
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise RetryableError(f"batch API unreachable: {err}", "connection") from None

    # --- waiting ----------------------------------------------------------------------------------------------------

    def _show(self, n: int, done: int, total: int) -> None:
        """The batches' progress bar: lines answered of the lines waited for, and how many batches are in each status."""
        self._counts[n] = (done, total)
        if self._bar is None:
            from tqdm.auto import tqdm

            # progress None: shown where stderr is a terminal (tqdm's disable=None)
            self._bar = tqdm(
                total=0,
                desc="batches",
                unit="req",
                dynamic_ncols=True,
                disable=None if self._progress is None else not self._progress,
            )
        self._bar.total = sum(t for _, t in self._counts.values())
        self._bar.n = sum(d for d, _ in self._counts.values())
        statuses = Counter(self._entry(k)["status"] for k in self._counts)
        self._bar.set_postfix_str(", ".join(f"{s} {c}" for s, c in sorted(statuses.items())), refresh=False)
        self._bar.refresh()

    async def _wait(self, n: int) -> Any:
        """Poll batch `n` until it ends; the last Batch object."""
        await self._send(n)
        entry = self._entry(n)
        while True:
            batch = await self._call(self._client.batches.retrieve(entry["batch_id"]))
            counts = batch.request_counts
            changed = (batch.status, batch.output_file_id, batch.error_file_id) != (
                entry["status"],
                entry["output_file_id"],
                entry["error_file_id"],
            )
            if changed:
                entry.update(
                    status=batch.status, output_file_id=batch.output_file_id, error_file_id=batch.error_file_id
                )
                self._save()
            if counts is not None:
                self._show(n, counts.completed + counts.failed, counts.total or entry["requests"])
            if batch.status in TERMINAL:
                return batch
            await asyncio.sleep(self.poll_interval)

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = await self._call(self._client.files.content(file_id))
        return [json.loads(line) for line in content.text.splitlines() if line.strip()]

    async def _answers(self, n: int, wanted: dict[str, ChatRequest]) -> dict[str, ChatResponse | LLMError]:
        """The answers batch `n` holds for the `wanted` requests (keyed by custom_id); every wanted key gets one."""
        batch = await self._wait(n)
        answers: dict[str, ChatResponse | LLMError] = {}
        for obj in await self._lines(batch.output_file_id) + await self._lines(batch.error_file_id):
            key = obj.get("custom_id")
            if key in wanted and not isinstance(answers.get(key), ChatResponse):
                answers[key] = read_result_line(obj, wanted[key])
        errors = getattr(batch.errors, "data", None) or []
        why = "; ".join(f"{e.code}: {e.message}" for e in errors)[:300] or f"batch {batch.status}"
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled", "failed": "batch_failed"}.get(
            batch.status, "no_answer"
        )
        for key in wanted.keys() - answers.keys():
            answers[key] = RetryableError(f"no answer in batch {batch.id} ({why})", code)
        return answers

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse | LLMError]:
        """Every request's answer: from the batch that already holds it (a resumed session), else from new batches,
        with up to `resubmits` follow-up batches for lines that failed for a passing reason. A line that fails for good
        is an LLMError in its place (the LLMClient counts it; the next run tries it again)."""
        self._load()
        wanted = {r.key(): r for r in requests}
        results: dict[str, ChatResponse | LLMError] = {}
        held: dict[int, dict[str, ChatRequest]] = {}
        fresh: list[ChatRequest] = []
        for key, request in wanted.items():
            if key in self._index:
                held.setdefault(self._index[key], {})[key] = request
            else:
                fresh.append(request)
        # Batches of earlier sessions first: what they answered is taken; what failed there goes out again below,
        # with this session's own resubmits still to come.
        for answers in await asyncio.gather(*(self._answers(n, group) for n, group in held.items())):
            for key, answer in answers.items():
                if isinstance(answer, RetryableError):
                    fresh.append(wanted[key])
                else:
                    results[key] = answer
        held = {}
        for round_index in range(self.resubmits + 1):
            for chunk, content in self._files(fresh):
                if len(content) > self.limits.max_bytes:  # one request alone is over the limit
                    results[chunk[0].key()] = LLMError(
                        f"request of {len(content)} bytes exceeds the batch file limit of {self.limits.max_bytes}",
                        "too_large",
                    )
                    continue
                held[await self._submit(chunk, content)] = {r.key(): r for r in chunk}
            outcomes = await asyncio.gather(*(self._answers(n, group) for n, group in held.items()))
            fresh, held = [], {}
            for answers in outcomes:
                for key, answer in answers.items():
                    if isinstance(answer, RetryableError) and round_index < self.resubmits:
                        fresh.append(wanted[key])
                    else:
                        results[key] = answer
            if not fresh:
                break
        return [results[r.key()] for r in requests]

    async def aclose(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        await self._client.close()


def batch_prices(
    prices: dict[str, tuple[float, float]], factor: float = BATCH_PRICE_FACTOR
) -> dict[str, tuple[float, float]]:
    """The price table at batch prices (`factor` times each list price).

    >>> batch_prices({"gpt-4": (30.0, 60.0)})
    {'gpt-4': (15.0, 30.0)}
    """
    return {model: (inp * factor, out * factor) for model, out_inp in prices.items() for inp, out in [out_inp]}
