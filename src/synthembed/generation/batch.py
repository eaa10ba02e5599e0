"""OpenAI's Batch API as a backend (`--backend openai-batch`): requests go out in JSONL files, answers come back within
24 hours at half the list price, and land in the run's response cache like any other backend's.

    synthembed generate --out runs/gen --backend openai-batch --model gpt-4o-mini --tasks-per-type 4
    synthembed generate --out runs/gen                     # after a kill: polls the same batches, sends nothing twice

How a run uses it (LLMClient.prefetching, around each stage's stream of requests): the stage's requests are read a
line at a time and written to batch files (batch_files.py: OUT/batches/NNNNN.jsonl within BatchLimits, 10,000 requests
and 200 MB per file by default), each uploaded (files.create, purpose "batch"), submitted (batches.create, endpoint
/v1/chat/completions, completion window 24h) and polled (batches.retrieve) until it ends, at most `max_in_flight`
batches at once. An ended batch's output and error files are downloaded to disk (files.content, streamed) and joined
with its input file line by line: answers go into the response cache, lines that failed for a passing reason (429,
5xx, an expired or cancelled batch, a line with no answer) go into a follow-up batch, `resubmits` times, and a 4xx
rejection is final. Meanwhile the stage streams its requests as usual: `complete` waits for each answer to be
imported and reads it from the cache. Nothing here holds more than one batch file's keys and offsets, so memory stays
flat whatever the run's size; the answers count as fresh ones (LLMClient).

Resuming: OUT/batches.json (rundir) records every batch file with its upload, its batch id, its status and whether its
results were imported, written atomically before and after each step; OUT/batches/index.sqlite maps each request to the
newest batch file holding it. A new session waits for the batch that holds a request it still needs (imported ones
excepted: what is not in the cache failed there, and is sent again); only requests in no batch are written anew. A file
uploaded but not yet submitted is matched against the account's recent batches (batches.list) by its input file id
before it is submitted, so a kill between submitting and recording does not submit it twice.

Cost is counted at batch prices (`price_factor`, applied to the price table by pipeline.generate). With `--max-cost`,
batches go out one at a time, each only while the answers of those before it leave budget: a batch once submitted is
paid whole. Progress: a "batches" bar of lines answered over lines submitted, with how many batches are in each status
(where stderr is a terminal).

The provider's enqueued-token limit (batch_queue.py): a batch refused for it ("failed", token_limit_exceeded: nothing
run, nothing billed) is submitted again from the same file once the run's batches in flight leave room, not resent line
by line; its lines never count as failures. With the limit given (`token_limit`, --enqueued-token-limit) files are
written under a quarter of it and batches go out only while it leaves room, so none is refused by this run alone.

The same files run on your own GPUs through vLLM's offline batch runner: `--backend batch-files` (local=True) writes
them and stops, printing a `vllm run-batch` command per file; a rerun imports each results file the same way
(batch_jobs.LocalBatchJobs) and goes on to the next stage.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from . import rundir
from .batch_files import (
    BatchFileWriter,
    BatchLimits,
    ResultLines,
    iter_input_lines,
    read_result_line,
    request_of_line,
)
from .batch_jobs import BatchJobs, BatchNotRun, LocalBatchJobs
from .cost import cost_usd
from .llm import ChatRequest, ChatResponse, LLMError, NotSent, RetryableError, openai_credentials

BATCH_PRICE_FACTOR = 0.5  # the Batch API's price: half the list price of the same model
CACHE_WRITES = 1000  # answers put into the response cache per commit while a batch is imported
API_RETRIES = 6  # tries at waiting for and downloading a batch whose API calls fail (after the client's own retries)


class _CacheSink:
    """Where prefetched answers go: the response cache, a commit per CACHE_WRITES; `cost` of what was put, for the
    budget."""

    def __init__(self, cache: Any, prices: dict[str, tuple[float, float]]):
        self.cache, self.prices = cache, prices
        self.cost = 0.0
        self._pending: list[tuple[ChatRequest, ChatResponse]] = []

    def put(self, request: ChatRequest, answer: ChatResponse) -> None:
        self._pending.append((request, answer))
        self.cost += cost_usd(answer.model or request.model, answer.prompt_tokens, answer.completion_tokens, self.prices)
        if len(self._pending) >= CACHE_WRITES:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.cache.put_many(self._pending)  # an answer already cached stays as it was
            self._pending = []


class _MemorySink:
    """Where answers go when `complete` is called directly: every answer of the batches collected, in memory, until it
    is asked for (a batch of an earlier session may hold the answers of several calls)."""

    def __init__(self, answers: dict[str, ChatResponse]):
        self.answers = answers

    def put(self, request: ChatRequest, answer: ChatResponse) -> None:
        self.answers[request.key()] = answer

    def flush(self) -> None:
        return None


class OpenAIBatchBackend:
    """The Batch API behind the LLMClient: `prefetch(client, requests)` answers a stage's requests into its cache;
    `complete(requests)` answers the ones asked for directly (and gives a prefetched request's final error).

    `state_dir` is the run directory (batches.json and the batch files go there); `poll_interval` seconds between
    batches.retrieve calls; `resubmits` follow-up batches for lines that failed for a passing reason; `markers` sends each
    request's marker along (the loopback stand-in only); `max_in_flight` batches waited for at once; `token_limit` the
    provider's enqueued-token limit, where known (batch_queue.py: files are written under a share of it, and batches
    go out while it leaves room; without it, the limit a refusal names is learned and kept).
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
        local: bool = False,
        token_limit: int | None = None,
    ):
        import openai

        if int(max_in_flight) < 1:
            raise SynthembedError(f"max_in_flight (--max-batches) must be at least 1, not {max_in_flight!r}")
        self.state_dir = Path(state_dir)
        self.folder = self.state_dir / rundir.BATCH_INPUTS_DIR  # where the input files are written
        self.limits = limits or BatchLimits()
        self.batch_size = self.limits.max_requests  # what `complete` is handed at most: one file's worth
        self.max_in_flight = int(max_in_flight)
        # One LLMClient worker: after a prefetch it reads answers from the cache; a direct `complete` call sends its
        # requests in batches of its own, one call at a time.
        self.concurrency = 1
        self.api_backoff = 1.0  # seconds before the first retry of a failing batch API call, doubled each time
        self.resubmits = max(0, int(resubmits))
        self.markers = markers
        if local:  # batch-files: the files run through `vllm run-batch` on the user's GPUs, at no price per token
            self.name, self.price_factor, self.base_url, self._client = "batch-files", 0.0, None, None
            self.jobs = LocalBatchJobs(self.state_dir, progress)
        else:
            base_url, api_key = openai_credentials(
                base_url, "openai-batch", "a server with the files and batches endpoints"
            )
            self.base_url = base_url
            # Reads may be retried by the client; batches.create never is (a lost reply would mean a second batch).
            self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=3, timeout=timeout)
            self.jobs = BatchJobs(self.state_dir, self._client, api_key, poll_interval, progress, token_limit)
        self._direct = asyncio.Lock()  # `complete` calls, one at a time
        self._answered: dict[str, ChatResponse] = {}  # what direct calls collected and were not yet asked for
        self._writers = 0  # BatchFileWriters made, for their files' temporary names
        # Requests whose newest batch failed them for good this session: `complete` answers them with the error.
        self.final: dict[str, LLMError] = {}
        # Why a prefetch stopped sending ("max_cost"), and `complete` sends nothing either; None while it did not.
        self.not_sent: str | None = None
        # While a prefetch runs, `complete` waits for the answers it has not imported yet (`_imports` is notified
        # after each batch is imported, and when the prefetch ends).
        self._prefetching = 0
        self._prefetch_error: BaseException | None = None
        self._cache: Any = None
        self._imports = asyncio.Condition()

    # --- collecting a batch, and the rounds of batches a set of requests needs --------------------------------------

    async def _collect_with_retries(self, n: int, *args) -> None:
        """_collect, tried again with backoff while the API fails; after API_RETRIES the batch's lines get the error
        as their answer in this session (a rerun polls the same batch). However it ends, the batch no longer counts
        against the enqueued-token limit in this session: nothing would see it end."""
        try:
            for attempt in range(API_RETRIES + 1):
                try:
                    return await self._collect(n, *args)
                except BatchNotRun:
                    self.not_sent = self.not_sent or "batch_files"  # its requests wait for `vllm run-batch` and a rerun
                    return None
                except RetryableError as err:
                    if attempt == API_RETRIES:
                        entry = self.jobs.entry(n)
                        for obj in iter_input_lines(rundir.batch_input_path(self.state_dir, entry["file"])):
                            if self.jobs.index.get(obj["custom_id"]) == n:
                                self.final[obj["custom_id"]] = LLMError(f"batch {n} ({entry['file']}): {err}", err.kind)
                        return None
                    await asyncio.sleep(min(60.0, self.api_backoff * 2**attempt))
        finally:
            self.jobs.queue.ended(n)

    async def _collect(self, n: int, round_index: int, sink: Any, writers: dict[int, BatchFileWriter],
                       skip: Callable[[str], bool] | None, durable: bool) -> None:  # fmt: skip
        """Wait for batch `n`, then import it: each line of its input file joined with its result, the answers to
        `sink`, a line that failed for a passing reason to the next round's writer while rounds are left (else, or
        for a final error, to `self.final`). Lines a newer batch holds, or that `skip` says are answered, are left.
        A `durable` sink (the cache) marks the batch imported: a later session does not wait for it again."""
        batch = await self.jobs.wait(n)
        entry = self.jobs.entry(n)
        stem = self.folder / f"{n:05d}"
        paths = [await self.jobs.download(batch.output_file_id, stem.with_suffix(".output.jsonl")),
                 await self.jobs.download(batch.error_file_id, stem.with_suffix(".errors.jsonl"))]  # fmt: skip
        errors = getattr(batch.errors, "data", None) or []
        why = "; ".join(f"{e.code}: {e.message}" for e in errors)[:300] or f"batch {batch.status}"
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled", "failed": "batch_failed"}.get(
            batch.status, "no_answer"
        )
        results = ResultLines(paths)
        try:
            for line_number, obj in enumerate(iter_input_lines(rundir.batch_input_path(self.state_dir, entry["file"]))):
                if line_number and line_number % CACHE_WRITES == 0:  # let the stage read back what is imported so far
                    sink.flush()
                    await self._imported()
                key = obj.get("custom_id")
                request = request_of_line(obj)
                found = results.get(key)
                answer = read_result_line(found, request) if found else RetryableError(
                    f"no answer in batch {batch.id} ({why})", code)  # fmt: skip
                if isinstance(answer, ChatResponse):
                    sink.put(request, answer)
                    self.final.pop(key, None)
                    continue
                if self.jobs.index.get(key) != n or (skip is not None and skip(key)):
                    continue  # a newer batch holds it, or it was answered elsewhere
                if isinstance(answer, RetryableError) and round_index < self.resubmits:
                    if writers[round_index + 1].add(request):
                        continue
                    answer = self._too_large()
                self.final[key] = answer
        finally:
            results.close()
        sink.flush()  # before the batch counts as imported: a kill now leaves every answer in the cache
        if durable:
            entry.update(imported=True, imported_at=time.time())
            self.jobs.save()
        await self._imported()
        for path in paths:
            path.unlink(missing_ok=True)

    async def _imported(self) -> None:
        """Wake the `complete` calls waiting for answers, and give them their turn on the event loop."""
        async with self._imports:
            self._imports.notify_all()
        await asyncio.sleep(0)

    def _too_large(self) -> LLMError:
        return LLMError(f"request exceeds the batch file limit of {self.limits.max_bytes} bytes", "too_large")

    async def _fetch(self, requests: Iterable[ChatRequest], sink: Any, slots: asyncio.Semaphore, durable: bool,
                     skip: Callable[[str], bool] | None = None, over_budget: Callable[[], bool] | None = None) -> bool:  # fmt: skip
        """Answer `requests` through batches, into `sink`: read them a line at a time (those `skip` says are answered
        left out; those in an earlier session's batch waited for), write, submit and collect their batches, then the
        follow-ups. Round 0 is the requests themselves, round r the lines that failed in round r - 1 (an earlier
        session's batches count as round -1). True where `over_budget` stopped a submission."""
        self.jobs.load()
        await self.jobs.rewrite_over_cap()
        self._writers += 1
        ready: dict[int, list[int]] = {r: [] for r in range(self.resubmits + 1)}
        limits = self.jobs.file_limits(self.limits)  # under the enqueued-token limit, where one is known
        writers = {
            r: BatchFileWriter(self.folder, f"{os.getpid()}-{self._writers}-{r}", limits,
                               lambda *made, r=r: ready[r].append(self.jobs.record(*made)), self.markers)  # fmt: skip
            for r in range(self.resubmits + 1)
        }
        running: dict[asyncio.Task, int] = {}
        launched: set[int] = set()
        stopped = False

        async def launch(n: int, round_index: int) -> None:
            nonlocal stopped
            if n in launched or stopped:
                return
            await slots.acquire()
            new = self.jobs.entry(n)["batch_id"] is None
            if new and over_budget is not None and over_budget():
                slots.release()
                stopped = True  # written, not sent: a later session with more budget sends it
                return
            launched.add(n)
            task = asyncio.create_task(self._collect_with_retries(n, round_index, sink, writers, skip, durable))
            task.add_done_callback(lambda _: slots.release())
            running[task] = round_index
            await asyncio.sleep(0)  # let it start uploading while the scan reads on

        async def send_ready(scanning: bool) -> None:
            """Launch the files that are complete: full ones at once, a last partial one once nothing more can join
            it (lines join round r from batches of round r - 1, and round 0 from the scan too)."""
            for r in range(self.resubmits + 1):
                feeding = any(fed < r for fed in running.values()) or (r == 0 and scanning)
                if not feeding:
                    writers[r].close()
                while ready[r] and not stopped:
                    await launch(ready[r].pop(0), r)

        try:
            for request in requests:
                if stopped:
                    break
                key = request.key()
                if skip is not None and skip(key):
                    continue
                n = self.jobs.index.get(key)
                if n is not None and not self.jobs.entry(n).get("imported"):
                    await launch(n, -1)  # an earlier session's batch (or this one's) holds it
                    continue
                if not writers[0].add(request):
                    self.final[key] = self._too_large()
                if ready[0]:
                    await send_ready(scanning=True)
            await send_ready(scanning=False)
            while running:
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    del running[task]
                    task.result()  # a fatal error (a refused key, a damaged file) ends the stage
                await send_ready(scanning=False)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return stopped

    # --- the backend's interface ------------------------------------------------------------------------------------

    async def prefetch(self, client: Any, requests: Iterable[ChatRequest]) -> None:
        """Answer `requests` into `client.cache` through batches (those answered there already are left out). While
        it runs, `complete` waits for an answer not imported yet (LLMClient.prefetching streams the same requests
        meanwhile). With a budget (client.max_cost) one batch is out at a time, and none is submitted once the
        answers so far, at batch prices, reach it."""
        sink = _CacheSink(client.cache, client.prices)
        budget = None
        if client.max_cost is not None:
            def budget() -> bool:
                return client.spent_before + client.usage.cost_usd + sink.cost >= client.max_cost

        slots = asyncio.Semaphore(1 if budget is not None else self.max_in_flight)
        self._cache, self._prefetch_error = client.cache, None
        self._prefetching += 1
        try:
            if await self._fetch(requests, sink, slots, True, skip=client.cache.has, over_budget=budget):
                self.not_sent = "max_cost"  # before the waiters below wake: they must not send what it held back
        except BaseException as err:
            self._prefetch_error = err
            raise
        finally:
            sink.flush()
            self._prefetching -= 1
            await self._imported()

    async def _wait_for_prefetch(self, requests: Sequence[ChatRequest]) -> dict[str, ChatResponse]:
        """The answers a running prefetch put in the cache, waiting until each request has one, a final error, or the
        prefetch has ended."""
        answers: dict[str, ChatResponse] = {}
        waiting = list(requests)
        while waiting:
            still = []
            for request in waiting:
                key = request.key()
                hit = self._cache.get(request) if key not in self.final else None
                if hit is not None:
                    answers[key] = hit
                elif key not in self.final:
                    still.append(request)
            waiting = still
            if not waiting or not self._prefetching:
                break
            async with self._imports:
                await self._imports.wait()
        if self._prefetch_error is not None:
            raise self._prefetch_error
        return answers

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse | LLMError]:
        """Every request's answer. While a prefetch runs, from it (waiting for its batch). One that a prefetch failed
        for good gets its error; after a prefetch that stopped sending (`not_sent`), nothing is sent (NotSent); others
        are sent now, in batches, and waited for (one call at a time; their answers are held in memory until asked
        for: at scale, `prefetch` is the way). A line that fails for good is an LLMError in its place (the LLMClient
        counts it; the next run tries it again)."""
        prefetched = await self._wait_for_prefetch(requests) if self._cache is not None else {}
        async with self._direct:
            self.jobs.load()
            todo = [r for r in requests if r.key() not in prefetched and r.key() not in self.final
                    and r.key() not in self._answered]  # fmt: skip
            if todo and self.not_sent:
                raise NotSent(self.not_sent)
            if todo:
                await self._fetch(todo, _MemorySink(self._answered), asyncio.Semaphore(self.max_in_flight), False,
                                  skip=self._answered.__contains__)  # fmt: skip
            missing = LLMError("the batch gave no answer", "no_answer")
            return [prefetched.get(k) or self._answered.pop(k, None) or self.final.get(k) or missing
                    for k in (r.key() for r in requests)]  # fmt: skip

    @property
    def submitted(self) -> int:
        """Batches this session created."""
        return self.jobs.submitted

    async def aclose(self) -> None:
        await self.jobs.aclose()
        if self._client is not None:
            await self._client.close()


def batch_prices(
    prices: dict[str, tuple[float, float]], factor: float = BATCH_PRICE_FACTOR
) -> dict[str, tuple[float, float]]:
    """The price table at batch prices (`factor` times each list price).

    >>> batch_prices({"gpt-4": (30.0, 60.0)})
    {'gpt-4': (15.0, 30.0)}
    """
    return {model: (inp * factor, out * factor) for model, out_inp in prices.items() for inp, out in [out_inp]}
