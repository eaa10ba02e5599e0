"""One small generation plan through two local backends on the same model: llama.cpp's server (the openai backend) and
transformers (batched, no server), Qwen2.5-Coder-0.5B-Instruct on the CPU.

    .venv/bin/python benchmarks/bench_generate_backends.py                          # English+German, 6 groups, 24 requests
    .venv/bin/python benchmarks/bench_generate_backends.py --examples-per-task 1    # 12 requests
    .venv/bin/python benchmarks/bench_generate_backends.py --only llama --keep runs/bench-backends

Both runs use synthembed.generation.pipeline.generate with the same GenerateConfig (fixed seed, max tokens), each into
its own run directory with a fresh response cache, and the figures come from the stats.json each writes
(generation/stats.py). The two see different brainstormed tasks (each model brainstorms its own), so their generation
requests are alike in kind and number, not byte for byte.
- llama: `LlamaServer` (generation/llama_server.py) on the GGUF that get-models fetched, all cores, 2 requests in
  flight (its one llama context answers one at a time; the second waits queued, so the server never idles).
- transformers: `TransformersBackend` on the transformers folder get-models converted from that GGUF, batch size 8,
  bf16 where the CPU has native bf16 (oneDNN says so), else fp32.
The table: requests answered, examples accepted, examples per hour (brainstorm and generation time, not start-up),
completion tokens per second, the valid-JSON rate (replies that parsed as a JSON object / replies), rejections by
reason, and the ratio llama / transformers. Skips (exit 0) where llama-cpp-python or the model is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from synthembed.errors import SynthembedError
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig

MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
# Rejections of replies that never parsed as a JSON object; every other reason was judged on a parsed object.
NOT_PARSED = ("empty", "invalid_json", "not_an_object", "not_a_list", "truncated", "refusal", "content_filter")


def cpu_dtype(asked: str) -> str:
    """bf16 where the CPU computes it natively (oneDNN's check: AVX512-BF16 or AMX), else fp32; `asked` wins unless auto."""
    if asked != "auto":
        return asked
    import torch

    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        torch.ones(4, 4, dtype=torch.bfloat16) @ torch.ones(4, 4, dtype=torch.bfloat16)
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def figures(stats: dict, startup_s: float) -> dict:
    """The table's row for one run, from its stats.json."""
    answered = stats["requests"]["generate_answered"]
    seconds = stats["session"].get("brainstorm_s", 0.0) + stats["session"].get("generate_s", 0.0)
    not_parsed = sum(stats["rejections"].get(reason, 0) for reason in NOT_PARSED)
    return {
        "requests": answered,
        "brainstorm_requests": stats["requests"]["brainstorm"],
        "accepted": stats["accepted"],
        "seconds": round(seconds, 1),
        "startup_s": round(startup_s, 1),
        "examples_per_hour": round(stats["accepted"] / seconds * 3600, 1) if seconds else 0.0,
        "requests_per_hour": round(answered / seconds * 3600, 1) if seconds else 0.0,
        "completion_tokens_per_s": round(stats["tokens"]["completion"] / seconds, 1) if seconds else 0.0,
        "valid_json_rate": round((answered - not_parsed) / answered, 3) if answered else 0.0,
        "rejections": stats["rejections"],
        "failed_requests": stats["faults"]["failed_requests"],
    }


def run_llama(out: Path, config: GenerateConfig, n_threads: int) -> dict:
    from synthembed.generation.llama_server import SERVER_CONCURRENCY, LlamaServer

    started = time.perf_counter()
    with LlamaServer(MODEL, n_ctx=4096, n_threads=n_threads) as server:
        startup = time.perf_counter() - started
        stats = generate(out, config, backend="openai", base_url=server.base_url, concurrency=SERVER_CONCURRENCY,
                         timeout=900.0, progress=False)
    return {**figures(stats, startup), "settings": f"llama.cpp server, {n_threads} threads, {SERVER_CONCURRENCY} in flight"}


def run_transformers(out: Path, config: GenerateConfig, dtype: str, batch_size: int, n_threads: int) -> dict:
    import torch

    from synthembed.generation.backends import TransformersBackend

    torch.set_num_threads(n_threads)
    started = time.perf_counter()
    backend = TransformersBackend(MODEL, batch_size=batch_size, max_new_tokens=config.max_tokens or 1024, device="cpu",
                                  dtype=dtype, seed=config.seed)
    startup = time.perf_counter() - started
    stats = generate(out, config, backend=backend, progress=False)
    return {**figures(stats, startup), "settings": f"transformers {dtype}, batch {batch_size}, {n_threads} threads"}


def missing() -> str | None:
    """Why the benchmark cannot run here, or None."""
    from synthembed.generation.llama_server import check_server_packages, resolve_gguf
    from synthembed.paths import local_model

    try:
        check_server_packages()
        resolve_gguf(MODEL)
        local_model(MODEL)
    except SynthembedError as err:
        return str(err)
    return None


def print_table(rows: dict[str, dict]) -> None:
    names = list(rows)
    keys = ["requests", "brainstorm_requests", "accepted", "seconds", "startup_s", "examples_per_hour",
            "requests_per_hour", "completion_tokens_per_s", "valid_json_rate"]
    print(f"{'':<26}" + "".join(f"{n:>16}" for n in names) + (f"{'ratio':>10}" if len(names) == 2 else ""))
    for key in keys:
        values = [rows[n][key] for n in names]
        ratio = f"{values[0] / values[1]:>10.2f}" if len(names) == 2 and values[1] else ""
        print(f"{key:<26}" + "".join(f"{v:>16}" for v in values) + ratio)
    for n in names:
        print(f"{n}: {rows[n]['settings']}; rejections {rows[n]['rejections']}; failed {rows[n]['failed_requests']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", default="English,German")
    parser.add_argument("--tasks-per-type", type=int, default=2)
    parser.add_argument("--examples-per-task", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers batch size")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="transformers dtype")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=("llama", "transformers"), default=None)
    parser.add_argument("--keep", default=None, help="write the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"skipped: {reason}")
        return
    config = GenerateConfig(model=MODEL, tasks_per_type=args.tasks_per_type, examples_per_task=args.examples_per_task,
                            languages=args.languages, seed=args.seed, max_tokens=args.max_tokens)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-backends-"))
    for name in ("llama", "transformers"):
        if (root / name).exists():
            raise SynthembedError(f"{root / name} exists; the benchmark needs fresh run directories (and caches)")
    dtype = cpu_dtype(args.dtype)
    print(f"{MODEL}, {args.languages}, all six groups, {args.tasks_per_type} x {args.examples_per_task} per group, "
          f"seed {args.seed}, max tokens {args.max_tokens}; {os.cpu_count()} CPU cores; runs in {root}", flush=True)
    rows: dict[str, dict] = {}
    try:
        if args.only in (None, "llama"):
            rows["llama.cpp"] = run_llama(root / "llama", config, args.threads)
            print("llama.cpp:", json.dumps(rows["llama.cpp"]), flush=True)
        if args.only in (None, "transformers"):
            rows["transformers"] = run_transformers(root / "transformers", config, dtype, args.batch_size, args.threads)
            print("transformers:", json.dumps(rows["transformers"]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()
