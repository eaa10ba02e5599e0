"""Feeding a run's plan to the LLM client and taking its answers back in plan order, in bounded memory; judging replies
in worker processes (pipeline.py runs the steps).

    async for planned, answer, verdict in in_plan_order(client, pending_plans, judging=judging, window=8192):
        ...   # plan order, whatever order the answers came in; verdict: judge(...) of the answer, None for a failure

The plan is read a request at a time (plan.iter_generation_plan) and never held whole: the client reads it only as far
as `window` requests past the oldest one still unanswered (LLMClient.stream), and here the answers wait for their turn
in the plan, so a run holds about `window` requests at any moment, whether it plans 5,000 or the paper's 507,000 (a
plan held whole was about 2 KB a request: 1 GB at 507k). The batch backend answers a stage's requests into the cache
first (LLMClient.prefetch, batch.py: its files are on disk, not in memory), then the stage is streamed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from .llm import ChatResponse, LLMClient, LLMError
from .plan import Planned

# From this many requests in flight, judging replies on the event loop holds back sending: measured with 200 ms
# replies at concurrency 32, one worker process gave 0.90 of the ideal request rate against 0.88 inline
# (docs/benchmarks.md). Below it, the worker's start-up costs more than it saves.
AUTO_WORKERS_CONCURRENCY = 32
# Requests a run holds at least: at 256 in flight, one request retrying for a minute stops reading only after the
# 8,000 behind it were answered (30 s of the servers' capacity), and 8,192 planned requests are about 20 MB.
PLAN_WINDOW = 8192


def plan_window(backend: Any) -> int:
    """How far reading the plan may run ahead of its oldest unanswered request: PLAN_WINDOW, or four times what the
    backend can have in flight when that is more. A backend that prefetches (the Batch API) has put every answer in
    the cache before the stage is streamed: PLAN_WINDOW."""
    if hasattr(backend, "prefetch"):
        return PLAN_WINDOW
    in_flight = max(1, int(getattr(backend, "concurrency", 1))) * max(1, int(getattr(backend, "batch_size", 1)))
    return max(PLAN_WINDOW, 4 * in_flight)


async def in_plan_order(
    client: LLMClient,
    plans: Iterable[Planned],
    *,
    progress: Any = None,
    judging: Callable[[Planned, ChatResponse], asyncio.Future] | None = None,
    window: int | None = None,
) -> AsyncIterator[tuple[Planned, ChatResponse | LLMError, Any]]:
    """(plan, response or LLMError, verdict) in plan order, holding back answers that arrive early.

    `plans` is read lazily. `judging(planned, response)` starts judging an answer as it arrives (a future, done at once
    or in a worker process); the verdict is its result, None without `judging` or for a failure. Where the client's
    stream ended early (the budget), what is left follows in plan order after the gap. With a `window`, at most about
    twice that many requests are held: read and unanswered (the client's bound), plus answered ones waiting for a
    verdict (past `window` of those, the oldest verdict is waited for).
    """
    held: dict[int, Planned] = {}

    def requests():
        for n, planned in enumerate(plans):
            held[n] = planned
            yield planned.request

    slots: dict[int, tuple[ChatResponse | LLMError, asyncio.Future | None]] = {}
    position = 0

    async def verdict(future: asyncio.Future | None) -> Any:
        return None if future is None else await future

    # aclosing: a caller that stops reading (a full disk while writing an answer) stops the client's workers here and
    # now, before the backend is closed under them
    async with contextlib.aclosing(client.stream(requests(), progress, window)) as stream:
        async for i, answer in stream:
            is_failure = judging is None or isinstance(answer, LLMError)
            slots[i] = (answer, None if is_failure else judging(held[i], answer))
            while position in slots:
                answer, future = slots[position]
                if future is not None and not future.done() and (window is None or len(slots) <= window):
                    break  # its verdict comes later; past the window, judging is behind: wait for it
                del slots[position]
                yield held.pop(position), answer, await verdict(future)
                position += 1
    for i in sorted(slots):  # the stream ended early (the budget): the rest, in plan order
        answer, future = slots.pop(i)
        yield held.pop(i), answer, await verdict(future)


# --- judging in worker processes ---------------------------------------------------------------------------------------


def auto_workers(concurrency: int, bulk: bool = False) -> int:
    """Judging processes when none are asked for: one for high-concurrency runs on a machine with a core to spare; one
    per core for a backend whose answers arrive a batch at a time (`bulk`: the Batch API), where judging a batch of
    50,000 is the run's remaining work and the event loop mostly waits (measured: one worker judged a 50k batch in 81 s
    after it ended, at about 1.5 ms an answer, nearly all of it language detection)."""
    cores = os.cpu_count() or 1
    if bulk:
        return cores
    return 1 if concurrency >= AUTO_WORKERS_CONCURRENCY and cores >= 2 else 0


def judging_pool(workers: int):
    """A pool of `workers` judging processes that end with this one, or None for none."""
    if workers <= 0:
        return None
    import concurrent.futures
    import multiprocessing

    # forkserver: forking a process that runs threads (the loopback server, the event loop) is not safe
    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_start_worker,
        initargs=(os.getpid(),),
    )


def _start_worker(run_pid: int) -> None:
    """Set up a judging worker process: end it with the run, and load the language detector once, before the first
    reply arrives."""
    _end_with(run_pid)
    from .parsing import detect_language

    detect_language("warm up the detector")


def _end_with(pid: int) -> None:
    """End this process as soon as process `pid` ends, however it ends (SIGKILL and SIGTERM included). A worker's parent
    is multiprocessing's forkserver, which itself stays up while any worker lives, so neither would ever notice that
    the run is gone (measured: both kept running after a SIGKILL); PR_SET_PDEATHSIG would watch the forkserver, not the
    run. A pidfd becomes readable when its process ends; without one (not Linux), the run is looked for every second."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])
        else:  # signal 0 finds the run for as long as it exists
            with contextlib.suppress(ProcessLookupError):
                while not os.kill(pid, 0):
                    time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-run", daemon=True).start()
