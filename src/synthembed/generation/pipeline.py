"""The two-step synthetic data pipeline of the paper (section 3.1): brainstorm tasks, generate one example per request,
parse, validate, deduplicate, write. Resumable: kill it at any moment and run it again on the same directory.

    from synthembed.generation.pipeline import GenerateConfig, generate
    stats = generate("runs/gen", GenerateConfig(model="gpt-4o-mini", tasks_per_type=4, examples_per_task=3), concurrency=16)

    synthembed generate --out runs/gen --model gpt-4o-mini --tasks-per-type 4 --examples-per-task 3 --max-cost 2
    synthembed stats runs/gen --plots runs/gen/plots

A run directory (DESIGN.md, "Data formats") holds examples.jsonl (accepted), tasks.jsonl (brainstormed task definitions),
rejects.jsonl (every rejected output with its reason), stats.json, cache.sqlite (every response) and config.json.

How resuming stays exact:
- The plan (every request) is a pure function of the config and the brainstorm responses; each request carries its own
  seed, so two samples of one prompt are two requests.
- A response is committed to the cache before anything derived from it is written, and examples and rejects are appended
  one line at a time, flushed, in plan order. A rerun rebuilds its state from those files, answers the requests it
  already paid for from the cache, and sends only the others. Failed requests (after retries) are written nowhere and
  are tried again by the next run.
- A different config on an existing directory is refused, naming what differs; a finished run is left as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data import ASYMMETRIC_TASK_TYPES, TASK_TYPES, Example, ExampleMeta, iter_jsonl
from ..errors import SynthembedError
from ..files import write_json_atomic
from ..languages import parse_languages
from .llm import (
    BACKENDS,
    ChatRequest,
    ChatResponse,
    LLMClient,
    LLMError,
    ResponseCache,
    cost_usd,
    load_prices,
    make_backend,
    price_of,
    run_async,
)
from .parsing import ParseError, parse_json_object, parse_task_list, to_example_fields, validate_example
from .prompts import brainstorm_prompt, generation_prompt, sample_placeholders, task_instruction

CONFIG_FILE = "config.json"
CACHE_FILE = "cache.sqlite"
RUN_FILES = ("examples.jsonl", "tasks.jsonl", "rejects.jsonl", "stats.json", CACHE_FILE, CONFIG_FILE)
STAND_IN_NOTE = (
    "The LLM of this run is the loopback stand-in server: scripted responses composed from word lists and Tatoeba "
    "sentences, not text written by a language model. The numbers show that the pipeline works, not what an LLM would write."
)
TASKS_PER_BRAINSTORM = 20  # what the brainstorm prompt asks for ("about 20")


@dataclass
class GenerateConfig:
    """Everything that decides which requests a run sends; a resumed run must match it exactly."""

    model: str = "gpt-4o-mini"
    task_types: tuple[str, ...] = TASK_TYPES
    tasks_per_type: int = 4
    examples_per_task: int = 2
    languages: tuple[str, ...] | str = "paper"
    seed: int = 0
    temperature: float = 1.0  # the paper's sampling settings (section 3.1)
    top_p: float = 1.0
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.task_types, str):
            self.task_types = tuple(t.strip() for t in self.task_types.split(",") if t.strip())
        self.task_types = tuple(self.task_types)
        unknown = [t for t in self.task_types if t not in TASK_TYPES]
        if unknown or not self.task_types:
            raise SynthembedError(f"unknown task type(s) {unknown or self.task_types}; choose from {', '.join(TASK_TYPES)}")
        self.task_types = tuple(t for t in TASK_TYPES if t in self.task_types)  # canonical order
        self.languages = parse_languages(self.languages)
        if "bitext" in self.task_types and len(self.languages) < 2:
            raise SynthembedError("bitext needs at least two languages (--languages)")
        for name in ("tasks_per_type", "examples_per_task"):
            if int(getattr(self, name)) < 1:
                raise SynthembedError(f"{name} must be at least 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        if not self.model:
            raise SynthembedError("a model name is needed (--model)")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task_types"] = list(self.task_types)
        d["languages"] = list(self.languages)
        return d

    @property
    def brainstorm_rounds(self) -> int:
        """Brainstorm requests allowed per group: enough for tasks_per_type at half the asked-for yield, plus two."""
        return -(-self.tasks_per_type // (TASKS_PER_BRAINSTORM // 2)) + 2


@dataclass
class Planned:
    """One request of the plan, with what its answer becomes."""

    request_id: str
    stage: str  # "brainstorm" | "generate"
    task_type: str
    request: ChatRequest
    task: str | None = None
    placeholders: dict[str, Any] = field(default_factory=dict)
    prompt_sha256: str = ""


def _request_seed(seed: int, request_id: str) -> int:
    return int(hashlib.sha256(f"{seed}/{request_id}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random(hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).hexdigest())


def _chat_request(config: GenerateConfig, messages: list[dict[str, str]], request_id: str) -> ChatRequest:
    return ChatRequest(config.model, tuple(dict(m) for m in messages), config.temperature, config.top_p,
                       config.max_tokens, _request_seed(config.seed, request_id))


def brainstorm_plan(config: GenerateConfig, task_type: str, round_index: int) -> Planned:
    """The `round_index`-th brainstorm request of an asymmetric group."""
    request_id = f"brainstorm/{task_type}/{round_index}"
    prompt = brainstorm_prompt(task_type, _rng(config.seed, request_id))
    return Planned(request_id, "brainstorm", task_type, _chat_request(config, prompt.messages, request_id),
                   prompt_sha256=prompt.sha256())


def generation_plan(config: GenerateConfig, tasks: dict[str, list[str]]) -> list[Planned]:
    """Every generation request, in plan order: group, task slot, sample. sts and bitext have fixed instructions, so
    their tasks_per_type x examples_per_task requests differ only in their sampled placeholders."""
    plan = []
    for task_type in config.task_types:
        slots: Sequence[str | None] = tasks.get(task_type, []) if task_type in ASYMMETRIC_TASK_TYPES else [None] * config.tasks_per_type
        for j, task in enumerate(slots):
            for k in range(config.examples_per_task):
                request_id = f"generate/{task_type}/{j}/{k}"
                placeholders = sample_placeholders(task_type, _rng(config.seed, request_id), config.languages)
                prompt = generation_prompt(task_type, task, placeholders)
                plan.append(Planned(request_id, "generate", task_type, _chat_request(config, prompt.messages, request_id),
                                    task=prompt.task, placeholders=dict(prompt.placeholders), prompt_sha256=prompt.sha256()))
    return plan


# --- deduplication ---------------------------------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Case, accents' composition, punctuation and spacing removed: texts equal after this are near-duplicates.

    >>> normalize_text("  Hello,   WORLD! ") == normalize_text("hello world")
    True
    """
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class Deduplicator:
    """Exact duplicates (same query, positive and negative) and near-duplicates (same after `normalize_text` of query
    and positive), within a task group."""

    def __init__(self) -> None:
        self.exact: set[str] = set()
        self.near: set[str] = set()

    @staticmethod
    def _keys(task_type: str, query: str, positive: str, negative: str | None) -> tuple[str, str]:
        exact = json.dumps([task_type, query, positive, negative], ensure_ascii=False)
        near = json.dumps([task_type, normalize_text(query), normalize_text(positive)], ensure_ascii=False)
        return exact, near

    def check(self, task_type: str, query: str, positive: str, negative: str | None) -> str | None:
        """None when new (and remembered), else "duplicate" or "near_duplicate"."""
        exact, near = self._keys(task_type, query, positive, negative)
        if exact in self.exact:
            return "duplicate"
        if near in self.near:
            return "near_duplicate"
        self.exact.add(exact)
        self.near.add(near)
        return None


