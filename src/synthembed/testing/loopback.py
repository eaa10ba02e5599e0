"""A loopback HTTP server that speaks the OpenAI chat-completions protocol and answers with scripted responses and
scripted faults: the LLM of the tests, the benchmark and the smoke study. It is a stand-in, not a language model.

    from synthembed.testing.loopback import Faults, LoopbackServer
    with LoopbackServer(faults=Faults(rate_limit=0.1, malformed=0.05), latency=0.2) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url          # http://127.0.0.1:<port>/v1
        ...                                                      # any OpenAI client works against it

    python -m synthembed.testing.loopback --port 8000                    # or run it on its own

How it knows what a request asks for: from the request's marker, not from the prompt's wording. The prompt builder
sets the marker (prompts.Prompt.marker: stage, task group, placeholders, as one line of ASCII JSON) and the openai
backend sends it in the `X-Synthembed-Prompt` HTTP header (taskgroups.MARKER_HEADER). A header, because a real endpoint
ignores headers it does not know and its model never sees them: the messages, the cache key and the prompt's sha256
stay exactly what they would be without it. Rewording a template therefore cannot break the stand-in. A request
without the header is a plain chat and gets a few sentences. What it answers is scripted.py's; everything is a pure
function of (seed, model, messages) and the marker: the same request always gets the same answer.

Faults, each at its own rate, chosen by a hash of the request (so they are deterministic too):
- transport faults, on a request's first attempt only (a retry succeeds): 429 with Retry-After, 500, a hang that
  outlasts the client's timeout; and the raw ones of raw_faults.py (garbage bytes, a reset mid-body, a trickled
  answer, a body of several MB, bytes that are not UTF-8, a lone surrogate, a 401 that echoes the API key);
- content faults, on every attempt: malformed JSON, JSON inside a ``` fence, a truncated answer (finish_reason
  "length"), a refusal (`message.refusal` set, content null), text in the wrong language.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..taskgroups import MARKER_HEADER, STAND_IN_FINGERPRINT
from .batch_api import BatchAPI
from .raw_faults import RAW_FAULTS, RawReply, Served, faulty_body, prompt_sha256, request_key, send
from .scripted import Asked, TextSource, approx_tokens, read_request, scripted_answer

TRANSPORT_FAULTS = ("rate_limit", "server_error", "hang")
CONTENT_FAULTS = ("malformed", "fenced", "truncated", "refusal", "wrong_language")


@dataclass
class Faults:
    """Rates (0..1) of each scripted fault; transport and content faults are drawn independently."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    hang: float = 0.0
    malformed: float = 0.0
    fenced: float = 0.0
    truncated: float = 0.0
    refusal: float = 0.0
    wrong_language: float = 0.0
    garbage: float = 0.0  # the raw faults (raw_faults.py), drawn with the transport faults
    reset: float = 0.0
    trickle: float = 0.0
    huge: float = 0.0
    bad_utf8: float = 0.0
    lone_surrogate: float = 0.0
    unauthorized: float = 0.0
    brainstorm: bool = True  # whether content faults also hit brainstorm requests (tests switch it off for exact comparisons)
    retry_after: float = 0.05  # seconds the 429 asks the client to wait
    hang_seconds: float = 30.0  # how long a hung request stalls; the client's timeout should be shorter
    trickle_seconds: float = 30.0  # how long a trickled answer takes to arrive in all
    huge_bytes: int = 4_000_000  # the size of a huge reply's text

    def __post_init__(self) -> None:
        for group in (TRANSPORT_FAULTS + RAW_FAULTS, CONTENT_FAULTS):
            total = sum(getattr(self, name) for name in group)
            if total > 1.0 or any(getattr(self, name) < 0 for name in group):
                raise ValueError(f"fault rates {group} must be >= 0 and sum to at most 1, got {total}")

    @classmethod
    def uniform(cls, rate: float, **overrides: float) -> Faults:
        """Every fault at the same `rate`."""
        return cls(**{name: rate for name in TRANSPORT_FAULTS + CONTENT_FAULTS}, **overrides)


