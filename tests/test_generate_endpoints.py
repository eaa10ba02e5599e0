"""Many endpoints (generation/endpoints.py): requests spread over several OpenAI-compatible servers with per-server
concurrency, and a dead server's requests go to the others."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from synthembed.generation.backends import make_backend
from synthembed.generation.endpoints import MultiEndpointBackend
from synthembed.generation.llm import ChatRequest, ChatResponse, LLMClient, LLMError, RetryableError
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.testing.loopback import LoopbackServer

CONFIG = dict(model="loopback", tasks_per_type=2, examples_per_task=4, languages="English,German,French", seed=0)


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


class FakeServer:
    """A backend that answers after a short wait and records how many requests it held at once; a dead one refuses."""

    def __init__(self, concurrency: int, dead: bool = False, name: str = "fake"):
        self.concurrency, self.dead, self.base_url = concurrency, dead, name
        self.calls = self.in_flight = self.most_in_flight = 0

    async def complete(self, requests):
        self.calls += 1
        if self.dead:
            raise RetryableError("connection refused", "connection")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.005)
        self.in_flight -= 1
        return [ChatResponse(text=f"{self.base_url}:{r.messages[0]['content']}", model=r.model) for r in requests]

    async def aclose(self):
        return None


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest("m", [{"role": "user", "content": str(i)}]) for i in range(n)]


def test_requests_spread_within_each_servers_concurrency_and_skip_a_dead_one():
    a, b, dead = FakeServer(2, name="a"), FakeServer(3, name="b"), FakeServer(4, dead=True, name="dead")
    backend = MultiEndpointBackend([a, dead, b], cooldown=60.0)
    assert backend.concurrency == 9
    answers = LLMClient(backend, max_retries=0).run(_requests(60))
    assert all(isinstance(x, ChatResponse) for x in answers)
    assert [x.text.split(":")[1] for x in answers] == [str(i) for i in range(60)]  # each its own answer
    assert a.calls + b.calls == 60 and a.calls > 0 and b.calls > 0
    assert a.most_in_flight <= 2 and b.most_in_flight <= 3
    assert 1 <= dead.calls <= 4  # only the requests sent before it was known dead (at most its slots)
    assert [s["down"] for s in backend.status()] == [False, True, False]


def test_when_every_server_is_down_the_client_gets_the_failure():
    backend = MultiEndpointBackend([FakeServer(2, dead=True), FakeServer(2, dead=True)], cooldown=60.0)
    answers = LLMClient(backend, max_retries=1, backoff=0.001).run(_requests(3))
    assert all(isinstance(x, LLMError) and x.kind == "connection" for x in answers)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(out, base_url: str, concurrency: int = 4):
    backend = make_backend("openai", base_url=base_url, concurrency=concurrency, timeout=10.0)
    stats = generate(out, GenerateConfig(**CONFIG), backend=backend, base_url=base_url, backoff=0.01,
                     progress=False, stand_in=True)  # fmt: skip
    return stats, backend


def test_a_run_over_several_servers_equals_the_one_server_run_when_one_is_dead_and_one_dies(tmp_path):
    with LoopbackServer() as one:
        reference, _ = _run(tmp_path / "one", one.base_url)
    servers = [LoopbackServer(latency=0.01).start() for _ in range(3)]
    dying = servers[1]

    def stop_after_some() -> None:  # the second server dies in the middle of the run
        while dying.served["requests"] < 15:
            time.sleep(0.005)
        dying.stop()

    killer = threading.Thread(target=stop_after_some, daemon=True)
    killer.start()
    try:
        dead_url = f"http://127.0.0.1:{_free_port()}/v1"
        urls = ",".join([servers[0].base_url, dead_url, dying.base_url, servers[2].base_url])
        stats, backend = _run(tmp_path / "many", urls, concurrency=3)
        killer.join(10)
    finally:
        for server in servers:
            server.stop()
    assert isinstance(backend, MultiEndpointBackend) and backend.concurrency == 12
    assert stats["complete"] and stats["accepted"] == reference["accepted"]
    for name in ("examples.jsonl", "rejects.jsonl", "tasks.jsonl"):
        assert (tmp_path / "many" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    status = backend.status()
    assert status[1]["answered"] == 0 and status[1]["failures"] >= 1  # nothing listens there
    assert 15 <= dying.served["requests"] < stats["requests"]["generate_planned"]
    assert status[0]["answered"] > 0 and status[3]["answered"] > 0
