"""Many OpenAI-compatible servers as one backend: each request goes to a live server with a free slot, and a server
that stops answering is set aside while its requests go to the others.

    synthembed generate --out runs/gen --base-url http://gpu1:8000/v1,http://gpu2:8000/v1 --concurrency 64
    # --concurrency is per server here: 2 x 64 requests in flight

    from synthembed.generation.backends import OpenAIBackend
    backend = MultiEndpointBackend([OpenAIBackend(base_url=url, concurrency=64) for url in urls])

How a dead server is handled: a connection that fails (refused, reset, cut mid-answer) or MAX_TIMEOUTS timeouts in a
row set the server aside for a cool-down that doubles at each failure (COOLDOWN .. MAX_COOLDOWN seconds) and the
request goes at once to another server it has not tried; after the cool-down the server gets requests again, and the
first one it answers clears its record. Only when every server has failed a request does its error go back to the
LLMClient, whose retries and backoff then apply as for one server. Rate limits and server errors (429, 5xx) are the
server's answer, not its death: they go to the LLMClient unchanged. Replies do not depend on which server sent them
(the cache key is the request), so a run resumes whatever the list of servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .llm import ChatRequest, ChatResponse, RetryableError

COOLDOWN = 5.0
MAX_COOLDOWN = 300.0
MAX_TIMEOUTS = 3


@dataclass(eq=False)
class _Server:
    backend: Any  # an OpenAIBackend: complete([request]), concurrency, base_url
    in_flight: int = 0
    down_until: float = 0.0
    cooldown: float = COOLDOWN
    timeouts: int = 0
    answered: int = 0
    failures: int = 0

    @property
    def free(self) -> int:
        return self.backend.concurrency - self.in_flight


class MultiEndpointBackend:
    """Several servers behind one backend; `concurrency` is the sum of theirs (the LLMClient's workers)."""

    name = "openai"
    batch_size = 1

    def __init__(self, backends: Sequence[Any], cooldown: float = COOLDOWN, max_cooldown: float = MAX_COOLDOWN):
        if not backends:
            raise ValueError("MultiEndpointBackend needs at least one backend")
        self.servers = [_Server(b, cooldown=cooldown) for b in backends]
        self.concurrency = sum(max(1, int(b.concurrency)) for b in backends)
        self.base_url = ",".join(str(getattr(b, "base_url", "")) for b in backends)
        self.initial_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._changed = asyncio.Condition()

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        return [await self._one(request) for request in requests]

    async def _one(self, request: ChatRequest) -> ChatResponse:
        tried: set[int] = set()
        while True:
            server = await self._acquire(tried)
            try:
                answer = (await server.backend.complete([request]))[0]
            except RetryableError as err:
                if not self._dead(server, err):
                    raise  # the server answered (429, 5xx, a bad body): the LLMClient's retry decides
                tried.add(id(server))
                continue
            finally:
                async with self._changed:
                    server.in_flight -= 1
                    self._changed.notify_all()
            server.answered += 1
            server.timeouts = 0
            server.cooldown = self.initial_cooldown
            return answer

    def _dead(self, server: _Server, err: RetryableError) -> bool:
        """Whether `err` says the server is gone; if so it is set aside for its cool-down (doubled for the next)."""
        if err.kind == "timeout":
            server.timeouts += 1
            if server.timeouts < MAX_TIMEOUTS:
                return False
        elif err.kind != "connection":
            return False
        server.failures += 1
        server.timeouts = 0
        server.down_until = time.monotonic() + server.cooldown
        server.cooldown = min(server.cooldown * 2, self.max_cooldown)
        return True

    async def _acquire(self, tried: set[int]) -> _Server:
        """A live server not yet tried for this request, with a free slot (the one with the most), waiting for a slot
        where all are busy. Every server tried or down: a RetryableError for the LLMClient to back off on."""
        async with self._changed:
            while True:
                now = time.monotonic()
                live = [s for s in self.servers if s.down_until <= now and id(s) not in tried]
                if not live:
                    down = [s.backend.base_url for s in self.servers if s.down_until > now]
                    raise RetryableError(f"no endpoint answers (down: {', '.join(map(str, down)) or 'none'})",
                                         "connection")  # fmt: skip
                best = max(live, key=lambda s: s.free)
                if best.free > 0:
                    best.in_flight += 1
                    return best
                # every live server is full: wait for a slot, or for a cool-down to end
                ends = [s.down_until - now for s in self.servers if s.down_until > now]
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(ends) if ends else None)
                except asyncio.TimeoutError:
                    pass

    def status(self) -> list[dict[str, Any]]:
        """Per server: its URL, answers, failures, and whether it is set aside now."""
        now = time.monotonic()
        return [{"base_url": s.backend.base_url, "answered": s.answered, "failures": s.failures,
                 "down": s.down_until > now} for s in self.servers]  # fmt: skip

    async def aclose(self) -> None:
        for server in self.servers:
            await server.backend.aclose()
