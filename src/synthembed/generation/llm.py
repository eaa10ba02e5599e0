"""The chat client: requests and responses, and the LLMClient that puts the response cache in front of a backend.

    from synthembed.generation.backends import OpenAIBackend
    from synthembed.generation.cache import ResponseCache
    from synthembed.generation.llm import ChatRequest, LLMClient
    client = LLMClient(OpenAIBackend(concurrency=16), cache=ResponseCache("runs/gen/cache.sqlite"), max_cost=5.0)
    responses = client.run([ChatRequest("gpt-4o-mini", [{"role": "user", "content": "Hi"}])])

`LLMClient` puts the cache in front of a backend (a rerun costs nothing, a killed run resumes), bounds concurrency,
retries with backoff (honouring Retry-After up to MAX_RETRY_AFTER seconds), counts tokens and cost, and stops cleanly at
`max_cost`. The API key is held by the openai client only: it is not part of a request, a cache row, or any stats, and
every LLMError's message has it (and anything that looks like a key) redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import SynthembedError
from .cost import PRICES, Usage, cost_usd, price_of

# The paper samples with temperature 1.0 and top_p 1.0 (section 3.1).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
# The longest wait a server's Retry-After is honoured for: a provider that asks for minutes (a quota window) gets them,
# while a nonsense header ("retry in a day") cannot stall the run; the backoff is still capped at max_backoff.
MAX_RETRY_AFTER = 300.0

# Bearer values and OpenAI-style keys (sk-..., sk-proj-...): an error body may echo the Authorization header.
_SECRET_TOKENS = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{6,}")


def redact(text: str, *secrets: str | None) -> str:
    """`text` with each given secret, OPENAI_API_KEY, and anything shaped like a key or Bearer value replaced by "***".

    >>> redact("401: invalid key Bearer sk-abc123def456 for org x")
    '401: invalid key *** for org x'
    """
    for secret in (*secrets, os.environ.get("OPENAI_API_KEY")):
        if secret and len(secret) >= 4:  # a one-letter "key" would blank out every such letter of the message
            text = text.replace(secret, "***")
    return _SECRET_TOKENS.sub("***", text)


def valid_unicode(text: str | None) -> str | None:
    """`text` with lone UTF-16 surrogates replaced by U+FFFD, the only form that UTF-8 (SQLite, JSON lines) can hold; a
    JSON reply can carry one (the escape "\\ud800" alone decodes to it). A split pair is joined back into its character.

    >>> valid_unicode("ok " + chr(0xD800)) == "ok \\ufffd"
    True
    """
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class LLMError(Exception):
    """A request that failed for good (after retries, or not retryable). `kind` names why, for stats. The message is
    redacted (see `redact`): it may quote an error body, which may echo the API key."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(redact(str(message)))
        self.kind = kind


