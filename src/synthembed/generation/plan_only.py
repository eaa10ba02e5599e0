"""`synthembed generate --plan-only`: the estimate of estimate.py as a report, and the settings it takes.

    synthembed generate --out runs/paper --plan-only --model gpt-4 --tasks-per-type 60000 --languages paper \\
        --examples-per-group short-long=167000,long-short=122000,sts=99000,bitext=89000,long-long=17000,short-short=13000 \\
        --model-shares gpt-4=0.75,gpt-3.5-turbo=0.25 [--measured runs/cpu/generation] [--gpu-tokens-per-s 2500]
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from ..errors import SynthembedError
from . import rundir
from .batch_files import FILE_REQUESTS, BatchLimits
from .batch_queue import file_token_cap
from .cost import load_prices
from .estimate import BATCH_PRICE_FACTOR, SAMPLE_PROMPTS, TOKENS_PER_WORD, GpuThroughput, PlanEstimate, estimate_plan
from .plan import GenerateConfig


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _tokens(value: float) -> str:
    return f"{value / 1e6:,.1f}M" if value >= 1e5 else _n(value)


def _usd(value: float | None) -> str:
    return "n/a (no price)" if value is None else f"${value:,.2f}"


def format_estimate(estimate: PlanEstimate, max_requests_per_file: int, max_bytes_per_file: int,
                    token_limit: int | None = None) -> str:  # fmt: skip
    """The plan as text: a row per group and stage, the models, and the cost per backend (`token_limit`: the Batch
    API's enqueued-token limit, where given)."""
    config, costs, gpu = estimate.config, estimate.costs, estimate.costs["gpu"]
    lines = [
        f"plan: {', '.join(config.task_types)}; {len(config.languages)} language(s); seed {config.seed}; "
        f"model {config.model}" + (f", shares {config.model_shares}" if config.model_shares else ""),
        "",
        f"{'group':<12} {'stage':<10} {'requests':>10} {'prompt/req':>10} {'compl/req':>10} "
        f"{'prompt tok':>11} {'compl tok':>11}  tokens",
    ]
    rows = [("brainstorm", t, s) for t, s in estimate.brainstorm.items()] + [
        ("generate", t, s) for t, s in estimate.generation.items()
    ]
    for kind, t, s in rows:
        lines.append(
            f"{t:<12} {kind:<10} {_n(s.requests):>10} {s.prompt_tokens:>10.0f} {s.completion_tokens:>10.0f} "
            f"{_tokens(s.total_prompt):>11} {_tokens(s.total_completion):>11}  {s.source}"
        )
    requests = sum(s.requests for _, _, s in rows)
    prompt = sum(s.total_prompt for _, _, s in rows)
    completion = sum(s.total_completion for _, _, s in rows)
    generation = sum(s.requests for s in estimate.generation.values())
    lines += [
        f"{'total':<12} {'':<10} {_n(requests):>10} {'':>10} {'':>10} {_tokens(prompt):>11} {_tokens(completion):>11}",
        "",
        f"generation requests: {_n(generation)} (at most that many examples; rejects leave fewer); brainstorm: "
        f"{_n(requests - generation)} in the first wave, at most {_n(estimate.brainstorm_max)}",
        f"tokens: prompts counted by {estimate.token_counter} on {SAMPLE_PROMPTS} rendered prompts per group; "
        f"completions from the length rules at {TOKENS_PER_WORD} tokens/word"
        + (f"; measured in {estimate.measured_from} where marked" if estimate.measured_from else ""),
        "",
        f"{'model':<24} {'requests':>10} {'prompt tok':>11} {'compl tok':>11} {'list price':>14} {'batch price':>14}",
    ]
    for model, row in estimate.by_model.items():
        cost = costs["per_model"][model]
        lines.append(
            f"{model:<24} {_n(row['requests']):>10} {_tokens(row['prompt_tokens']):>11} "
            f"{_tokens(row['completion_tokens']):>11} {_usd(cost['list_usd']):>14} {_usd(cost['batch_usd']):>14}"
        )
    per_request = prompt / max(1, requests)
    file_cap = file_token_cap(token_limit)
    if file_cap is not None and per_request > 0:  # files written under a share of the limit hold fewer requests
        max_requests_per_file = max(1, min(max_requests_per_file, int(file_cap / per_request)))
    files = max(
        math.ceil(requests / max_requests_per_file), math.ceil(requests * estimate.prompt_bytes / max_bytes_per_file)
    )
    if token_limit is None:
        queue = (f"a full file is about {_tokens(max_requests_per_file * per_request)} prompt tokens: an enqueued-token "
                 "limit below that refuses it (--enqueued-token-limit writes files under a quarter of yours)")  # fmt: skip
    else:
        queue = (f"under the enqueued-token limit of {_n(token_limit)}: at most about "
                 f"{_n(token_limit / max(per_request, 1))} "
                 f"requests queued at once, in files of {_n(max_requests_per_file)}")  # fmt: skip
    lines += [
        "",
        "cost per backend:",
        f"  openai        list price          {_usd(costs['list_usd'])}",
        f"  openai-batch  batch price (x{BATCH_PRICE_FACTOR:g})  {_usd(costs['batch_usd'])}   "
        f"in about {files} batch file(s) of <= {max_requests_per_file:,} requests and <= {max_bytes_per_file / 1e6:.0f} MB",
        f"                {queue}",
        f"  self-hosted   {costs['gpu_hours']:,.1f} GPU-hours = {_usd(costs['gpu_usd'])} at "
        f"{gpu['output_tokens_per_s']:,.0f} generated and {gpu['prefill_tokens_per_s']:,.0f} prompt tokens/s per GPU, "
        f"${gpu['usd_per_hour']:g}/GPU-hour (assumed: --gpu-tokens-per-s, --gpu-prefill-tokens-per-s, --gpu-usd-per-hour)",
    ]
    if costs["unpriced_models"]:
        lines.append(f"  no price for {', '.join(costs['unpriced_models'])}: give one with --prices FILE")
    return "\n".join(lines)


def configure_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """`synthembed generate`'s --plan-only and its settings."""
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="print requests, expected tokens and cost per backend (list, batch, self-hosted GPU hours) "
        "of this plan and exit; nothing is sent or written",
    )
    parser.add_argument(
        "--measured",
        default=None,
        metavar="RUN_DIR",
        help="--plan-only: take tokens per request from this run's answered requests (its cache)",
    )
    parser.add_argument(
        "--gpu-tokens-per-s",
        type=float,
        default=GpuThroughput.output_tokens_per_s,
        help="--plan-only: generated tokens/s of one self-hosted GPU serving many requests at once",
    )
    parser.add_argument(
        "--gpu-prefill-tokens-per-s",
        type=float,
        default=GpuThroughput.prefill_tokens_per_s,
        help="--plan-only: prompt tokens/s of one self-hosted GPU",
    )
    parser.add_argument(
        "--gpu-usd-per-hour",
        type=float,
        default=GpuThroughput.usd_per_hour,
        help="--plan-only: what one GPU-hour costs",
    )


def run_plan(args: argparse.Namespace, config: GenerateConfig) -> int:
    """Print the estimate of `config` for `synthembed generate --plan-only`."""
    for name in ("gpu_tokens_per_s", "gpu_prefill_tokens_per_s"):
        if not getattr(args, name) > 0:
            raise SynthembedError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    gpu = GpuThroughput(args.gpu_tokens_per_s, args.gpu_prefill_tokens_per_s, args.gpu_usd_per_hour)
    run_tasks: dict[str, list[str]] = defaultdict(list)
    for row in rundir.read_tasks(args.out) if Path(args.out, rundir.TASKS_FILE).is_file() else []:
        run_tasks[row["task_type"]].append(row["task"])
    prices = load_prices(getattr(args, "prices", None))
    estimate = estimate_plan(config, measured=args.measured, prices=prices, gpu=gpu, run_tasks=run_tasks)
    limits = BatchLimits(max_requests=getattr(args, "batch_file_requests", None) or FILE_REQUESTS)
    print(format_estimate(estimate, limits.max_requests, limits.max_bytes, getattr(args, "enqueued_token_limit", None)))
    return 0