# --- the run directory -----------------------------------------------------------------------------------------------


def _truncate_partial_line(path: Path) -> None:
    """Drop a last line that a killed process left half written (no newline): it was never part of the run."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        content = handle.read()
        handle.truncate(content.rfind(b"\n") + 1)


def _read_records(path: Path) -> list[dict[str, Any]]:
    _truncate_partial_line(path)
    return [obj for _, obj in iter_jsonl(path)] if path.is_file() else []


def _safe_url(url: str | None) -> str | None:
    """A base URL without any user:password part, for config.json and stats.json."""
    if not url:
        return None
    return re.sub(r"//[^/@]*@", "//", url)


def read_config(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _check_out_dir(out: Path, config: GenerateConfig) -> bool:
    """True when `out` already holds a run of this config (resume). A different config, or a folder that
    holds something else, is an error and nothing in it is touched."""
    existing = read_config(out)
    if existing is not None:
        stored = existing.get("plan", {})
        wanted = config.as_dict()
        differs = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if differs:
            details = "; ".join(f"{k}: run has {stored.get(k)!r}, asked for {wanted.get(k)!r}" for k in differs)
            raise SynthembedError(
                f"{out} holds a generation run with a different config ({details}). Resume it with the same settings "
                "(or none: they are read from its config.json), or choose another --out."
            )
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthembedError(f"{out} exists and is not a generation run (no {CONFIG_FILE}); choose an empty or new --out")
    return False


# --- the pipeline ----------------------------------------------------------------------------------------------------


class _Run:
    """State of one session on a run directory."""

    def __init__(self, out: Path, config: GenerateConfig, client: LLMClient, runtime: dict[str, Any], progress: bool):
        self.out = out
        self.config = config
        self.client = client
        self.runtime = runtime
        self.progress = progress
        self.examples_path = out / "examples.jsonl"
        self.rejects_path = out / "rejects.jsonl"
        examples = _read_records(self.examples_path)
        rejects = _read_records(self.rejects_path)
        self.done = {e["meta"].get("request_id", e["id"]) for e in examples} | {r["request_id"] for r in rejects}
        self.dedup = Deduplicator()
        for e in examples:
            self.dedup.check(e["task_type"], e["query"], e["positive"], e.get("negative"))
        self.failed: Counter = Counter()
        self.session = Counter()
        self.pool = None  # a ProcessPoolExecutor for judging replies, set by generate() when workers are asked for
        self._examples_handle = self.examples_path.open("a", encoding="utf-8")
        self._rejects_handle = self.rejects_path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._examples_handle.close()
        self._rejects_handle.close()

    def _append(self, handle, record: dict[str, Any]) -> None:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()  # a killed run keeps every whole line it wrote

    def reject(self, planned: Planned, reason: str, detail: str, response: ChatResponse | None) -> None:
        if planned.request_id in self.done:
            return
        self.done.add(planned.request_id)
        self.session[f"rejected:{reason}"] += 1
        self._append(self._rejects_handle, {
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
        self.done.add(planned.request_id)
        self.session["accepted"] += 1
        meta = ExampleMeta(placeholders=planned.placeholders, model=response.model or self.config.model,
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
        self._append(self._examples_handle, example.model_dump(mode="json"))

    def process(self, planned: Planned, response: ChatResponse, judged: tuple | None = None) -> None:
        """Deduplicate and write one generation response, judged (parsed and validated) here unless `judged` is given."""
        if planned.request_id in self.done:
            return
        if judged is None:
            judged = judge(planned.task_type, response.text, response.finish_reason, response.refusal, planned.placeholders)
        if judged[0] == "reject":
            self.reject(planned, judged[1], judged[2], response)
            return
        _, obj, (query, positive, negative) = judged
        duplicate = self.dedup.check(planned.task_type, query, positive, negative)
        if duplicate:
            self.reject(planned, duplicate, "same text as an earlier accepted example", response)
            return
        self.accept(planned, response, obj, query, positive, negative)

    async def answers(self, plans: list[Planned], desc: str):
        """(plan, response or LLMError) in plan order, holding back answers that arrive early."""
        progress = None
        if self.progress and plans:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(plans), desc=desc, unit="req", dynamic_ncols=True, mininterval=1.0)
        ready: dict[int, ChatResponse | LLMError] = {}
        position = 0
        try:
            async for i, answer in self.client.stream([p.request for p in plans], progress):
                if isinstance(answer, LLMError):
                    self.failed[answer.kind] += 1
                ready[i] = answer
                while position in ready:
                    yield plans[position], ready.pop(position)
                    position += 1
        finally:
            if progress is not None:
                progress.close()
        # The stream ended (all answered, or the budget stopped it): what is left sits after a gap.
        for i in sorted(ready):
            yield plans[i], ready[i]

    async def brainstorm(self) -> dict[str, list[str]]:
        """Task definitions per asymmetric group, in waves of one request per group still short of tasks."""
        groups = [t for t in self.config.task_types if t in ASYMMETRIC_TASK_TYPES]
        tasks: dict[str, list[str]] = {t: [] for t in groups}
        seen: dict[str, set[str]] = {t: set() for t in groups}
        rows: list[dict[str, Any]] = []
        next_round = dict.fromkeys(groups, 0)
        per_reply = TASKS_PER_BRAINSTORM // 2  # plan for half of the ~20 asked for: duplicates and bad replies happen
        for wave_index in range(self.config.brainstorm_rounds):
            # Each wave asks for as many rounds per group as its shortfall needs, so 20k tasks are not 2k waves.
            wave = []
            for t in groups:
                missing = self.config.tasks_per_type - len(tasks[t])
                count = min(-(-missing // per_reply), self.config.brainstorm_rounds - next_round[t]) if missing > 0 else 0
                wave += [brainstorm_plan(self.config, t, next_round[t] + i) for i in range(count)]
                next_round[t] += count
            if not wave or self.client.stopped:
                break
            async for planned, answer in self.answers(wave, f"brainstorm {wave_index + 1}"):
                if isinstance(answer, LLMError):
                    continue
                problem = _response_problem(answer)
                if problem:
                    self.reject(planned, *problem, answer)
                    continue
                try:
                    found = parse_task_list(answer.text)
                except ParseError as err:
                    self.reject(planned, err.reason, err.detail, answer)
                    continue
                for task in found:
                    key = normalize_text(task)
                    if len(tasks[planned.task_type]) >= self.config.tasks_per_type or key in seen[planned.task_type]:
                        continue
                    seen[planned.task_type].add(key)
                    tasks[planned.task_type].append(task)
                    rows.append({"task_type": planned.task_type, "task": task, "request_id": planned.request_id})
        order = {t: i for i, t in enumerate(TASK_TYPES)}
        rows.sort(key=lambda r: order[r["task_type"]])
        tmp = self.out / "tasks.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.out / "tasks.jsonl")
        return tasks

    async def generate(self, tasks: dict[str, list[str]]) -> list[Planned]:
        """Send the pending generation requests; judge each answer as it arrives (in worker processes when there are
        any), then deduplicate and write in plan order, so the accepted set does not depend on arrival order."""
        plan = generation_plan(self.config, tasks)
        pending = [p for p in plan if p.request_id not in self.done]
        cache = self.client.cache
        if cache is not None:  # what earlier sessions paid for the examples already written counts against --max-cost
            for p in plan:
                hit = cache.get(p.request) if p.request_id in self.done else None
                if hit is not None:
                    self.client.spent_before += cost_usd(hit.model or self.config.model, hit.prompt_tokens,
                                                         hit.completion_tokens, self.client.prices)
        if not pending or self.client.stopped:
            return plan
        loop = asyncio.get_running_loop()
        progress = None
        if self.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(pending), desc="generate", unit="req", dynamic_ncols=True, mininterval=1.0)
        slots: dict[int, tuple[ChatResponse | LLMError, asyncio.Future | None]] = {}
        position = 0

        def ready() -> bool:
            return position in slots and (slots[position][1] is None or slots[position][1].done())

        try:
            async for i, answer in self.client.stream([p.request for p in pending], progress):
                future = None
                if isinstance(answer, LLMError):
                    self.failed[answer.kind] += 1
                else:
                    args = (pending[i].task_type, answer.text, answer.finish_reason, answer.refusal, pending[i].placeholders)
                    if self.pool is not None:
                        future = loop.run_in_executor(self.pool, judge, *args)
                    else:
                        future = loop.create_future()
                        future.set_result(judge(*args))
                slots[i] = (answer, future)
                while ready():
                    answer, future = slots.pop(position)
                    if future is not None:
                        self.process(pending[position], answer, future.result())
                    position += 1
        finally:
            if progress is not None:
                progress.close()
        # The stream ended (everything answered, or the budget stopped it): the rest, in plan order.
        for i in sorted(slots):
            answer, future = slots[i]
            if future is not None:
                self.process(pending[i], answer, await future)
        return plan


def judge(task_type: str, text: str | None, finish_reason: str, refusal: str | None,
          placeholders: dict[str, Any]) -> tuple:
    """Parse and validate one reply: ("reject", reason, detail) or ("ok", fields, (query, positive, negative)).

    A pure function of the reply, so it can run in a worker process.
    """
    problem = _response_problem(ChatResponse(text, finish_reason, refusal))
    if problem:
        return ("reject", *problem)
    try:
        obj = parse_json_object(text)
    except ParseError as err:
        return ("reject", err.reason, err.detail)
    verdict = validate_example(task_type, obj, placeholders)
    if not verdict.ok:
        return ("reject", verdict.reason or "invalid", verdict.detail)
    return ("ok", obj, to_example_fields(task_type, obj, placeholders))


def _warm_worker() -> None:
    """Load the language detector once per worker process, before the first reply arrives."""
    from .parsing import detect_language

    detect_language("warm up the detector")


def _is_fenced(response: ChatResponse | None) -> bool:
    return bool(response and response.text and "```" in response.text)


def _response_problem(response: ChatResponse) -> tuple[str, str] | None:
    """A reason to reject before parsing: a refusal, a reply cut off at the token limit, or nothing at all."""
    if response.refusal:
        return "refusal", response.refusal
    if response.finish_reason == "length":
        return "truncated", "the reply hit the token limit (finish_reason length)"
    if response.finish_reason == "content_filter":
        return "content_filter", "the provider's content filter stopped the reply"
    if not (response.text or "").strip():
        return "empty", "the reply is empty"
    return None


# From this many requests in flight, judging replies on the event loop holds back sending: measured with 200 ms
# replies at concurrency 32, one worker process gave 0.90 of the ideal request rate against 0.88 inline
# (docs/benchmarks.md). Below it, the worker's start-up costs more than it saves.
AUTO_WORKERS_CONCURRENCY = 32


def auto_workers(concurrency: int) -> int:
    """Judging processes when none are asked for: one for high-concurrency runs on a machine with a core to spare."""
    return 1 if concurrency >= AUTO_WORKERS_CONCURRENCY and (os.cpu_count() or 1) >= 2 else 0


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
) -> dict[str, Any]:
    """Run (or resume) a generation into `out`; returns its stats (also written to out/stats.json).

    `backend` is "openai", "transformers" (config.model is then a local path or hub id), "replay" (answers only from
    `cache`), or a backend object. `max_cost` in USD stops sending once reached; a later run with a higher budget
    continues where this one stopped. `workers` > 0 parses and validates replies in that many worker processes
    (language detection is the costly part), which keeps the event loop free to send at full concurrency; None
    chooses by `auto_workers`.
    `stand_in=True` marks the run as the loopback stand-in's in stats.json (also detected from its answers' signature).
    """
    config = config or GenerateConfig()
    if workers is None:
        workers = auto_workers(concurrency)
    out = Path(out)
    resumed = _check_out_dir(out, config)
    cache_path = Path(cache) if cache else out / CACHE_FILE
    if backend == "replay" and not cache_path.is_file():
        raise SynthembedError(f"replay needs an existing response cache; {cache_path} does not exist (--cache FILE)")
    backend_name = backend if isinstance(backend, str) else getattr(backend, "name", type(backend).__name__)
    stats_path = out / "stats.json"
    if resumed and stats_path.is_file():
        previous = json.loads(stats_path.read_text())
        if previous.get("complete"):
            if progress:
                print(f"[generate] {out} is already complete ({previous.get('accepted')} examples); nothing to do")
            return previous
    else:
        previous = {}
    price_table = load_prices(prices if isinstance(prices, (str, Path)) else None,
                              prices if isinstance(prices, dict) else None)
    runtime = {"backend": backend_name, "base_url": _safe_url(base_url or (os.environ.get("OPENAI_BASE_URL")
                                                                          if backend_name == "openai" else None)),
               "concurrency": concurrency, "max_cost": max_cost, "cache": str(cache_path), "timeout": timeout,
               "stand_in": stand_in, "workers": workers}
    if isinstance(backend, str):  # before anything is written: a missing key leaves no half-made run behind
        model_arg = config.model if backend == "transformers" else None
        backend = make_backend(backend, model=model_arg, base_url=base_url, concurrency=concurrency,
                               timeout=timeout, batch_size=batch_size, max_new_tokens=config.max_tokens or 1024)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / CONFIG_FILE, {"plan": config.as_dict(), "runtime": runtime})
    response_cache = ResponseCache(cache_path)
    if response_cache.get_meta("config") is None:
        response_cache.set_meta("config", json.dumps(config.as_dict()))
    client = LLMClient(backend, cache=response_cache, prices=price_table, max_cost=max_cost, max_retries=max_retries,
                       backoff=backoff, seed=config.seed)
    run = _Run(out, config, client, runtime, progress)
    if workers > 0:
        import concurrent.futures
        import multiprocessing

        # forkserver: forking a process that runs threads (the loopback server, the event loop) is not safe
        run.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                                          initializer=_warm_worker)
    timing: dict[str, float] = {}

    async def pipeline() -> list[Planned]:
        try:
            started = time.perf_counter()
            tasks = await run.brainstorm()
            timing["brainstorm_s"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            plan = await run.generate(tasks)
            timing["generate_s"] = round(time.perf_counter() - started, 3)
            return plan
        finally:
            closer = getattr(backend, "aclose", None)
            if closer is not None:
                await closer()

    try:
        plan = run_async(pipeline())
    finally:
        run.close()
        if run.pool is not None:
            run.pool.shutdown(cancel_futures=True)
    stats = compute_stats(out, config, plan, response_cache, price_table, runtime, client, previous, timing)
    response_cache.close()
    write_json_atomic(stats_path, stats)
    if progress:
        print(summary_line(stats))
    return stats


def compute_stats(out: Path, config: GenerateConfig, plan: list[Planned], cache: ResponseCache,
                  prices: dict[str, tuple[float, float]], runtime: dict[str, Any], client: LLMClient,
                  previous: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
    """stats.json: counts from the files, tokens and cost from the cache rows of every planned request."""
    examples = _read_records(out / "examples.jsonl")
    rejects = _read_records(out / "rejects.jsonl")
    tasks = _read_records(out / "tasks.jsonl")
    brainstorms = [brainstorm_plan(config, t, r) for t in config.task_types if t in ASYMMETRIC_TASK_TYPES
                   for r in range(config.brainstorm_rounds)]
    prompt_tokens = completion_tokens = 0
    cost = 0.0
    unpriced: set[str] = set()
    answered = 0
    fingerprints: set[str] = set()
    for planned in brainstorms + plan:
        hit = cache.get(planned.request)
        if hit is None:
            continue
        fingerprints.add(hit.system_fingerprint or "")
        if planned.stage == "generate":
            answered += 1
        prompt_tokens += hit.prompt_tokens
        completion_tokens += hit.completion_tokens
        cost += cost_usd(hit.model or config.model, hit.prompt_tokens, hit.completion_tokens, prices)
        if price_of(hit.model or config.model, prices) is None:
            unpriced.add(hit.model or config.model)
    done = {e["meta"].get("request_id") for e in examples} | {r["request_id"] for r in rejects}
    pending = sum(1 for p in plan if p.request_id not in done)
    by_task_type = {t: {"tasks": 0, "requests": 0, "accepted": 0, "rejected": 0} for t in config.task_types}
    for row in tasks:
        by_task_type[row["task_type"]]["tasks"] += 1
    for t in ("sts", "bitext"):
        if t in by_task_type:
            by_task_type[t]["tasks"] = 1  # one fixed instruction
    for p in plan:
        by_task_type[p.task_type]["requests"] += 1
    for e in examples:
        by_task_type[e["task_type"]]["accepted"] += 1
    gen_rejects = [r for r in rejects if r["stage"] == "generate"]
    for r in gen_rejects:
        by_task_type[r["task_type"]]["rejected"] += 1
    by_language = Counter(e["language"] for e in examples)
    bitext_pairs = Counter(f"{e['meta']['placeholders'].get('src_lang')}-{e['meta']['placeholders'].get('tgt_lang')}"
                           for e in examples if e["task_type"] == "bitext")
    http = Counter(previous.get("faults", {}).get("http_retries", {}))
    http.update(client.usage.retries)
    failed = Counter(previous.get("faults", {}).get("failed_requests", {}))
    failed.update(client.usage.failures)
    # The stand-in signs its answers; a model named "loopback" is the stand-in too (whatever served it).
    stand_in = bool(runtime.get("stand_in")) or config.model.startswith("loopback") or "loopback-stand-in" in fingerprints
    stats = {
        "note": STAND_IN_NOTE if stand_in else "",
        "llm": {"backend": runtime["backend"], "model": config.model, "base_url": runtime.get("base_url"),
                "stand_in": stand_in, "workers": runtime.get("workers")},
        "config": config.as_dict(),
        "complete": pending == 0,
        "stopped": client.stopped,
        "max_cost": runtime.get("max_cost"),
        "requests": {"brainstorm": sum(1 for b in brainstorms if cache.get(b.request) is not None),
                     "generate_planned": len(plan), "generate_answered": answered, "pending": pending},
        "accepted": len(examples),
        "rejected": len(gen_rejects),
        "acceptance_rate": round(len(examples) / max(1, len(examples) + len(gen_rejects)), 4),
        "by_task_type": by_task_type,
        "by_language": dict(by_language.most_common()),
        "bitext_pairs": dict(bitext_pairs.most_common()),
        "rejections": dict(Counter(r["reason"] for r in gen_rejects).most_common()),
        "brainstorm_rejections": dict(Counter(r["reason"] for r in rejects if r["stage"] == "brainstorm").most_common()),
        "duplicates": {"exact": sum(1 for r in gen_rejects if r["reason"] == "duplicate"),
                       "near": sum(1 for r in gen_rejects if r["reason"] == "near_duplicate")},
        "faults": {
            "http_retries": dict(sorted(http.items())),
            "failed_requests": dict(sorted(failed.items())),
            "fenced_json": sum(1 for e in examples if e["meta"].get("fenced")) + sum(1 for r in rejects if r.get("fenced")),
            "refusal": sum(1 for r in rejects if r["reason"] == "refusal"),
            "truncated": sum(1 for r in rejects if r["reason"] == "truncated"),
            "invalid_json": sum(1 for r in rejects if r["reason"] == "invalid_json"),
            "wrong_language": sum(1 for r in rejects if r["reason"] == "wrong_language"),
        },
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens, "total": prompt_tokens + completion_tokens},
        "cost_usd": round(cost, 6),
        "cost_is_hypothetical": stand_in,
        "unpriced_models": sorted(unpriced),
        "price_usd_per_1m_tokens": dict(zip(("input", "output"), price_of(config.model, prices) or (None, None), strict=True)),
        "session": {**client.usage.as_dict(), **timing},
        "sessions": int(previous.get("sessions", 0)) + 1,
    }
    return stats


def summary_line(stats: dict[str, Any]) -> str:
    state = "complete" if stats.get("complete") else ("stopped at the cost budget" if stats.get("stopped") else "incomplete")
    line = (f"[generate] {state}: {stats['accepted']} accepted, {stats['rejected']} rejected, "
            f"{stats['tokens']['total']} tokens, ${stats['cost_usd']:.4f}")
    if stats.get("llm", {}).get("stand_in"):
        line += " (loopback stand-in LLM: hypothetical cost)"
    return line


def load_stats(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "stats.json"
    if not path.is_file():
        raise SynthembedError(f"{run_dir} is not a generation run: no stats.json")
    return json.loads(path.read_text())


# --- command line ----------------------------------------------------------------------------------------------------


def configure_generate_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Brainstorm tasks and generate synthetic examples with an LLM (E5-mistral section 3.1). "
                          "Running it again on the same --out resumes; the API key is read from OPENAI_API_KEY only.")
    parser.add_argument("--out", required=True, help="run directory (examples.jsonl, tasks.jsonl, rejects.jsonl, stats.json, ...)")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="openai (default), transformers or replay")
    parser.add_argument("--model", default=None, help="model name (openai), local path or hub id (transformers); default gpt-4o-mini")
    parser.add_argument("--task-types", default=None, help=f"comma list of groups (default all: {','.join(TASK_TYPES)})")
    parser.add_argument("--tasks-per-type", type=int, default=None, help="brainstormed tasks per asymmetric group, and "
                        "instruction slots per symmetric group (default 4)")
    parser.add_argument("--examples-per-task", type=int, default=None, help="examples generated per task (default 2)")
    parser.add_argument("--languages", default=None, help="comma list of languages, or 'paper' for the 93 with the paper's weights")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (default 0)")
    parser.add_argument("--max-tokens", type=int, default=None, help="max tokens per reply (default: the server's)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (openai backend)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call (transformers backend)")
    parser.add_argument("--max-cost", type=float, default=None, help="stop sending requests once this many USD are spent")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default OPENAI_BASE_URL, else OpenAI)")
    parser.add_argument("--cache", default=None, help=f"response cache file (default OUT/{CACHE_FILE}); replay reads it")
    parser.add_argument("--prices", default=None, help="JSON/YAML price table {model: {input: USD/1M, output: USD/1M}}")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a request is abandoned and retried")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that parse and validate replies (0: inline; default: 1 when --concurrency "
                             f"is {AUTO_WORKERS_CONCURRENCY} or more and there are 2+ cores, else 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve_config(args: argparse.Namespace) -> GenerateConfig:
    """Explicit arguments, else the run's own config.json (resume), else the cache's (replay), else defaults."""
    base: dict[str, Any] = {}
    stored = read_config(args.out)
    if stored is not None:
        base = dict(stored.get("plan", {}))
    elif args.backend == "replay" and args.cache:
        if not Path(args.cache).is_file():
            raise SynthembedError(f"--cache {args.cache}: no such file")
        meta = ResponseCache(args.cache).get_meta("config")
        base = json.loads(meta) if meta else {}
    explicit = {"model": args.model, "task_types": args.task_types, "tasks_per_type": args.tasks_per_type,
                "examples_per_task": args.examples_per_task, "languages": args.languages, "seed": args.seed,
                "max_tokens": args.max_tokens}
    base.update({k: v for k, v in explicit.items() if v is not None})
    allowed = set(GenerateConfig.__dataclass_fields__)
    return GenerateConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in base.items() if k in allowed})


def run_generate_command(args: argparse.Namespace) -> int:
    runtime = (read_config(args.out) or {}).get("runtime", {})
    if args.backend is None:  # a resumed run keeps its backend and endpoint unless told otherwise
        args.backend = runtime.get("backend", "openai")
    if args.base_url is None and args.backend == runtime.get("backend") == "openai":
        args.base_url = runtime.get("base_url")
    config = _resolve_config(args)
    if args.backend == "replay" and args.cache is None and not (Path(args.out) / CACHE_FILE).is_file():
        raise SynthembedError("--backend replay needs --cache FILE (the response cache of an earlier run)")
    stats = generate(
        args.out, config, backend=args.backend, base_url=args.base_url, concurrency=args.concurrency,
        max_cost=args.max_cost, cache=args.cache, prices=args.prices, timeout=args.timeout,
        batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
    )
    if stats.get("stopped") == "max_cost":
        print(f"[generate] stopped at --max-cost ${args.max_cost}; run again with a higher --max-cost to continue")
    return 0


def configure_stats_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a generation run directory")
    parser.add_argument("--plots", default=None, help="write task-group, language and rejection plots (PNG) here")
    parser.add_argument("--json", action="store_true", help="print stats.json as it is")


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text summary of stats.json."""
    lines = []
    if stats.get("note"):
        lines += [f"NOTE: {stats['note']}", ""]
    llm = stats.get("llm", {})
    lines.append(f"model {llm.get('model')} via {llm.get('backend')}; "
                 f"{'complete' if stats.get('complete') else 'incomplete'}"
                 + (f" (stopped: {stats['stopped']})" if stats.get("stopped") else ""))
    lines.append(f"accepted {stats['accepted']}, rejected {stats['rejected']} "
                 f"(acceptance {100 * stats.get('acceptance_rate', 0):.1f}%)")
    lines.append("")
    lines.append(f"{'task group':<14}{'tasks':>7}{'accepted':>10}{'rejected':>10}")
    for t, row in stats["by_task_type"].items():
        lines.append(f"{t:<14}{row['tasks']:>7}{row['accepted']:>10}{row['rejected']:>10}")
    lines.append("")
    lines.append("languages: " + ", ".join(f"{k} {v}" for k, v in stats["by_language"].items()))
    lines.append("rejections: " + (", ".join(f"{k} {v}" for k, v in stats["rejections"].items()) or "none"))
    faults = stats.get("faults", {})
    lines.append(f"http retries: {faults.get('http_retries') or 'none'}; failed requests: {faults.get('failed_requests') or 'none'}")
    tok = stats["tokens"]
    lines.append(f"tokens: {tok['prompt']} prompt + {tok['completion']} completion = {tok['total']}; cost ${stats['cost_usd']:.4f}"
                 + (" (hypothetical: stand-in LLM)" if stats.get("cost_is_hypothetical") else ""))
    return "\n".join(lines)


def run_stats_command(args: argparse.Namespace) -> int:
    stats = load_stats(args.run_dir)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    if args.plots:
        from .. import plots

        written = plots.generation_plots(stats, args.plots)
        for path in written:
            print(f"wrote {path}")
    return 0
