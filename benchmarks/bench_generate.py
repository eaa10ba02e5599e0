"""Generation throughput against the loopback server with a fixed latency per request, beside a bare openai client.

    .venv/bin/python benchmarks/bench_generate.py                      # 1,000+ examples, concurrency 32, 200 ms
    .venv/bin/python benchmarks/bench_generate.py --examples 300 --repeats 1

The server runs in its own process (so its work is not billed to the pipeline). With latency L and concurrency C, no
client can beat C / L requests per second: that is the ideal. Two clients run side by side in this process:
- peer: a bare `openai.AsyncOpenAI` loop with a semaphore of C, sending the same generation prompts (with their
  markers, so the stand-in writes the same kind of answers) and doing nothing with the replies (no cache, no parsing);
- ours: `synthembed.generation.pipeline.generate` into a fresh directory: brainstorm, generate, cache every response in SQLite,
  parse, validate (pydantic + language detection), deduplicate, write JSONL.
It prints the median examples per second, the ratio to the ideal for the generation stage, and our CPU time per example.
Target: ours at 0.9 of the ideal or better.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig, generation_plan
from synthembed.taskgroups import MARKER_HEADER

LANGUAGES = "English,German,French,Spanish,Russian,Japanese"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(latency: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "synthembed.testing.loopback", "--port", str(port), "--latency", str(latency)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()  # the "loopback stand-in LLM at ..." line: the server is listening
    return proc, f"http://127.0.0.1:{port}/v1"


async def _peer(base_url: str, requests, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=60)
    gate = asyncio.Semaphore(concurrency)

    async def one(r):
        async with gate:
            await client.chat.completions.create(model=r.model, messages=list(r.messages), temperature=r.temperature,
                                                 top_p=r.top_p, seed=r.seed, extra_headers={MARKER_HEADER: r.marker})

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="at least this many generation requests")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each answer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that parse and validate (generate's workers; default: generate's own choice)")
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)

    tasks_per_type = 17
    examples_per_task = -(-args.examples // (6 * tasks_per_type))
    config = GenerateConfig(model="loopback", tasks_per_type=tasks_per_type, examples_per_task=examples_per_task,
                            languages=LANGUAGES, seed=0)
    ideal = args.concurrency / args.latency
    server, base_url = _start_server(args.latency)
    scratch = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    peer_rates, our_rates, our_end_to_end, cpu_per_example, peer_cpu = [], [], [], [], []
    try:
        for repeat in range(args.repeats):
            out = scratch / f"run{repeat}"
            cpu0, wall0 = time.process_time(), time.perf_counter()
            stats = generate(out, config, base_url=base_url, concurrency=args.concurrency, workers=args.workers,
                             progress=False)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            n_requests = stats["requests"]["generate_planned"]
            our_rates.append(n_requests / stats["session"]["generate_s"])
            our_end_to_end.append(stats["accepted"] / wall)
            cpu_per_example.append(cpu / max(1, stats["accepted"]))
            # the peer sends exactly the same generation prompts (the tasks come from this run's brainstorm)
            tasks: dict[str, list[str]] = {}
            for line in (out / "tasks.jsonl").read_text().splitlines():
                row = json.loads(line)
                tasks.setdefault(row["task_type"], []).append(row["task"])
            requests = [p.request for p in generation_plan(config, tasks)]
            # other seeds: fresh answers, not ones the server has seen
            requests = [dataclasses.replace(r, seed=(r.seed or 0) + 7) for r in requests]
            cpu0 = time.process_time()
            peer_rates.append(len(requests) / asyncio.run(_peer(base_url, requests, args.concurrency)))
            peer_cpu.append((time.process_time() - cpu0) / len(requests))
            print(f"repeat {repeat + 1}: ours {our_rates[-1]:.1f} req/s (generation stage), "
                  f"{stats['accepted']} examples in {wall:.1f} s end to end; peer {peer_rates[-1]:.1f} req/s", flush=True)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(scratch, ignore_errors=True)

    ours, peer = statistics.median(our_rates), statistics.median(peer_rates)
    print()
    print(f"loopback latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, {os.cpu_count()} CPU cores, "
          f"workers {args.workers}: ideal {ideal:.1f} req/s")
    print(f"peer (bare openai.AsyncOpenAI, semaphore): {peer:8.1f} req/s   ratio to ideal {peer / ideal:.3f}")
    print(f"ours (synthembed generate, generation):    {ours:8.1f} req/s   ratio to ideal {ours / ideal:.3f}   "
          f"ratio to peer {ours / peer:.3f}")
    print(f"ours end to end (brainstorm included):     {statistics.median(our_end_to_end):8.1f} examples/s")
    print(f"our CPU time per example:                  {1000 * statistics.median(cpu_per_example):8.2f} ms "
          f"(this process; the peer spends {1000 * statistics.median(peer_cpu):.2f} ms per request)")
    print(f"target >= 0.9 of ideal: {'met' if ours / ideal >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
