"""The chat client (llm.py), its cache, cost and backends: the cache key, the SQLite cache, prices and cost, the client's
retries / budget / cache, and the local transformers backend (tiny random-weight Mistral: mechanics only)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from synthembed.errors import SynthembedError
from synthembed.generation.backends import ReplayBackend, _retry_after_seconds
from synthembed.generation.cache import ResponseCache
from synthembed.generation.cost import cost_usd, load_prices, price_of
from synthembed.generation.llm import CacheMiss, ChatRequest, ChatResponse, LLMClient, LLMError, RetryableError

MSG = ({"role": "user", "content": "Write one JSON object."},)


def test_request_key_covers_model_messages_and_sampling():
    base = ChatRequest("gpt-4o-mini", MSG)
    assert base.key() == ChatRequest("gpt-4o-mini", [dict(m) for m in MSG]).key()  # tuple or list: same request
    assert base.temperature == 1.0 and base.top_p == 1.0  # the paper's settings by default
    variants = [
        ChatRequest("gpt-4o", MSG),
        ChatRequest("gpt-4o-mini", ({"role": "user", "content": "Write two."},)),
        ChatRequest("gpt-4o-mini", MSG, temperature=0.7),
        ChatRequest("gpt-4o-mini", MSG, top_p=0.9),
        ChatRequest("gpt-4o-mini", MSG, max_tokens=100),
        ChatRequest("gpt-4o-mini", MSG, seed=1),
    ]
    keys = {v.key() for v in variants} | {base.key()}
    assert len(keys) == len(variants) + 1
    # the marker travels beside the request for the stand-in; it is not part of what the cache is keyed on
    marked = ChatRequest("gpt-4o-mini", MSG, marker='{"stage": "brainstorm", "task_type": "long-long"}')
    assert marked.key() == base.key() and marked == base and "marker" not in marked.as_dict()


def test_cache_roundtrip_persists_across_connections(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    request = ChatRequest("m", MSG, seed=3)
    assert cache.get(request) is None
    cache.put(request, ChatResponse('{"a": 1}', "stop", None, 12, 34, "m-2024"))
    cache.set_meta("config", '{"seed": 3}')
    cache.close()
    again = ResponseCache(path)
    hit = again.get(request)
    assert hit is not None and hit.cached
    assert (hit.text, hit.finish_reason, hit.prompt_tokens, hit.completion_tokens, hit.model) == ('{"a": 1}', "stop", 12, 34, "m-2024")
    assert again.get_meta("config") == '{"seed": 3}' and len(again) == 1
    with pytest.raises(SynthembedError, match="no such file"):
        ResponseCache(tmp_path / "absent.sqlite", readonly=True)


def test_prices_prefix_override_and_cost(tmp_path):
    prices = load_prices()
    assert price_of("gpt-4o-mini-2024-07-18", prices) == prices["gpt-4o-mini"]  # longest prefix, not "gpt-4o"
    assert price_of("gpt-4o-2024-08-06", prices) == prices["gpt-4o"]
    assert price_of("my-local-model", prices) is None
    assert cost_usd("gpt-4o-mini", 1_000_000, 1_000_000, prices) == pytest.approx(sum(prices["gpt-4o-mini"]))
    table = tmp_path / "prices.yaml"
    table.write_text("gpt-4o-mini: {input: 1.0, output: 3.0}\nmine: {input: 2, output: 2}\n")
    custom = load_prices(table)
    assert custom["gpt-4o-mini"] == (1.0, 3.0) and cost_usd("mine-7b", 500_000, 0, custom) == pytest.approx(1.0)
    table.write_text("bad: {input: x}\n")
    with pytest.raises(SynthembedError, match="bad"):
        load_prices(table)


def test_retry_after_header_forms():
    assert _retry_after_seconds({"retry-after": "2"}) == 2.0
    assert _retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert _retry_after_seconds({}) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= _retry_after_seconds({"retry-after": future}) <= 31


class ScriptedBackend:
    """Answers with scripted failures first, then a response priced by its length; records what it was sent."""

    name = "scripted"
    batch_size = 1

    def __init__(self, failures=(), concurrency=4):
        self.failures = list(failures)
        self.concurrency = concurrency
        self.sent: list[str] = []

    async def complete(self, requests):
        if self.failures:
            raise self.failures.pop(0)
        self.sent += [r.key() for r in requests]
        await asyncio.sleep(0)
        return [ChatResponse(f"answer {r.messages[0]['content']}", "stop", None, 1000, 1000, r.model) for r in requests]


def _requests(n):
    return [ChatRequest("gpt-4o-mini", ({"role": "user", "content": f"q{i}"},)) for i in range(n)]


def test_client_retries_honour_retry_after(recorded_sleeps):
    slept = recorded_sleeps
    backend = ScriptedBackend([RetryableError("429", "rate_limit", retry_after=7.0), RetryableError("500", "server_error")])
    client = LLMClient(backend, backoff=0.01, max_backoff=60)
    [answer] = client.run(_requests(1))
    assert isinstance(answer, ChatResponse) and answer.retries == {"rate_limit": 1, "server_error": 1}
    assert slept[0] == pytest.approx(7.0)  # the server's Retry-After, not the 0.01 s backoff
    assert slept[1] < 0.05
    assert dict(client.usage.retries) == {"rate_limit": 1, "server_error": 1}


def test_client_gives_up_after_max_retries():
    backend = ScriptedBackend([RetryableError("timeout", "timeout")] * 3)
    client = LLMClient(backend, max_retries=2, backoff=0.001)
    [answer] = client.run(_requests(1))
    assert isinstance(answer, LLMError) and answer.kind == "timeout"
    assert client.usage.failures["timeout"] == 1 and client.usage.retries["timeout"] == 3


def test_cache_makes_a_rerun_free(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    first = ScriptedBackend()
    LLMClient(first, cache=cache).run(_requests(5))
    assert len(first.sent) == 5
    second = ScriptedBackend()
    client = LLMClient(second, cache=cache)
    answers = client.run(_requests(6))
    assert len(second.sent) == 1  # only the new request went out
    assert client.usage.cache_hits == 5 and client.usage.requests == 1
    assert all(a.text == f"answer q{i}" for i, a in enumerate(answers))
    assert client.usage.fresh_cost_usd == pytest.approx(cost_usd("gpt-4o-mini", 1000, 1000, load_prices()))


def test_max_cost_stops_sending():
    one = cost_usd("gpt-4o-mini", 1000, 1000, load_prices())
    backend = ScriptedBackend(concurrency=1)
    client = LLMClient(backend, max_cost=2.5 * one)
    answers = client.run(_requests(10))
    assert client.stopped == "max_cost"
    assert len(backend.sent) == 3  # the third request crosses the budget; nothing after it is sent
    assert sum(a is not None for a in answers) == 3
    assert client.usage.cost_usd == pytest.approx(3 * one)


def test_replay_answers_only_from_the_cache(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    LLMClient(ScriptedBackend(), cache=cache).run(_requests(2))
    client = LLMClient(ReplayBackend(), cache=cache)
    answers = client.run(_requests(3))
    assert [a.text for a in answers[:2]] == ["answer q0", "answer q1"]
    assert isinstance(answers[2], CacheMiss) and client.usage.failures["not_in_cache"] == 1


class _HeldFirst(ScriptedBackend):
    """Answers request q0 (a request retrying) only once the others have stopped moving, every other request at once;
    notes how many requests the stream had read from its source by then."""

    def __init__(self, reads: list[int]):
        super().__init__(concurrency=4)
        self.reads, self.read_by_then = reads, None

    async def complete(self, requests):
        if requests[0].messages[0]["content"] == "q0":
            still = 0
            while still < 50:  # 50 turns of the event loop with nothing sent: the rest is answered or stuck
                sent = len(self.sent)
                await asyncio.sleep(0)
                still = still + 1 if len(self.sent) == sent else 0
            self.read_by_then = len(self.reads)
        return await super().complete(requests)


@pytest.mark.parametrize("window", [16, None])
def test_the_stream_reads_its_requests_lazily_and_no_further_than_the_window(tmp_path, window):
    cache = ResponseCache(tmp_path / "c.sqlite")
    LLMClient(ScriptedBackend(), cache=cache).run(_requests(200)[5:10])  # q5..q9 are cache hits
    reads: list[int] = []

    def source():  # a plan read one request at a time
        for i, request in enumerate(_requests(200)):
            reads.append(i)
            yield request

    backend = _HeldFirst(reads)
    client = LLMClient(backend, cache=cache)

    async def collect():
        return [(i, answer.text) async for i, answer in client.stream(source(), window=window)]

    got = asyncio.run(collect())
    assert sorted(got) == [(i, f"answer q{i}") for i in range(200)]  # every index once, with its own answer
    assert client.usage.cache_hits == 5 and len(backend.sent) == 195
    # While q0 was unanswered, reading stopped at the window (q0 itself plus 15): the caller that puts answers back in
    # order holds no more. Without a window everything was read.
    assert backend.read_by_then == (16 if window else 200)
    assert got[0][0] != 0  # answers came out of order: q0 was held


def test_a_caller_that_stops_reading_leaves_no_unretrieved_worker_error(caplog):
    """A full disk in the caller ends its loop over the stream; closing the backend then fails the workers still
    running. Their error must not reach asyncio's "exception was never retrieved" (printed above the run's clean
    error)."""

    class Closing(ScriptedBackend):
        closed = False

        async def complete(self, requests):
            await asyncio.sleep(0.02)
            if self.closed:
                raise RuntimeError("Cannot send a request, as the client has been closed.")
            return await super().complete(requests)

    backend = Closing()

    async def consume():
        try:
            async for _ in LLMClient(backend).stream(_requests(20)):
                raise OSError(28, "No space left on device")
        finally:
            backend.closed = True  # what the pipeline does next: close the backend, with workers still in flight
            await asyncio.sleep(0.1)

    with pytest.raises(OSError, match="No space"):
        asyncio.run(consume())
    gc.collect()
    assert backend.sent and not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_openai_backend_needs_key_or_base_url(monkeypatch):
    from synthembed.generation.backends import OpenAIBackend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SynthembedError, match="OPENAI_API_KEY"):
        OpenAIBackend()
    assert OpenAIBackend(base_url="http://127.0.0.1:9/v1").base_url == "http://127.0.0.1:9/v1"


@pytest.mark.slow
def test_transformers_backend_batches_with_left_padding(tiny_mistral):
    from synthembed.generation.backends import TransformersBackend

    backend = TransformersBackend(str(tiny_mistral), batch_size=3, max_new_tokens=6, device="cpu")
    assert backend.tokenizer.padding_side == "left" and backend.tokenizer.chat_template
    prompts = ["hello", "a much longer prompt with many more words in it than the first", "mid length prompt"]
    requests = [ChatRequest("tiny", ({"role": "user", "content": p},), temperature=0.0) for p in prompts]
    batched = asyncio.run(backend.complete(requests))
    alone = [asyncio.run(backend.complete([r]))[0] for r in requests]
    for b, a in zip(batched, alone, strict=True):
        assert isinstance(b.text, str)
        assert b.text == a.text  # left padding: a prompt's greedy continuation does not depend on its batch mates
        assert b.prompt_tokens == a.prompt_tokens > 0
        assert 0 < b.completion_tokens <= 6 and b.finish_reason in ("stop", "length")
    assert batched[1].prompt_tokens > batched[0].prompt_tokens
    sampled = asyncio.run(backend.complete([ChatRequest("tiny", requests[0].messages, max_tokens=3)]))[0]
    assert sampled.completion_tokens <= 3  # the request's max_tokens caps the backend's max_new_tokens
