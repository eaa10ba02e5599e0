"""Chat backends, the SQLite response cache, and token usage and cost.

    from synthembed.generation.llm import ChatRequest, LLMClient, OpenAIBackend, ResponseCache
    client = LLMClient(OpenAIBackend(concurrency=16), cache=ResponseCache("runs/gen/cache.sqlite"), max_cost=5.0)
    responses = client.run([ChatRequest("gpt-4o-mini", [{"role": "user", "content": "Hi"}])])

Three backends share one interface, `async complete(requests) -> list[ChatResponse]` over a batch:
- `OpenAIBackend`: any OpenAI-compatible chat-completions server through the official `openai` client (OpenAI, Azure
  OpenAI's v1 endpoint, vLLM, Ollama, llama.cpp); it reads OPENAI_API_KEY and OPENAI_BASE_URL as the client does.
- `TransformersBackend`: a local causal LM with its chat template, batched generation with left padding, no server.
- `ReplayBackend`: answers only from a response cache; a request it has never seen is an error, never a call.

`LLMClient` puts the cache in front of a backend (a rerun costs nothing, a killed run resumes), bounds concurrency,
retries with backoff (honouring Retry-After on 429), counts tokens and cost, and stops cleanly at `max_cost`.
The API key is held by the openai client only: it is not part of a request, a cache row, or any stats.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SynthembedError

# The paper samples with temperature 1.0 and top_p 1.0 (section 3.1).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0

# USD per million tokens (input, output), list prices published by OpenAI; override with `prices=` / --prices FILE.
# Matching is by longest prefix, so "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini".
PRICES: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4": (30.00, 60.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    # The loopback stand-in costs nothing to run; it is priced like gpt-4o-mini so that the cost path (stats, the
    # progress bar, --max-cost) is exercised by the smoke study and the tests. Its dollars are hypothetical.
    "loopback": (0.15, 0.60),
}


class LLMError(Exception):
    """A request that failed for good (after retries, or not retryable). `kind` names why, for stats."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


class RetryableError(LLMError):
    """A transient failure: rate limit (429), server error (5xx), timeout, lost connection."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None):
        super().__init__(message, kind)
        self.retry_after = retry_after


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


# --- cost ------------------------------------------------------------------------------------------------------------


def load_prices(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, tuple[float, float]]:
    """The price table, with a JSON/YAML file `{model: {input: usd_per_1m, output: usd_per_1m}}` or a dict on top.

    >>> load_prices(overrides={"my-model": {"input": 1.0, "output": 2.0}})["my-model"]
    (1.0, 2.0)
    """
    table = dict(PRICES)
    items: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SynthembedError(f"price table {path}: no such file")
        import yaml

        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise SynthembedError(f"price table {path}: expected {{model: {{input: USD/1M, output: USD/1M}}}}")
        items.update(loaded)
    items.update(overrides or {})
    for model, value in items.items():
        try:
            if isinstance(value, dict):
                table[str(model)] = (float(value["input"]), float(value["output"]))
            else:
                inp, out = value
                table[str(model)] = (float(inp), float(out))
        except (KeyError, TypeError, ValueError):
            raise SynthembedError(f"price for {model!r} must be {{input: USD per 1M tokens, output: USD per 1M}}") from None
    return table


def price_of(model: str, prices: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for `model` by longest matching prefix; None when unpriced."""
    name = model.split("/")[-1]
    best = max((p for p in prices if name.startswith(p)), key=len, default=None)
    return prices[best] if best is not None else None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, prices: dict[str, tuple[float, float]]) -> float:
    price = price_of(model, prices)
    if price is None:
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


