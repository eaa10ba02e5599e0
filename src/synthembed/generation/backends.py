"""The chat backends: one interface, `async complete(requests) -> list[ChatResponse]` over a batch.

    from synthembed.generation.backends import make_backend
    backend = make_backend("openai", concurrency=16)          # or "transformers" with model=..., or "replay"

- `OpenAIBackend`: any OpenAI-compatible chat-completions server through the official `openai` client (OpenAI, Azure
  OpenAI's v1 endpoint, vLLM, Ollama, llama.cpp); it reads OPENAI_API_KEY and OPENAI_BASE_URL as the client does. A
  request's marker (what its prompt asks for) goes in the taskgroups.MARKER_HEADER header, which a model never sees.
- `TransformersBackend`: a local causal LM with its chat template, batched generation with left padding, no server.
- `ReplayBackend`: answers only from a response cache; a request it has never seen is an error, never a call.

Retries, the cache and the cost budget are the LLMClient's (llm.py), not the backends'.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any

from ..errors import SynthembedError
from ..taskgroups import MARKER_HEADER
from .llm import CacheMiss, ChatRequest, ChatResponse, LLMError, RetryableError, openai_credentials, redact

BACKENDS = ("openai", "transformers", "replay", "openai-batch", "batch-files")


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


def _chat_response(reply: Any, request: ChatRequest) -> ChatResponse:
    """The ChatResponse of a chat.completion. A 200 whose body is not one (an HTML page from a proxy, no `choices`, a
    null message) is a transient fault of this request, retried and then counted, never the end of the run; the
    openai client hands such bodies over unvalidated (a str, a list, a half-built object)."""
    choices = getattr(reply, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise RetryableError(f"response without choices (got {type(reply).__name__})", "bad_response")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    refusal = getattr(message, "refusal", None)
    if message is None or not isinstance(content, str | None) or not isinstance(refusal, str | None):
        raise RetryableError("response without a message", "bad_response")
    usage = getattr(reply, "usage", None)
    return ChatResponse(
        text=content,
        finish_reason=getattr(choice, "finish_reason", None) or "stop",
        refusal=refusal,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        model=getattr(reply, "model", None) or request.model,
        system_fingerprint=getattr(reply, "system_fingerprint", None),
    )


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server, one request per call, up to `concurrency` at once, each
    attempt given at most `timeout` seconds in all.

    The key and the base URL come from OPENAI_API_KEY / OPENAI_BASE_URL (or `base_url=`); a local server without
    authentication needs no key. Retries are the LLMClient's, so the openai client's own are switched off.
    """

    name = "openai"
    batch_size = 1

    def __init__(self, base_url: str | None = None, concurrency: int = 8, timeout: float = 120.0):
        import openai

        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        base_url, api_key = openai_credentials(
            base_url, "openai", "a local OpenAI-compatible server such as vLLM, Ollama or llama.cpp"
        )
        self.base_url = base_url
        self._api_key = api_key  # only to redact it from error messages
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
        if request.marker is not None:
            kwargs["extra_headers"] = {MARKER_HEADER: request.marker}
        try:
            # The client's own timeout bounds each socket read, so a server that trickles a byte a second would never
            # trip it: wait_for makes `timeout` the deadline of the whole attempt, connection to last byte.
            reply = await asyncio.wait_for(self._client.chat.completions.create(
                model=request.model, messages=[dict(m) for m in request.messages], **kwargs
            ), self.timeout)
        except asyncio.TimeoutError:
            raise RetryableError(f"no complete answer within {self.timeout:g} s", "timeout") from None
        except openai.RateLimitError as err:
            raise RetryableError(f"rate limited: {err.message}", "rate_limit", _retry_after_seconds(err.response.headers)) from None
        except openai.APITimeoutError:
            raise RetryableError(f"no answer within {self.timeout:g} s", "timeout") from None
        except openai.APIConnectionError as err:
            raise RetryableError(f"connection failed: {err}", "connection") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            # Every later request would fail the same way: stop the run with a clear message. The body may echo the
            # key ("Incorrect API key provided: sk-..."), so it is redacted.
            raise SynthembedError(redact(f"the endpoint refused the request ({err.status_code}): {err.message}",
                                         self._api_key)) from None
        except openai.APIStatusError as err:
            if err.status_code >= 500 or err.status_code in (408, 409):
                raise RetryableError(f"server error {err.status_code}", "server_error",
                                     _retry_after_seconds(err.response.headers)) from None
            raise LLMError(redact(f"request rejected ({err.status_code}): {err.message}", self._api_key),
                           f"http_{err.status_code}") from None
        except (openai.APIResponseValidationError, ValueError) as err:  # ValueError: a 200 whose body is not JSON
            raise RetryableError(redact(f"malformed response body: {err}"[:300], self._api_key), "bad_response") from None
        return _chat_response(reply, request)

    async def aclose(self) -> None:
        await self._client.close()


