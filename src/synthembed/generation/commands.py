"""The generation stage's entry points: the `synthembed generate` and `synthembed stats` commands (cli.py's COMMANDS
convention: `configure_<name>_parser` and `run_<name>_command` per command), and `open_endpoint`, the notebooks' choice
of LLM endpoint.

    synthembed generate --out runs/gen --model gpt-4o-mini --tasks-per-type 4 --examples-per-task 3 --max-cost 2
    synthembed generate --out runs/gen                  # resume: settings and endpoint come from its config.json
                                                        # (exit status 3: incomplete, run it again to retry the rest)
    synthembed stats runs/gen --plots runs/gen/plots

    with open_endpoint("llama-cpp", model="Qwen/Qwen2.5-Coder-0.5B-Instruct") as endpoint:     # or "loopback", "openai"
        generate("runs/gen", GenerateConfig(model="Qwen/Qwen2.5-Coder-0.5B-Instruct"), **endpoint.generate_options(16))

open_endpoint lives here, with the commands, because it joins two parts that do not know each other (the layering of
docs/design.md): the loopback stand-in of testing/ and the llama.cpp server of generation/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SynthembedError
from ..taskgroups import TASK_TYPES
from . import rundir
from .backends import BACKENDS
from .batch_jobs import pending_commands
from .cache import ResponseCache
from .feed import AUTO_WORKERS_CONCURRENCY
from .pipeline import generate
from .plan import GenerateConfig
from .plan_only import configure_plan_arguments, run_plan
from .stats import format_stats, load_stats, missing_requests

# The exit status of a `generate` that ended with requests still unanswered (2 is a usage or input error).
INCOMPLETE_EXIT = 3

if TYPE_CHECKING:
    from ..testing.loopback import Faults


def configure_generate_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Brainstorm tasks and generate synthetic examples with an LLM (E5-mistral section 3.1). "
                          "Running it again on the same --out resumes; the API key is read from OPENAI_API_KEY only.")
    parser.add_argument("--out", required=True, help="run directory (examples.jsonl, tasks.jsonl, rejects.jsonl, stats.json, ...)")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="openai (default), transformers, replay, openai-batch (OpenAI's Batch API at half price; batch.py), or "
                        "batch-files (the same files, run by you with `vllm run-batch`: the run stops with the commands "
                        "to run, and imports their results when run again)")
    parser.add_argument("--model", default=None, help="model name (openai), local path or hub id (transformers); default gpt-4o-mini")
    parser.add_argument("--task-types", default=None, help=f"comma list of groups (default all: {','.join(TASK_TYPES)})")
    parser.add_argument("--tasks-per-type", type=int, default=None, help="brainstormed tasks per asymmetric group, and "
                        "instruction slots per symmetric group (default 4)")
    parser.add_argument("--examples-per-task", type=int, default=None, help="examples generated per task (default 2)")
    parser.add_argument("--examples-per-group", default=None, metavar="GROUP=N,...",
                        help="generation requests per group for the groups named, e.g. the paper's short-long=167000,"
                             "long-short=122000,sts=99000,bitext=89000,long-long=17000,short-short=13000 (replaces "
                             "tasks-per-type x examples-per-task there; spread over the tasks-per-type task slots)")
    parser.add_argument("--model-shares", default=None, metavar="MODEL=SHARE,...",
                        help="send each generation request to one of these models in proportion to its share (sum 1), "
                             "e.g. the paper's gpt-4=0.75,gpt-3.5-turbo=0.25; the largest share also brainstorms "
                             "(replaces --model)")
    parser.add_argument("--languages", default=None, help="comma list of languages, or 'paper' for the 93 with the paper's weights")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (default 0)")
    parser.add_argument("--max-tokens", type=int, default=None, help="max tokens per reply (default: the server's)")
    parser.add_argument("--length-tolerance", type=float, default=None,
                        help="keep a text within this factor of the length its prompt asked for (default 2; 0: no "
                             "length check, for small models that write short). To judge a run again at another "
                             "tolerance: a new --out with --backend replay --cache OLD/cache.sqlite (nothing is sent)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (openai backend)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call (transformers backend)")
    parser.add_argument("--max-batches", type=int, default=64, help="batches in flight at once (openai-batch; one "
                        "while --max-cost is set)")
    parser.add_argument("--enqueued-token-limit", type=int, default=None, metavar="TOKENS",
                        help="your organization's Batch API queue limit for the model (input tokens of the batches "
                        "waiting or running, e.g. 2000000): files are written under a quarter of it and sent while it "
                        "leaves room. Without it a batch the limit refuses is sent again once there is room, and the "
                        "limit the API names is kept for the rest of the run")
    parser.add_argument("--batch-file-requests", type=int, default=None, help="requests per batch file (openai-batch, "
                        "batch-files; default 10,000, at most the API's 50,000): a batch is judged when it ends, so "
                        "smaller files end a run sooner after its last batch")
    parser.add_argument("--max-cost", type=float, default=None, help="stop sending requests once this many USD are spent")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default OPENAI_BASE_URL, else OpenAI); "
                        "a comma list spreads requests over several servers, --concurrency on each (endpoints.py)")
    parser.add_argument("--cache", default=None, help=f"response cache file (default OUT/{rundir.CACHE_FILE}); replay reads it")
    parser.add_argument("--prices", default=None, help="JSON/YAML price table {model: {input: USD/1M, output: USD/1M}}")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one attempt at a request may take in all, connection to "
                        "last byte (a server that trickles its answer is cut off too), before it is abandoned and retried")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that parse and validate replies (0: inline; default: 1 when --concurrency "
                             f"is {AUTO_WORKERS_CONCURRENCY} or more and there are 2+ cores, else 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    configure_plan_arguments(parser)  # --plan-only and its settings (plan_only.py)


def _resolve_config(args: argparse.Namespace) -> GenerateConfig:
    """Explicit arguments, else the run's own config.json (resume), else the cache's (replay), else defaults."""
    base: dict[str, Any] = {}
    stored = rundir.read_config(args.out)
    if stored is not None:
        base = dict(stored.get("plan", {}))
    elif args.backend == "replay" and args.cache:
        if not Path(args.cache).is_file():
            raise SynthembedError(f"--cache {args.cache}: no such file")
        meta = ResponseCache(args.cache).get_meta("config")
        base = json.loads(meta) if meta else {}
    explicit = {"model": args.model, "task_types": args.task_types, "tasks_per_type": args.tasks_per_type,
                "examples_per_task": args.examples_per_task, "languages": args.languages, "seed": args.seed,
                "max_tokens": args.max_tokens, "length_tolerance": args.length_tolerance,
                "examples_per_group": args.examples_per_group, "model_shares": args.model_shares}
    base.update({k: v for k, v in explicit.items() if v is not None})
    allowed = set(GenerateConfig.__dataclass_fields__)
    return GenerateConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in base.items() if k in allowed})


def run_generate_command(args: argparse.Namespace) -> int:
    runtime = (rundir.read_config(args.out) or {}).get("runtime", {})
    if args.backend is None:  # a resumed run keeps its backend and endpoint unless told otherwise
        args.backend = runtime.get("backend", "openai")
    if args.base_url is None and args.backend == runtime.get("backend") and args.backend in ("openai", "openai-batch"):
        args.base_url = runtime.get("base_url")
    config = _resolve_config(args)
    if args.plan_only:
        return run_plan(args, config)
    if args.backend == "replay" and args.cache is None and not rundir.cache_path(args.out).is_file():
        raise SynthembedError("--backend replay needs --cache FILE (the response cache of an earlier run)")
    stats = generate(
        args.out, config, backend=args.backend, base_url=args.base_url, concurrency=args.concurrency,
        max_cost=args.max_cost, cache=args.cache, prices=args.prices, timeout=args.timeout,
        batch_size=args.batch_size, workers=args.workers, progress=not args.quiet, max_batches=args.max_batches,
        batch_file_requests=args.batch_file_requests, enqueued_token_limit=args.enqueued_token_limit,
    )
    if stats.get("complete"):
        return 0
    # An incomplete run exits non-zero, so a script never goes on to train on part of the data unawares.
    if stats.get("stopped") == "batch_files":
        commands = pending_commands(args.out)
        print(f"[generate] {len(commands)} batch file(s) wait for vLLM's offline runner; run, then run this command "
              "again to import their results and go on:\n" + "\n".join(f"  {c}" for c in commands), file=sys.stderr)
    elif stats.get("stopped") == "max_cost":
        print(f"[generate] stopped at --max-cost ${args.max_cost}; run again with a higher --max-cost to continue",
              file=sys.stderr)
    else:
        print(f"[generate] {args.out} is incomplete: {missing_requests(stats)}; run the same command again to retry "
              "them (answered requests are not sent again)", file=sys.stderr)
    return INCOMPLETE_EXIT


def configure_stats_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a generation run directory")
    parser.add_argument("--plots", default=None, help="write task-group, language and rejection plots (PNG) here")
    parser.add_argument("--json", action="store_true", help="print stats.json as it is")


def run_stats_command(args: argparse.Namespace) -> int:
    stats = load_stats(args.run_dir)
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    if args.plots:
        from .. import plots

        written = plots.generation_plots(stats, args.plots)
        for path in written:
            print(f"wrote {path}")
    return 0


# --- the notebooks' LLM endpoint ---------------------------------------------------------------------------------------

LLM_CHOICES = ("auto", "loopback", "openai", "llama-cpp")


@dataclass
class Endpoint:
    """Where a notebook's requests go: `base_url` (None: OpenAI's own), whether it is the stand-in, how many requests it
    serves well at once (None: as many as asked) and how long one may take, queueing included. Close it when done (or
    use it in a `with`): that stops a server it started."""

    base_url: str | None
    stand_in: bool
    max_concurrency: int | None = None
    timeout: float = 120.0
    closer: Callable[[], None] | None = None

    def concurrency(self, asked: int) -> int:
        return min(asked, self.max_concurrency) if self.max_concurrency else asked

    def generate_options(self, concurrency: int) -> dict[str, Any]:
        """pipeline.generate's keyword arguments that say where requests go and how hard to push."""
        return {"base_url": self.base_url, "concurrency": self.concurrency(concurrency), "timeout": self.timeout,
                "backoff": 0.1 if self.stand_in else 1.0, "stand_in": self.stand_in}

    def backend(self, concurrency: int = 8):
        """An openai backend for this endpoint (notebook 01 sends its few requests through it)."""
        from .backends import OpenAIBackend

        return OpenAIBackend(base_url=self.base_url, concurrency=self.concurrency(concurrency), timeout=self.timeout)

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_endpoint(llm: str = "auto", faults: Faults | None = None, seed: int = 0, model: str | None = None,
                  n_ctx: int = 4096, n_threads: int | None = None) -> Endpoint:
    """The LLM endpoint for the notebooks:
    - "loopback" starts the stand-in (testing/loopback.py; `faults` are its scripted faults);
    - "openai" uses OPENAI_API_KEY / OPENAI_BASE_URL;
    - "llama-cpp" starts llama-cpp-python's server for `model` (a .gguf path, or a name or hub id whose GGUF get-models
      fetched; llama_server.py) and answers to that name; no API key is needed;
    - "auto" is "openai" when OPENAI_API_KEY or OPENAI_BASE_URL is set, else "loopback".

    >>> endpoint = open_endpoint("loopback"); endpoint.stand_in
    True
    >>> endpoint.close()
    """
    if llm == "auto":
        llm = "openai" if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL") else "loopback"
    if llm == "loopback":
        from ..testing.loopback import LoopbackServer

        server = LoopbackServer(faults=faults, seed=seed).start()
        return Endpoint(server.base_url, True, closer=server.stop)
    if llm == "openai":
        if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
            raise SynthembedError("llm='openai' needs OPENAI_API_KEY or OPENAI_BASE_URL in the environment")
        return Endpoint(os.environ.get("OPENAI_BASE_URL") or None, False)
    if llm == "llama-cpp":
        from .llama_server import SERVER_CONCURRENCY, LlamaServer

        if not model:
            raise SynthembedError("llm='llama-cpp' needs a model: a .gguf path, or a name or hub id get-models fetches")
        server = LlamaServer(model, alias=model, n_ctx=n_ctx, n_threads=n_threads).start()
        # Requests queue behind the one being answered: allow for a whole reply's wait before giving up on one.
        return Endpoint(server.base_url, False, max_concurrency=SERVER_CONCURRENCY, timeout=600.0, closer=server.close)
    raise SynthembedError(f"llm must be one of {', '.join(map(repr, LLM_CHOICES))}, not {llm!r}")