# --- the response cache ----------------------------------------------------------------------------------------------


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
        if not readonly and self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, check_same_thread=False)
        if not readonly:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process, which is what resume needs
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, text TEXT, "
                "finish_reason TEXT, refusal TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, model TEXT, "
                "created REAL, fingerprint TEXT)"
            )
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            self.conn.commit()

    def get(self, request: ChatRequest) -> ChatResponse | None:
        row = self.conn.execute(
            "SELECT text, finish_reason, refusal, prompt_tokens, completion_tokens, model, fingerprint FROM responses "
            "WHERE key = ?",
            (request.key(),),
        ).fetchone()
        if row is None:
            return None
        text, finish_reason, refusal, prompt_tokens, completion_tokens, model, fingerprint = row
        return ChatResponse(text, finish_reason or "stop", refusal, prompt_tokens or 0, completion_tokens or 0,
                            model or "", True, system_fingerprint=fingerprint)

    def put(self, request: ChatRequest, response: ChatResponse) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
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
            ),
        )
        self.conn.commit()

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def get_meta(self, name: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


# --- backends --------------------------------------------------------------------------------------------------------


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server, one request per call, up to `concurrency` at once.

    The key and the base URL come from OPENAI_API_KEY / OPENAI_BASE_URL (or `base_url=`); a local server without
    authentication needs no key. Retries are the LLMClient's, so the openai client's own are switched off.
    """

    name = "openai"
    batch_size = 1

    def __init__(self, base_url: str | None = None, concurrency: int = 8, timeout: float = 120.0):
        import openai

        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if base_url is None:
                raise SynthembedError(
                    "the openai backend needs OPENAI_API_KEY in the environment (or OPENAI_BASE_URL for a local "
                    "OpenAI-compatible server such as vLLM, Ollama or llama.cpp)"
                )
            api_key = "no-key"  # local servers ignore it; the client insists on one
        self.base_url = base_url
        self._openai = openai
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        return [await self._complete_one(r) for r in requests]

    async def _complete_one(self, request: ChatRequest) -> ChatResponse:
        openai = self._openai
        kwargs: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p}
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.seed is not None:
            kwargs["seed"] = request.seed
        try:
            reply = await self._client.chat.completions.create(
                model=request.model, messages=[dict(m) for m in request.messages], **kwargs
            )
        except openai.RateLimitError as err:
            raise RetryableError(f"rate limited: {err.message}", "rate_limit", _retry_after_seconds(err.response.headers)) from None
        except openai.APITimeoutError:
            raise RetryableError(f"no answer within {self.timeout:g} s", "timeout") from None
        except openai.APIConnectionError as err:
            raise RetryableError(f"connection failed: {err}", "connection") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            # Every later request would fail the same way: stop the run with a clear message (never echoing the key).
            raise SynthembedError(f"the endpoint refused the request ({err.status_code}): {err.message}") from None
        except openai.APIStatusError as err:
            if err.status_code >= 500 or err.status_code in (408, 409):
                raise RetryableError(f"server error {err.status_code}", "server_error",
                                     _retry_after_seconds(err.response.headers)) from None
            raise LLMError(f"request rejected ({err.status_code}): {err.message}", f"http_{err.status_code}") from None
        except openai.APIResponseValidationError as err:
            raise RetryableError(f"malformed response body: {err}", "bad_response") from None
        if not reply.choices:
            raise RetryableError("response without choices", "bad_response")
        choice = reply.choices[0]
        usage = reply.usage
        return ChatResponse(
            text=choice.message.content,
            finish_reason=choice.finish_reason or "stop",
            refusal=getattr(choice.message, "refusal", None),
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
            model=reply.model or request.model,
            system_fingerprint=getattr(reply, "system_fingerprint", None),
        )

    async def aclose(self) -> None:
        await self._client.close()


# A minimal chat template for tokenizers that ship none (the tiny test Mistral): one turn per line, then the answer.
SIMPLE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class TransformersBackend:
    """A local causal LM: chat template, left-padded batches, sampling with the request's settings, no server.

    >>> backend = TransformersBackend("mistralai/Mistral-7B-Instruct-v0.2", batch_size=8)  # doctest: +SKIP
    """

    name = "transformers"
    concurrency = 1  # one batch at a time on the one device

    def __init__(self, model: str, batch_size: int = 8, max_new_tokens: int = 1024, device: str | None = None,
                 dtype: str = "auto", seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..paths import resolve_model_path

        path = resolve_model_path(model)
        self.model_name = model
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
        self.tokenizer.padding_side = "left"  # generation appends on the right, so prompts must end at the same column
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = {"auto": (torch.bfloat16 if self.device.startswith("cuda") else torch.float32),
                       "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype).to(self.device).eval()
        self._torch = torch
        self._generator_seed = seed

    def _generate(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        torch = self._torch
        prompts = [
            self.tokenizer.apply_chat_template([dict(m) for m in r.messages], tokenize=False, add_generation_prompt=True)
            for r in requests
        ]
        # The template already holds BOS; don't let the tokenizer add a second one.
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        first = requests[0]
        max_new = min(first.max_tokens or self.max_new_tokens, self.max_new_tokens)
        sample = first.temperature > 0
        # Seeded from the requests, so a batch is reproducible whatever ran before it.
        torch.manual_seed(int(hashlib.sha256("".join(r.key() for r in requests).encode()).hexdigest()[:8], 16)
                          + self._generator_seed)
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new,
                do_sample=sample,
                temperature=first.temperature if sample else None,
                top_p=first.top_p if sample else None,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )  # (B, T_prompt + T_new)
        new_tokens = out[:, batch["input_ids"].shape[1]:]  # (B, T_new)
        responses = []
        eos = self.tokenizer.eos_token_id
        for row, mask in zip(new_tokens.tolist(), batch["attention_mask"].tolist(), strict=True):
            finished = eos in row
            generated = row[: row.index(eos)] if finished else row
            responses.append(ChatResponse(
                text=self.tokenizer.decode(generated, skip_special_tokens=True),
                finish_reason="stop" if finished else "length",
                prompt_tokens=int(sum(mask)),
                completion_tokens=len(generated) + (1 if finished else 0),
                model=self.model_name,
            ))
        return responses

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        # Requests in one batch must share sampling settings; the pipeline's always do. Split otherwise.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p, r.max_tokens), []).append(i)
        results: list[ChatResponse | None] = [None] * len(requests)
        for indices in groups.values():
            outs = await asyncio.to_thread(self._generate, [requests[i] for i in indices])
            for i, out in zip(indices, outs, strict=True):
                results[i] = out
        return results  # type: ignore[return-value]

    async def aclose(self) -> None:
        return None


class ReplayBackend:
    """Rebuilds a run from a response cache alone: every request must be in the cache (the LLMClient looks there
    first); anything else is a `CacheMiss`, never a call."""

    name = "replay"
    batch_size = 1
    concurrency = 1

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        raise CacheMiss(f"replay: request {requests[0].key()[:12]} is not in the response cache")

    async def aclose(self) -> None:
        return None


# --- the client ------------------------------------------------------------------------------------------------------


@dataclass
class Usage:
    """Running totals: requests answered fresh vs from the cache, tokens, cost, retries and failures by kind."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    fresh_cost_usd: float = 0.0
    retries: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    unpriced_models: set = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["retries"] = dict(sorted(self.retries.items()))
        d["failures"] = dict(sorted(self.failures.items()))
        d["unpriced_models"] = sorted(self.unpriced_models)
        d["cost_usd"] = round(self.cost_usd, 6)
        d["fresh_cost_usd"] = round(self.fresh_cost_usd, 6)
        return d


class LLMClient:
    """A backend behind the response cache, with bounded concurrency, retries, usage accounting and a cost budget.

    >>> client = LLMClient(ReplayBackend(), cache=ResponseCache(":memory:"))
    >>> client.usage.requests
    0
    """

    def __init__(self, backend, cache: ResponseCache | None = None, prices: dict[str, tuple[float, float]] | None = None,
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
        self._rng = random.Random(seed)  # jitter only; never affects what is generated

    def _account(self, response: ChatResponse) -> None:
        model = response.model or ""
        cost = cost_usd(model, response.prompt_tokens, response.completion_tokens, self.prices)
        if price_of(model, self.prices) is None:
            self.usage.unpriced_models.add(model)
        self.usage.prompt_tokens += response.prompt_tokens
        self.usage.completion_tokens += response.completion_tokens
        self.usage.cost_usd += cost
        if response.cached:
            self.usage.cache_hits += 1
        else:
            self.usage.requests += 1
            self.usage.fresh_cost_usd += cost

    def over_budget(self) -> bool:
        return self.max_cost is not None and self.usage.cost_usd + self.spent_before >= self.max_cost

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
                if err.retry_after is not None:  # the server said when: wait that long, not less
                    delay = min(self.max_backoff, max(delay, err.retry_after))
                await asyncio.sleep(delay)
                continue
            for r in responses:
                r.retries = dict(retries)
            return responses
        raise AssertionError("unreachable")

    async def stream(self, requests: Sequence[ChatRequest], progress: Any = None) -> AsyncIterator[tuple[int, ChatResponse | LLMError]]:
        """Yield (index, response or LLMError) as answers arrive: cache hits first, then fresh ones in completion order.

        Each fresh response is committed to the cache before it is yielded. Once the cost budget is spent no new
        request is sent; those already in flight finish and are yielded, and `self.stopped` says "max_cost".
        """
        pending: list[int] = []
        for i, request in enumerate(requests):
            hit = self.cache.get(request) if self.cache is not None else None
            if hit is None:
                pending.append(i)
                continue
            self._account(hit)
            self._progress(progress)
            yield i, hit
        if not pending:
            return
        size = max(1, int(getattr(self.backend, "batch_size", 1)))
        batches: asyncio.Queue = asyncio.Queue()
        for start in range(0, len(pending), size):
            batches.put_nowait(pending[start:start + size])
        results: asyncio.Queue = asyncio.Queue()

        async def worker() -> None:
            while not batches.empty():
                if self.over_budget():
                    self.stopped = "max_cost"
                    return
                indices = batches.get_nowait()
                try:
                    answers: list[ChatResponse | LLMError] = list(await self._with_retries([requests[i] for i in indices]))
                except LLMError as err:
                    answers = [err] * len(indices)
                for i, answer in zip(indices, answers, strict=True):
                    if isinstance(answer, ChatResponse):
                        if self.cache is not None:
                            self.cache.put(requests[i], answer)
                        self._account(answer)
                    else:
                        self.usage.failures[answer.kind] += 1
                    await results.put((i, answer))

        n_workers = max(1, int(getattr(self.backend, "concurrency", 1)))
        tasks = [asyncio.create_task(worker()) for _ in range(min(n_workers, batches.qsize()))]
        done_workers = asyncio.gather(*tasks)
        try:
            while True:
                getter = asyncio.ensure_future(results.get())
                finished, _ = await asyncio.wait({getter, done_workers}, return_when=asyncio.FIRST_COMPLETED)
                if getter in finished:
                    self._progress(progress)
                    yield getter.result()
                    continue
                getter.cancel()
                done_workers.result()  # re-raise a worker's fatal error (SynthembedError)
                while not results.empty():
                    self._progress(progress)
                    yield results.get_nowait()
                return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

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


def make_backend(name: str, model: str | None = None, base_url: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, batch_size: int = 8, max_new_tokens: int = 1024) -> Any:
    """A backend by name: "openai", "transformers" (`model` is a local path or hub id) or "replay"."""
    if name == "openai":
        return OpenAIBackend(base_url=base_url, concurrency=concurrency, timeout=timeout)
    if name == "transformers":
        if not model:
            raise SynthembedError("the transformers backend needs --model (a local path or hub id)")
        return TransformersBackend(model, batch_size=batch_size, max_new_tokens=max_new_tokens)
    if name == "replay":
        return ReplayBackend()
    raise SynthembedError(f"unknown backend {name!r} (choose openai, transformers or replay)")


BACKENDS = ("openai", "transformers", "replay")

__all__ = [
    "BACKENDS", "PRICES", "CacheMiss", "ChatRequest", "ChatResponse", "LLMClient", "LLMError", "OpenAIBackend",
    "ReplayBackend", "ResponseCache", "RetryableError", "TransformersBackend", "Usage", "cost_usd", "load_prices",
    "make_backend", "price_of", "run_async",
]
