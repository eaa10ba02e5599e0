"""The two-step synthetic data pipeline of the paper (section 3.1): brainstorm tasks, generate one example per request,
parse, validate, deduplicate, write. Resumable: kill it at any moment and run it again on the same directory.

    from synthembed.generation.pipeline import generate
    from synthembed.generation.plan import GenerateConfig
    stats = generate("runs/gen", GenerateConfig(model="gpt-4o-mini", tasks_per_type=4, examples_per_task=3), concurrency=16)

    synthembed generate --out runs/gen --model gpt-4o-mini --tasks-per-type 4 --examples-per-task 3 --max-cost 2
    synthembed stats runs/gen --plots runs/gen/plots

The run directory's files are rundir.py's (examples.jsonl, tasks.jsonl, rejects.jsonl, stats.json, cache.sqlite,
config.json); the requests are plan.py's, fed to the client a window at a time by feed.py; stats.json is computed by
stats.py; the commands are commands.py's.

How resuming stays exact:
- The plan (every request) is a pure function of the config and the brainstorm responses; each request carries its own
  seed, so two samples of one prompt are two requests.
- A response is committed to the cache before anything derived from it is written, and examples and rejects are appended
  one line at a time, flushed, in plan order. A rerun rebuilds its state from those files, answers the requests it
  already paid for from the cache, and sends only the others. Failed requests (after retries) are written nowhere and
  are tried again by the next run.
- A run is complete only when every planned request has an answer or a final verdict. A brainstorm request that failed
  holds its group back: no more brainstorm waves and no generation for it in this session (extra waves would make
  tasks differ from those of a run without the fault), and the rerun that gets its answer goes on exactly as that run.
- One process at a time works in a run directory (files.folder_lock); a second one is refused, naming the first.
- A different config on an existing directory is refused, naming what differs; a finished run is left as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..data import Example, ExampleMeta
from ..errors import SynthembedError
from ..files import folder_lock
from ..taskgroups import TASK_TYPES
from . import rundir
from .backends import make_backend
from .cache import ResponseCache
from .cost import cost_usd, load_prices, price_of
from .dedup import Deduplicator, normalize_text
from .digests import DigestSet
from .feed import auto_workers, in_plan_order, judging_pool, plan_window
from .llm import ChatResponse, LLMClient, LLMError, run_async
from .parsing import ParseError, judge, parse_task_list, reply_problem
from .plan import TASKS_PER_BRAINSTORM, GenerateConfig, Planned, brainstorm_plan, iter_generation_plan, plan_size
from .prompts import task_instruction
from .stats import compute_stats, summary_line


def _is_fenced(response: ChatResponse | None) -> bool:
    return bool(response and response.text and "```" in response.text)


def _progress_bar(enabled: bool, total: int, desc: str):
    if not (enabled and total):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, mininterval=1.0)


class _Run:
    """State of one session on a run directory: what is done, what was accepted (for deduplication), the open files."""

    def __init__(self, out: Path, config: GenerateConfig, client: LLMClient, progress: bool):
        self.out = out
        self.config = config
        self.client = client
        self.progress = progress
        # What earlier sessions did, read a record at a time and remembered as digests (flat memory at 500k requests)
        self.done = DigestSet()
        self.generated_done = 0  # generation requests among them: the progress bar's total
        self.dedup = Deduplicator()
        for e in rundir.iter_records(out, rundir.EXAMPLES_FILE, repair=True):
            self._mark_done(e["meta"].get("request_id", e["id"]))
            self.dedup.check(e["task_type"], e["query"], e["positive"], e.get("negative"))
        for r in rundir.iter_records(out, rundir.REJECTS_FILE, repair=True):
            self._mark_done(r["request_id"])
        self.pool = None  # a ProcessPoolExecutor for judging replies, set when workers are asked for
        # Per brainstorm group: its requests of this session that got no answer (failed after retries, or not sent once
        # the budget was spent). Such a group waits: it gets no generation requests until a rerun answers them.
        self.unanswered: dict[str, int] = {}
        self.files = rundir.Appender(out)

    def close(self) -> None:
        self.files.close()

    def _mark_done(self, request_id: str) -> None:
        if self.done.add(request_id) and request_id.startswith("generate/"):
            self.generated_done += 1

    # --- writing ----------------------------------------------------------------------------------------------------

    def reject(self, planned: Planned, reason: str, detail: str, response: ChatResponse | None) -> None:
        if planned.request_id in self.done:
            return
        self._mark_done(planned.request_id)
        self.files.reject({
            "request_id": planned.request_id,
            "stage": planned.stage,
            "task_type": planned.task_type,
            "language": planned.placeholders.get("language"),
            "reason": reason,
            "detail": detail[:500],
            "fenced": _is_fenced(response),
            "response": (response.text or response.refusal or "")[:4000] if response else None,
        })

    def accept(self, planned: Planned, response: ChatResponse, obj: dict[str, Any], query: str, positive: str,
               negative: str | None) -> None:
        self._mark_done(planned.request_id)
        meta = ExampleMeta(placeholders=planned.placeholders, model=response.model or planned.request.model,
                           prompt_sha256=planned.prompt_sha256, request_id=planned.request_id,
                           fenced=_is_fenced(response))
        example = Example(
            id=planned.request_id.removeprefix("generate/").replace("/", "-"),
            task_type=planned.task_type,
            task=planned.task or task_instruction(planned.task_type, None),
            language=planned.placeholders.get("language", "English"),
            query=query,
            positive=positive,
            negative=negative,
            fields=obj,
            meta=meta,
        )
        self.files.example(example.model_dump(mode="json"))

    def process(self, planned: Planned, response: ChatResponse, judged: tuple | None = None) -> None:
        """Deduplicate and write one generation response, judged (parsed and validated) here unless `judged` is given."""
        if planned.request_id in self.done:
            return
        if judged is None:
            judged = judge(planned.task_type, response.text, response.finish_reason, response.refusal, planned.placeholders,
                           self.config.length_tolerance)
        if judged[0] == "reject":
            self.reject(planned, judged[1], judged[2], response)
            return
        _, obj, (query, positive, negative) = judged
        duplicate = self.dedup.check(planned.task_type, query, positive, negative)
        if duplicate:
            self.reject(planned, duplicate, "same text as an earlier accepted example", response)
            return
        self.accept(planned, response, obj, query, positive, negative)

    # --- step 1: brainstorm -----------------------------------------------------------------------------------------

    def _wave(self, tasks: dict[str, list[str]], next_round: dict[str, int]) -> list[Planned]:
        """The next brainstorm requests: per group, as many rounds as its shortfall needs (so 20k tasks are not 2k waves),
        planning for half of the ~20 asked for, since duplicates and bad replies happen."""
        per_reply = TASKS_PER_BRAINSTORM // 2
        wave = []
        for t in self.config.brainstorm_groups:
            if t in self.unanswered:
                continue
            missing = self.config.tasks_wanted(t) - len(tasks[t])
            count = min(-(-missing // per_reply), self.config.brainstorm_rounds - next_round[t]) if missing > 0 else 0
            wave += [brainstorm_plan(self.config, t, next_round[t] + i) for i in range(count)]
            next_round[t] += count
        return wave

    def _task_list(self, planned: Planned, answer: ChatResponse | LLMError) -> list[str]:
        """The task definitions of one brainstorm answer; a bad answer is written to rejects.jsonl and gives none."""
        if isinstance(answer, LLMError):
            return []
        problem = reply_problem(answer.text, answer.finish_reason, answer.refusal)
        if problem:
            self.reject(planned, *problem, answer)
            return []
        try:
            return parse_task_list(answer.text)
        except ParseError as err:
            self.reject(planned, err.reason, err.detail, answer)
            return []

    async def brainstorm(self) -> dict[str, list[str]]:
        """Task definitions per asymmetric group, in waves of requests for the groups still short of tasks."""
        groups = self.config.brainstorm_groups
        tasks: dict[str, list[str]] = {t: [] for t in groups}
        seen: dict[str, set[str]] = {t: set() for t in groups}
        rows: list[dict[str, Any]] = []
        next_round = dict.fromkeys(groups, 0)
        for wave_index in range(self.config.brainstorm_rounds):
            wave = self._wave(tasks, next_round)
            if not wave:
                break
            answered = set()
            progress = _progress_bar(self.progress, len(wave), f"brainstorm {wave_index + 1}")
            try:
                # the Batch API: the wave goes out in batches, its answers into the cache, read back below as they come
                async with (self.client.prefetching(p.request for p in wave),
                            contextlib.aclosing(in_plan_order(self.client, wave, progress=progress)) as answers):  # fmt: skip
                    async for planned, answer, _ in answers:
                        group = planned.task_type
                        if not isinstance(answer, LLMError):
                            answered.add(planned.request_id)
                        for task in self._task_list(planned, answer):
                            key = normalize_text(task)
                            if len(tasks[group]) >= self.config.tasks_wanted(group) or key in seen[group]:
                                continue
                            seen[group].add(key)
                            tasks[group].append(task)
                            rows.append({"task_type": group, "task": task, "request_id": planned.request_id})
            finally:
                if progress is not None:
                    progress.close()
            for planned in wave:
                if planned.request_id not in answered:
                    self.unanswered[planned.task_type] = self.unanswered.get(planned.task_type, 0) + 1
        # tasks.jsonl holds the tasks generation uses: those of a waiting group may still change when it is answered.
        rows = [r for r in rows if r["task_type"] not in self.unanswered]
        rows.sort(key=lambda r: TASK_TYPES.index(r["task_type"]))
        rundir.write_tasks(self.out, rows)
        return {t: [] if t in self.unanswered else found for t, found in tasks.items()}

    # --- step 2: generate -------------------------------------------------------------------------------------------

    def _count_earlier_spending(self, tasks: dict[str, list[str]]) -> None:
        """What earlier sessions paid for the examples already written counts against --max-cost (one pass over the
        plan, only for a resumed run with a budget: nothing else reads it)."""
        cache = self.client.cache
        if cache is None or self.client.max_cost is None or not self.done:
            return
        for p in iter_generation_plan(self.config, tasks):
            hit = cache.get(p.request) if p.request_id in self.done else None
            if hit is not None:
                self.client.spent_before += cost_usd(hit.model or p.request.model, hit.prompt_tokens,
                                                     hit.completion_tokens, self.client.prices)

    def _judging(self, planned: Planned, answer: ChatResponse) -> asyncio.Future:
        """A future of judge(answer): in a worker process when there is a pool, else already done."""
        args = (planned.task_type, answer.text, answer.finish_reason, answer.refusal, planned.placeholders,
                self.config.length_tolerance)
        loop = asyncio.get_running_loop()
        if self.pool is not None:
            return loop.run_in_executor(self.pool, judge, *args)
        future = loop.create_future()
        future.set_result(judge(*args))
        return future

    async def generate(self, tasks: dict[str, list[str]]) -> None:
        """Send the pending generation requests, planned as they are sent (feed.py: the plan is never held whole);
        judge each answer as it arrives (in worker processes when there are any), then deduplicate and write in plan
        order, so the accepted set does not depend on arrival order."""
        self._count_earlier_spending(tasks)
        if self.client.stopped:
            return
        pending = (p for p in iter_generation_plan(self.config, tasks) if p.request_id not in self.done)
        # The Batch API: every pending request goes out in batches (a second pass over the plan), the answers into the
        # cache, read back below in plan order as their batches are imported; other backends answer as they are asked.
        sent = (p.request for p in iter_generation_plan(self.config, tasks) if p.request_id not in self.done)
        progress = _progress_bar(self.progress, max(0, plan_size(self.config, tasks) - self.generated_done), "generate")
        answers = in_plan_order(self.client, pending, progress=progress, judging=self._judging,
                                window=plan_window(self.client.backend))
        try:
            async with self.client.prefetching(sent), contextlib.aclosing(answers):
                async for planned, answer, verdict in answers:
                    if verdict is not None:
                        self.process(planned, answer, verdict)
        finally:
            if progress is not None:
                progress.close()


def check_budget(max_cost: float | None, models: list[str], prices: dict, paid: bool) -> None:
    """Refuse a budget that cannot work: negative or NaN, or set for a model the price table lacks (its replies would
    cost $0 and the run would never stop). `paid` is False for endpoints that cost nothing (the stand-in, a local
    model, a replay), where an unpriced model is fine."""
    if max_cost is None:
        return
    if not max_cost >= 0:  # also catches NaN
        raise SynthembedError(f"--max-cost must be a number of USD >= 0, not {max_cost!r}")
    unpriced = sorted({m for m in models if price_of(m, prices) is None})
    if paid and unpriced:
        raise SynthembedError(
            f"--max-cost is set but {', '.join(unpriced)} has no price, so its replies would count as $0 and the budget "
            "would never stop the run: give its prices with --prices FILE ({model: {input: USD per 1M tokens, output: "
            "USD per 1M}}), or drop --max-cost"
        )


def _run_session(run: _Run, backend: Any, workers: int) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Brainstorm, then generate, on the event loop; (the tasks generation used, seconds per step)."""
    run.pool = judging_pool(workers)
    timing: dict[str, float] = {}

    async def steps() -> dict[str, list[str]]:
        try:
            started = time.perf_counter()
            tasks = await run.brainstorm()
            timing["brainstorm_s"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            await run.generate(tasks)
            timing["generate_s"] = round(time.perf_counter() - started, 3)
            return tasks
        finally:
            closer = getattr(backend, "aclose", None)
            if closer is not None:
                await closer()

    try:
        tasks = run_async(steps())
    finally:
        run.close()
        if run.pool is not None:
            run.pool.shutdown(cancel_futures=True)
    return tasks, timing


def generate(
    out: str | Path,
    config: GenerateConfig | None = None,
    *,
    backend: str | Any = "openai",
    base_url: str | None = None,
    concurrency: int = 8,
    max_cost: float | None = None,
    cache: str | Path | None = None,
    prices: str | Path | dict | None = None,
    timeout: float = 120.0,
    max_retries: int = 6,
    backoff: float = 1.0,
    batch_size: int = 8,
    workers: int | None = None,
    stand_in: bool = False,
    progress: bool = True,
    max_batches: int = 64,
    batch_file_requests: int | None = None,
    enqueued_token_limit: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a generation into `out`; returns its stats (also written to out/stats.json).

    `backend` is "openai", "transformers" (config.model is then a local path or hub id), "replay" (answers only from
    `cache`), or a backend object. `max_cost` in USD stops sending once reached; a later run with a higher budget
    continues where this one stopped. A budget for a model without a price is refused on a paid endpoint (check_budget). `workers` > 0 parses and validates replies in that many worker processes
    (language detection is the costly part), which keeps the event loop free to send at full concurrency; None
    chooses by `auto_workers`.
    `stand_in=True` marks the run as the loopback stand-in's in stats.json (also detected from its answers' signature).
    `max_batches` is how many batches the openai-batch backend has in flight at once (one while `max_cost` is set),
    `batch_file_requests` how many requests go in one of its files (default batch_files.FILE_REQUESTS),
    `enqueued_token_limit` the provider's limit on the input tokens of queued batches, where known (batch_queue.py).
    """
    config = config or GenerateConfig()
    out = Path(out)
    with folder_lock(out, "synthembed generate"):  # two processes on one run would both append
        resumed = rundir.check_out_dir(out, config.as_dict())
        cache_file = rundir.cache_path(out, cache)
        if backend == "replay" and not cache_file.is_file():
            raise SynthembedError(f"replay needs an existing response cache; {cache_file} does not exist (--cache FILE)")
        previous = (rundir.read_stats(out, missing_ok=True) or {}) if resumed else {}
        if previous.get("complete"):
            if progress:
                print(f"[generate] {out} is already complete ({previous.get('accepted')} examples); nothing to do")
            return previous
        price_table = load_prices(prices if isinstance(prices, (str, Path)) else None,
                                  prices if isinstance(prices, dict) else None)
        backend_name = backend if isinstance(backend, str) else getattr(backend, "name", type(backend).__name__)
        if workers is None:
            workers = auto_workers(concurrency, bulk=backend_name in ("openai-batch", "batch-files"))
        check_budget(max_cost, [config.model, *(config.model_shares or {})], price_table,
                     paid=backend_name in ("openai", "openai-batch") and not stand_in)
        if not timeout > 0:  # also NaN
            raise SynthembedError(f"--timeout must be a number of seconds > 0, not {timeout!r}")
        endpoint = base_url or (os.environ.get("OPENAI_BASE_URL") if backend_name in ("openai", "openai-batch") else None)
        runtime = {"backend": backend_name, "base_url": rundir.safe_url(endpoint), "concurrency": concurrency,
                   "max_cost": max_cost, "cache": str(cache_file), "timeout": timeout, "stand_in": stand_in,
                   "workers": workers}
        if backend == "transformers" and len(config.model_shares or {}) > 1:
            raise SynthembedError("the transformers backend runs one local model; model_shares needs an endpoint that serves "
                                  "each of its models (--backend openai)")
        if isinstance(backend, str):  # before anything is written: a missing key leaves no half-made run behind
            backend = make_backend(backend, model=config.model if backend == "transformers" else None, base_url=base_url,
                                   concurrency=concurrency, timeout=timeout, batch_size=batch_size,
                                   max_new_tokens=config.max_tokens or 1024, state_dir=out,
                                   stand_in=stand_in or config.model.startswith("loopback"), max_batches=max_batches,
                                   batch_file_requests=batch_file_requests,
                                   enqueued_token_limit=enqueued_token_limit)
        # A backend with its own prices (the Batch API's half price) counts every answer of the run at them.
        factor = getattr(backend, "price_factor", 1.0)
        price_table = {m: (i * factor, o * factor) for m, (i, o) in price_table.items()} if factor != 1.0 else price_table
        out.mkdir(parents=True, exist_ok=True)
        rundir.write_config(out, config.as_dict(), runtime)
        response_cache = ResponseCache(cache_file)
        if response_cache.get_meta("config") is None:
            response_cache.set_meta("config", json.dumps(config.as_dict()))
        client = LLMClient(backend, cache=response_cache, prices=price_table, max_cost=max_cost, max_retries=max_retries,
                           backoff=backoff, seed=config.seed)
        run = _Run(out, config, client, progress)
        tasks, timing = _run_session(run, backend, workers)
        stats = compute_stats(out, config, tasks, response_cache, price_table, runtime, client, previous, timing,
                              run.unanswered)
        response_cache.close()
        rundir.write_stats(out, stats)
        if progress:
            print(summary_line(stats))
        return stats