# A minimal chat template for tokenizers that ship none (the tiny test Mistral): one turn per line, then the answer.
SIMPLE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# Chat-turn ends that instruct models emit where a plain causal LM would emit EOS (ChatML, Gemma, Llama 3, Phi) and
# the end-of-document token some use instead; whichever of these a tokenizer really has ends a reply.
TURN_END_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The token ids that end a reply: the tokenizer's EOS, the generation config's EOS id(s), and every turn-end token
    of TURN_END_TOKENS that the tokenizer has. Stopping at EOS alone lets a chat model run on past its turn's end (Qwen's
    tokenizer says EOS is <|im_end|> while its base emits <|endoftext|>; Gemma ends turns with <end_of_turn>), and the
    reply is then cut at max_new_tokens and rejected as truncated.

    >>> # stop_token_ids(AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct"))  ->  [151645, 151643]
    """
    ids: list[int] = []

    def add(token_id) -> None:
        for one in token_id if isinstance(token_id, list | tuple) else [token_id]:
            if one is not None and int(one) not in ids:
                ids.append(int(one))

    add(tokenizer.eos_token_id)
    if generation_config is not None:
        add(getattr(generation_config, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for token in TURN_END_TOKENS:
        if token in vocab:
            add(vocab[token])
    return ids


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
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
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
                eos_token_id=self.stop_ids,
            )  # (B, T_prompt + T_new)
        new_tokens = out[:, batch["input_ids"].shape[1]:]  # (B, T_new)
        responses = []
        for row, mask in zip(new_tokens.tolist(), batch["attention_mask"].tolist(), strict=True):
            end = next((i for i, token in enumerate(row) if token in self.stop_ids), None)
            finished = end is not None
            generated = row[:end] if finished else row
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


def make_backend(name: str, model: str | None = None, base_url: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, batch_size: int = 8, max_new_tokens: int = 1024,
                 state_dir: str | os.PathLike | None = None, stand_in: bool = False, max_batches: int = 64,
                 batch_file_requests: int | None = None, enqueued_token_limit: int | None = None) -> Any:
    """A backend by name: "openai", "transformers" (`model` is a local path or hub id), "replay", or "openai-batch"
    (batch.py; `state_dir` is the run directory that records its batches, `stand_in` the loopback stand-in,
    `max_batches` the batches in flight at once, `batch_file_requests` the requests per batch file,
    `enqueued_token_limit` the provider's limit on the input tokens of batches in its queue, where known)."""
    if name in ("openai-batch", "batch-files"):
        from .batch import OpenAIBatchBackend
        from .batch_files import FILE_REQUESTS, BatchLimits

        if state_dir is None:
            raise SynthembedError("the openai-batch backend needs the run directory (state_dir) to record its batches")
        # The stand-in answers a batch in seconds; OpenAI's take minutes to hours.
        return OpenAIBatchBackend(state_dir, base_url=base_url, markers=stand_in, timeout=timeout,
                                  poll_interval=0.2 if stand_in else 30.0, max_in_flight=max_batches,
                                  local=name == "batch-files", token_limit=enqueued_token_limit,
                                  limits=BatchLimits(max_requests=batch_file_requests or FILE_REQUESTS))
    if name == "openai":
        urls = [url.strip() for url in (base_url or os.environ.get("OPENAI_BASE_URL") or "").split(",") if url.strip()]
        if len(urls) > 1:  # several servers: `concurrency` requests in flight on each (endpoints.py)
            from .endpoints import MultiEndpointBackend

            return MultiEndpointBackend([OpenAIBackend(url, concurrency, timeout) for url in urls])
        return OpenAIBackend(base_url=base_url, concurrency=concurrency, timeout=timeout)
    if name == "transformers":
        if not model:
            raise SynthembedError("the transformers backend needs --model (a local path or hub id)")
        return TransformersBackend(model, batch_size=batch_size, max_new_tokens=max_new_tokens)
    if name == "replay":
        return ReplayBackend()
    raise SynthembedError(f"unknown backend {name!r} (choose {', '.join(BACKENDS)})")