def _unit(seed: int, salt: str, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(u: float, faults: Faults, names: tuple[str, ...]) -> str | None:
    edge = 0.0
    for name in names:
        edge += getattr(faults, name)
        if u < edge:
            return name
    return None


# --- the server ------------------------------------------------------------------------------------------------------


class LoopbackServer:
    """The OpenAI chat-completions protocol on 127.0.0.1, served from a background thread.

    Endpoints: POST /v1/chat/completions (non-streaming) and GET /v1/models. `served` counts what it answered: requests,
    brainstorms, generations by group, and each fault.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None, latency: float = 0.0,
                 seed: int = 0, data_dir: str | Path | None = None, model: str = "loopback"):
        self.host = host
        self.port = port
        self.faults = faults or Faults()
        self.latency = latency
        self.seed = seed
        self.model = model
        self.texts = TextSource(data_dir)
        self.served: Counter = Counter()
        self._attempts: Counter = Counter()
        self.log: list[Served] = []  # every chat attempt, with its fault and whether it reached the client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.batch_api = BatchAPI(self)  # the files and batches endpoints (batch_api.py)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._serve, name="loopback-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("loopback server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and self._thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            except (RuntimeError, TimeoutError):
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._thread = None

    async def _shutdown(self) -> None:
        self._server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port, backlog=512))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                path, _, query = path.partition("?")
                status, extra, payload = await self._route(method, path, headers, body, raw=True, query=query)
                raw = payload if isinstance(payload, RawReply) else None
                # bytes: a file's content (batch_api), sent as it is
                data = raw.body if raw else payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode("utf-8")
                head_out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", "Content-Type: application/json",
                            f"Content-Length: {len(data)}", "Connection: keep-alive"]
                head_out += [f"{k}: {v}" for k, v in extra.items()]
                head = ("\r\n".join(head_out) + "\r\n\r\n").encode("latin-1")
                if raw is not None:  # a chat reply: sent as its raw fault says, and logged as delivered or not
                    if not await send(writer, head, raw, self.faults.trickle_seconds):
                        break
                else:
                    writer.write(head + data)
                    await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except RuntimeError:  # loop shutting down
                pass

    async def _route(self, method: str, path: str, headers: dict[str, str],
                     body: bytes, raw: bool = False, query: str = "") -> tuple[int, dict[str, str], Any]:
        """(status, extra headers, payload). `raw`: the caller owns the socket (_handle), so a chat reply comes back as
        a RawReply (bytes, its raw fault, its log record); else (a batch line) as a dict, never with a raw fault."""
        if self.batch_api.handles(path):
            return await self.batch_api.route(method, path, headers, body, query)
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {}, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "loopback"}]}
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, _error(f"no route {method} {path}", "not_found")
        try:
            request = json.loads(body)
            messages = request["messages"]
            prompt = "\n\n".join(str(m.get("content") or "") for m in messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            return 400, {}, _error("body must be a JSON chat-completions request with messages", "invalid_request_error")
        if request.get("stream"):
            return 400, {}, _error("the loopback server does not stream", "invalid_request_error")
        model = str(request.get("model") or self.model)
        key = request_key(model, messages, request.get("seed"))
        self.served["requests"] += 1
        self._attempts[key] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        asked = read_request(headers.get(MARKER_HEADER.lower()), prompt)
        served = Served(key, asked.kind, prompt_sha256(messages), request.get("seed"), delivered=not raw)
        self.log.append(served)
        failed = await self._transport_fault(key, served, raw)
        if failed is not None:
            return failed
        completion = self._completion(asked, model, key, prompt, served)
        if served.outcome in RAW_FAULTS:
            status, data = faulty_body(served.outcome, completion, headers, random.Random(key), self.faults.huge_bytes)
            return status, {}, RawReply(data, served.outcome, served)
        if raw:
            return 200, {}, RawReply(json.dumps(completion, ensure_ascii=False).encode("utf-8"), None, served)
        return 200, {}, completion

    async def _transport_fault(self, key: str, served: Served,
                               raw: bool) -> tuple[int, dict[str, str], dict[str, Any]] | None:  # fmt: skip
        """The scripted 429 or 500 of a request's first attempt (or a hang, then None), else None; a raw fault drawn
        is noted in `served` (and sent by _handle), or dropped where there is no socket of the request's own."""
        transport = _pick(_unit(self.seed, "transport", key), self.faults, TRANSPORT_FAULTS + RAW_FAULTS)
        if transport is None or self._attempts[key] != 1 or (transport in RAW_FAULTS and not raw):
            return None
        self.served[transport] += 1
        served.outcome = transport
        if transport in RAW_FAULTS:
            return None
        if transport == "rate_limit":
            return 429, {"Retry-After": f"{self.faults.retry_after:g}"}, _error("Rate limit reached (scripted)", "rate_limit_exceeded")
        if transport == "server_error":
            return 500, {}, _error("The server had an error (scripted)", "server_error")
        await asyncio.sleep(self.faults.hang_seconds)  # "hang": the client should have timed out by now
        return None

    def _completion(self, asked: Asked, model: str, key: str, prompt: str, served: Served | None = None) -> dict[str, Any]:
        """The chat.completion body: the scripted answer, with this request's content fault applied."""
        content_fault = _pick(_unit(self.seed, "content", key), self.faults, CONTENT_FAULTS)
        rng = random.Random(int(key[:16], 16) ^ self.seed)
        self.served[asked.kind] += 1
        if asked.task_type:
            self.served[f"{asked.kind}:{asked.task_type}"] += 1
        if asked.kind == "brainstorm" and (content_fault == "wrong_language" or not self.faults.brainstorm):
            content_fault = None  # task lists are English by design
        text: str | None = scripted_answer(asked, rng, self.texts, wrong_language=content_fault == "wrong_language")
        refusal, finish = None, "stop"
        if content_fault is not None:
            self.served[content_fault] += 1
            if served is not None:
                served.content_fault = content_fault
        if content_fault == "malformed":
            # a closing bracket dropped and a key left unquoted: no repair can make that JSON without guessing
            text = re.sub(r'"([A-Za-z0-9_]+)":', r"\1:", text.rstrip()[:-1], count=1)
        elif content_fault == "fenced":
            text = f"Here is the JSON:\n```json\n{text}\n```"
        elif content_fault == "truncated":
            text, finish = text[: max(1, int(len(text) * 0.6))], "length"
        elif content_fault == "refusal":
            text, refusal = None, "I'm sorry, but I can't help with that request."
        prompt_tokens = approx_tokens(prompt)
        completion_tokens = approx_tokens(text or refusal or "")
        return {
            "id": f"chatcmpl-loopback-{key[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": STAND_IN_FINGERPRINT,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the loopback stand-in LLM (OpenAI chat-completions protocol).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=0)
    for name in TRANSPORT_FAULTS + RAW_FAULTS + CONTENT_FAULTS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, help=f"rate of the {name} fault")
    args = parser.parse_args(argv)
    faults = Faults(**{name: getattr(args, name) for name in TRANSPORT_FAULTS + RAW_FAULTS + CONTENT_FAULTS})
    with LoopbackServer(port=args.port, faults=faults, latency=args.latency, seed=args.seed) as server:
        print(f"loopback stand-in LLM at {server.base_url} (faults: {asdict(faults)}); Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