class RetryableError(LLMError):
    """A transient failure: rate limit (429), server error (5xx), timeout, lost connection."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None):
        super().__init__(message, kind)
        self.retry_after = retry_after


class NotSent(Exception):
    """A backend's word that it sends nothing more in this session, and why: `reason` is what LLMClient.stopped then
    says ("max_cost": the batch backend's prefetch stopped at the budget; "batch_files": its files wait for
    `vllm run-batch`). The LLMClient stops as it does at its own budget check. Not an LLMError: nothing failed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class CacheMiss(LLMError):
    def __init__(self, message: str):
        super().__init__(message, "not_in_cache")


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion: what the cache is keyed on (model, messages and every sampling setting)."""

    model: str
    messages: tuple[dict[str, str], ...] | list[dict[str, str]]
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int | None = None
    # Sent as the API's `seed`: two samples of one prompt (the paper samples at temperature 1.0) are two requests, with
    # two cache rows, and a server that honours seeds (OpenAI best-effort, vLLM, llama.cpp) can reproduce each.
    seed: int | None = None
    # What the prompt asks for (prompts.Prompt.marker), sent beside the messages for the loopback stand-in. Not part of
    # the request's identity: the same messages with or without it are the same request, with one cache row.
    marker: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [dict(m) for m in self.messages],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }

    def key(self) -> str:
        """sha256 of the canonical JSON of the request.

        >>> ChatRequest("m", [{"role": "user", "content": "hi"}]).key() == ChatRequest("m", [{"role": "user", "content": "hi"}]).key()
        True
        """
        canonical = json.dumps(self.as_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class ChatResponse:
    """What came back: the text (None for a refusal), why it stopped, and the tokens it cost."""

    text: str | None
    finish_reason: str = "stop"
    refusal: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False
    # HTTP-level retries this response needed, by kind ("rate_limit", "server_error", "timeout", ...)
    retries: dict[str, int] = field(default_factory=dict)
    system_fingerprint: str | None = None  # the loopback stand-in signs its answers "loopback-stand-in"
    created: float | None = None  # when a cached answer was written to the cache (time.time())

    def __post_init__(self) -> None:
        # Whatever a backend decoded, the text must be storable: a lone surrogate would crash the cache write (and,
        # being cached nowhere, every rerun the same way).
        self.text = valid_unicode(self.text)
        self.refusal = valid_unicode(self.refusal)


class Cache(Protocol):
    """What the client needs of a response cache (cache.ResponseCache is the one in use)."""

    def get(self, request: ChatRequest) -> ChatResponse | None: ...

    def put(self, request: ChatRequest, response: ChatResponse) -> None: ...


class LLMClient:
    """A backend behind the response cache, with bounded concurrency, retries, usage accounting and a cost budget.

    >>> from synthembed.generation.backends import ReplayBackend
    >>> from synthembed.generation.cache import ResponseCache
    >>> client = LLMClient(ReplayBackend(), cache=ResponseCache(":memory:"))
    >>> client.usage.requests
    0
    """

    def __init__(self, backend, cache: Cache | None = None, prices: dict[str, tuple[float, float]] | None = None,
                 max_cost: float | None = None, max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0,
                 seed: int = 0):
        self.backend = backend
        self.cache = cache
        self.prices = prices if prices is not None else dict(PRICES)
        self.max_cost = max_cost
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.usage = Usage()
        self.stopped: str | None = None  # "max_cost" once the budget is spent
        self.spent_before = 0.0  # USD an earlier session of the same run spent: the budget covers the whole run
        # Cache rows written after this are this session's answers: a backend that prefetches into the cache (the
        # Batch API) has its answers read back from there, and they count as fresh, not as cache hits.
        self.started = time.time()
        self._rng = random.Random(seed)  # jitter only; never affects what is generated

    def _account(self, response: ChatResponse) -> None:
        model = response.model or ""
        cost = cost_usd(model, response.prompt_tokens, response.completion_tokens, self.prices)
        if price_of(model, self.prices) is None:
            self.usage.unpriced_models.add(model)
        self.usage.prompt_tokens += response.prompt_tokens
        self.usage.completion_tokens += response.completion_tokens
        self.usage.cost_usd += cost
        if response.cached and not (response.created is not None and response.created >= self.started):
            self.usage.cache_hits += 1
        else:
            self.usage.requests += 1
            self.usage.fresh_cost_usd += cost

    def over_budget(self) -> bool:
        return self.max_cost is not None and self.usage.cost_usd + self.spent_before >= self.max_cost

    @contextlib.asynccontextmanager
    async def prefetching(self, requests: Iterable[ChatRequest]) -> AsyncIterator[None]:
        """Around streaming `requests`: a backend that answers in bulk (one with `prefetch(client, requests)`: the
        Batch API) puts their answers into the cache meanwhile, and its `complete` waits for the ones not there yet.
        With a budget the prefetch comes first, whole: its spending is counted before anything is read back. For any
        other backend, or without a cache, nothing happens."""
        fetch = getattr(self.backend, "prefetch", None)
        if fetch is None or self.cache is None or self.stopped:
            yield
            return
        if self.max_cost is not None:
            await fetch(self, requests)
            yield
            return
        task = asyncio.create_task(fetch(self, requests))
        try:
            yield
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        await task

    async def _with_retries(self, batch: list[ChatRequest]) -> list[ChatResponse]:
        retries: Counter = Counter()
        for attempt in range(self.max_retries + 1):
            try:
                responses = await self.backend.complete(batch)
            except RetryableError as err:
                retries[err.kind] += 1
                self.usage.retries[err.kind] += 1
                if attempt == self.max_retries:
                    raise LLMError(f"gave up after {attempt + 1} attempts: {err}", err.kind) from None
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + 0.5 * self._rng.random())
                if err.retry_after is not None:  # the server said when: wait that long (up to MAX_RETRY_AFTER), not less
                    delay = max(delay, min(err.retry_after, MAX_RETRY_AFTER))
                await asyncio.sleep(delay)
                continue
            for r in responses:
                r.retries = dict(retries)
            return responses
        raise AssertionError("unreachable")

    async def stream(self, requests: Iterable[ChatRequest], progress: Any = None,
                     window: int | None = None) -> AsyncIterator[tuple[int, ChatResponse | LLMError]]:
        """Yield (index in `requests`, response or LLMError) as answers arrive: a cache hit as soon as it is read, fresh
        ones in completion order.

        `requests` is read lazily, a batch at a time as a worker gets free, so it may be a generator over a plan of any
        size. `window` bounds how far reading runs ahead: the newest request read is less than `window` places after the
        oldest one not yet yielded, so a caller that puts answers back in order holds at most `window` of them (a
        request retrying for minutes holds reading back, instead of everything after it piling up).
        Each fresh response is committed to the cache before it is yielded. Once the cost budget is spent no new request
        is sent; those already in flight finish and are yielded, and `self.stopped` says "max_cost".
        """
        source = enumerate(requests)
        size = max(1, int(getattr(self.backend, "batch_size", 1)))
        results: asyncio.Queue = asyncio.Queue()
        unyielded: set[int] = set()  # read, not yet yielded
        state = {"read": 0, "oldest": 0, "exhausted": False}  # requests read; the oldest of them not yet yielded
        room = asyncio.Event()  # set when the oldest unyielded request moves on

        def take() -> list[tuple[int, ChatRequest]]:
            """The next batch of requests to send (cache hits on the way go straight to `results`)."""
            batch: list[tuple[int, ChatRequest]] = []
            while len(batch) < size and (window is None or state["read"] < state["oldest"] + window):
                try:
                    i, request = next(source)
                except StopIteration:
                    state["exhausted"] = True
                    break
                state["read"] = i + 1
                unyielded.add(i)
                hit = self.cache.get(request) if self.cache is not None else None
                if hit is None:
                    batch.append((i, request))
                else:
                    self._account(hit)
                    results.put_nowait((i, hit))
            return batch

        def yielded(i: int) -> None:
            unyielded.discard(i)
            while state["oldest"] < state["read"] and state["oldest"] not in unyielded:
                state["oldest"] += 1
            room.set()

        async def worker() -> None:
            while True:
                if self.over_budget():
                    self.stopped = "max_cost"
                    return
                batch = take()
                if not batch:
                    if state["exhausted"]:
                        return
                    room.clear()  # the window is full: wait until the oldest request is yielded
                    await room.wait()
                    continue
                try:
                    answers: list[ChatResponse | LLMError] = list(await self._with_retries([r for _, r in batch]))
                except LLMError as err:
                    answers = [err] * len(batch)
                except NotSent as stop:
                    self.stopped = stop.reason
                    return
                for (i, request), answer in zip(batch, answers, strict=True):
                    if isinstance(answer, ChatResponse):
                        if self.cache is not None:
                            self.cache.put(request, answer)
                        self._account(answer)
                    else:
                        self.usage.failures[answer.kind] += 1
                    results.put_nowait((i, answer))

        n_workers = max(1, int(getattr(self.backend, "concurrency", 1)))
        tasks = [asyncio.create_task(worker()) for _ in range(n_workers)]
        done_workers = asyncio.gather(*tasks)
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(results.get())
                finished, _ = await asyncio.wait({getter, done_workers}, return_when=asyncio.FIRST_COMPLETED)
                if getter in finished:
                    i, answer = getter.result()
                    yielded(i)
                    self._progress(progress)
                    yield i, answer
                    continue
                getter.cancel()
                done_workers.result()  # re-raise a worker's fatal error (SynthembedError)
                while not results.empty():
                    i, answer = results.get_nowait()
                    yielded(i)
                    self._progress(progress)
                    yield i, answer
                return
        finally:
            if getter is not None:
                getter.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Retrieved here, whatever ended the stream: a worker's error after the caller stopped reading (a full disk
            # in the caller, then a closed client under the workers) would otherwise be printed by asyncio as
            # "_GatheringFuture exception was never retrieved" above the run's own clean error.
            if done_workers.done() and not done_workers.cancelled():
                done_workers.exception()

    def _progress(self, progress: Any) -> None:
        if progress is None:
            return
        progress.update(1)
        progress.set_postfix(
            tokens=self.usage.prompt_tokens + self.usage.completion_tokens,
            cost=f"${self.usage.cost_usd:.4f}",
            cached=self.usage.cache_hits,
            refresh=False,
        )

    def run(self, requests: Sequence[ChatRequest], progress: Any = None) -> list[ChatResponse | LLMError | None]:
        """Synchronous convenience: every answer in request order (None where the budget stopped the run)."""

        async def collect() -> list[ChatResponse | LLMError | None]:
            out: list[ChatResponse | LLMError | None] = [None] * len(requests)
            async for i, answer in self.stream(requests, progress):
                out[i] = answer
            return out

        return run_async(collect())


def run_async(coro):
    """Run a coroutine from sync code, also inside Jupyter, whose kernel already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def openai_credentials(base_url: str | None, backend: str, what_serves_it: str) -> tuple[str | None, str]:
    """The base URL and API key an OpenAI-protocol backend connects with: the arguments, else OPENAI_BASE_URL and
    OPENAI_API_KEY. A local server needs no key (the client insists on one, the server ignores it); the official API
    without a key is an error naming what would serve instead."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if base_url is None:
            raise SynthembedError(f"the {backend} backend needs OPENAI_API_KEY in the environment (or OPENAI_BASE_URL "
                                  f"for {what_serves_it})")  # fmt: skip
        api_key = "no-key"
    return base_url, api_key

