"""Generation at scale against the stand-in: many servers at once, and OpenAI's Batch API, with a 1 s latency per request.

    .venv/bin/python benchmarks/bench_generate_scale.py                              # 100k requests, both modes
    .venv/bin/python benchmarks/bench_generate_scale.py --requests 5000 --modes servers,batch
    .venv/bin/python benchmarks/bench_generate_scale.py --requests 20000 --file-requests 2000 \
        --modes batch,queue-known,queue-learned                                     # under a queue limit

Each mode runs `synthembed.generation.pipeline.generate` on the same plan (six groups, fresh run directory, fresh
stand-ins in their own processes, so their work is not billed to the client) at the same server capacity:
- servers: --servers stand-ins, each answering after --latency seconds, the run sending --concurrency requests to each
  (one comma-separated --base-url list: generation/endpoints.py); capacity servers x concurrency / latency requests/s;
- batch: one stand-in serving the files and batches endpoints, answering servers x concurrency lines at once, each after
  --latency seconds (testing/batch_api.py), the run polling every --poll seconds (generation/batch.py): the same
  capacity, plus the wait for the last poll;
- queue-known, queue-learned: batch mode against a stand-in whose queue holds --queue-limit input tokens (default: four
  files of --file-requests requests, by the plan's estimated prompt tokens), refusing a batch over it as OpenAI does
  (token_limit_exceeded); the run is told the limit (--enqueued-token-limit: files at a quarter of it), or learns it
  from the refusals (generation/batch_queue.py). Printed besides: the refusals.
Printed per mode: wall time (end to end and the generation stage), the generation stage's rate as a ratio to the servers'
capacity (target >= 0.9: the client is never the bottleneck), CPU per example (this process plus its judging workers),
the stand-ins' CPU per request (their own processes), and resident memory sampled through the run (at a quarter, half, three quarters and the end of the generation stage:
flat is the target) and its peak.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from synthembed.generation import rundir
from synthembed.generation.backends import make_backend
from synthembed.generation.batch import OpenAIBatchBackend
from synthembed.generation.batch_files import BatchLimits
from synthembed.generation.estimate import estimate_plan
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig

LANGUAGES = "English,German,French,Spanish,Russian,Japanese"
TASKS_PER_TYPE = 50
SERVER = """
import sys, time
from synthembed.testing.loopback import LoopbackServer
server = LoopbackServer(port=int(sys.argv[1]), latency=float(sys.argv[2]))
server.batch_api.lines_in_parallel = int(sys.argv[3])
server.batch_api.faults.enqueued_token_limit = int(sys.argv[4])
server.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(latency: float, lines_in_parallel: int, queue_limit: int = 0) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(latency), str(lines_in_parallel),
                             str(queue_limit)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    proc.stdout.readline()  # "ready": listening
    return proc, f"http://127.0.0.1:{port}/v1"


class MemorySampler:
    """This process's resident memory every `interval` seconds, with the time of each sample."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), me.memory_info().rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, moment: float) -> float:
        """MB resident at the sample nearest `moment`."""
        return min(self.samples, key=lambda s: abs(s[0] - moment))[1] / 2**20


def run_mode(mode: str, config: GenerateConfig, args, scratch: Path) -> dict:
    capacity = args.servers * args.concurrency
    batch = mode != "servers"
    queue_limit = args.queue_limit if mode.startswith("queue") else 0
    servers = [_start_server(args.latency, capacity, queue_limit) for _ in range(1 if batch else args.servers)]
    out = scratch / mode
    try:
        if batch:
            backend = OpenAIBatchBackend(out, base_url=servers[0][1], markers=True, poll_interval=args.poll,
                                         progress=False, limits=BatchLimits(max_requests=args.file_requests),
                                         token_limit=queue_limit if mode == "queue-known" else None)  # fmt: skip
        else:
            backend = make_backend("openai", base_url=",".join(url for _, url in servers),
                                   concurrency=args.concurrency, timeout=60.0)  # fmt: skip
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with MemorySampler() as memory:
            stats = generate(out, config, backend=backend, concurrency=capacity, progress=False, stand_in=True)
            finished = time.time()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the judging workers, ended by now (servers live on)
        cpu += (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
        server_cpu = sum(sum(psutil.Process(proc.pid).cpu_times()[:2]) for proc, _ in servers)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait()
    requests = stats["requests"]["generate_planned"]
    # batch mode: how long after the last batch was seen ended the run finished (its import, judging and writing)
    entries = rundir.read_batches(out)["batches"]
    ended = [e["ended_at"] for e in entries if e.get("ended_at")]
    tail = finished - max(ended) if ended else None
    generate_s = stats["session"]["generate_s"]
    start = wall0 + stats["session"]["brainstorm_s"]
    rss = [memory.at(start + f * generate_s) for f in (0.25, 0.5, 0.75, 1.0)]
    return {
        "mode": mode,
        "requests": requests,
        "accepted": stats["accepted"],
        "complete": stats["complete"],
        "wall_s": wall,
        "generate_s": generate_s,
        "rate": requests / generate_s,
        "ratio": requests / generate_s / (capacity / args.latency),
        "cpu_ms_per_example": 1000 * cpu / max(1, stats["accepted"]),
        "server_cpu_ms_per_request": 1000 * server_cpu / max(1, requests),
        "rss_mb": rss,
        "peak_mb": max(s[1] for s in memory.samples) / 2**20,
        "tail_s": tail,
        "refused": sum(len(e.get("refused", [])) for e in entries),
        "files": len(entries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="at least this many generation requests")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the stand-in takes per request")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight per server")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between batch status polls (batch mode)")
    parser.add_argument("--file-requests", type=int, default=BatchLimits().max_requests,
                        help="requests per batch file (batch mode; default synthembed's 10,000, at most the API's "
                             "50,000): the last file is judged after every batch has ended, so this sets the run's tail")
    parser.add_argument("--modes", default="servers,batch", help="servers, batch, queue-known, queue-learned")
    parser.add_argument("--queue-limit", type=int, default=None,
                        help="the queue modes' enqueued-token limit (default: four files' estimated prompt tokens)")
    parser.add_argument("--keep", default=None, help="keep the run directories here")
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    per_task = -(-args.requests // (6 * TASKS_PER_TYPE))
    config = GenerateConfig(model="loopback", tasks_per_type=TASKS_PER_TYPE, examples_per_task=per_task,
                            languages=LANGUAGES, seed=0)  # fmt: skip
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    capacity = args.servers * args.concurrency / args.latency
    if args.queue_limit is None:  # four files' worth of the plan's estimated prompt tokens
        estimate = estimate_plan(config)
        per_request = sum(s.total_prompt for s in estimate.generation.values()) / sum(
            s.requests for s in estimate.generation.values()
        )
        args.queue_limit = int(4 * args.file_requests * per_request)
    rows = []
    try:
        for mode in args.modes.split(","):
            rows.append(run_mode(mode, config, args, scratch))
            r = rows[-1]
            print(f"{mode}: {r['requests']} requests, {r['accepted']} accepted in {r['wall_s']:.1f} s "
                  f"(generation {r['generate_s']:.1f} s)", flush=True)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nstand-in latency {args.latency:g} s, capacity {args.servers} x {args.concurrency} in flight = "
        f"{capacity:.0f} requests/s; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}"
    )
    for r in rows:
        print(
            f"{r['mode']:<8} {r['requests']} requests ({'complete' if r['complete'] else 'INCOMPLETE'}), "
            f"{r['accepted']} accepted: wall {r['wall_s']:.1f} s, generation stage {r['generate_s']:.1f} s = "
            f"{r['rate']:.1f} requests/s = {r['ratio']:.2f} of capacity; CPU {r['cpu_ms_per_example']:.2f} ms per "
            f"example (client) and {r['server_cpu_ms_per_request']:.2f} ms per request (stand-ins); RSS "
            f"{'/'.join(f'{mb:.0f}' for mb in r['rss_mb'])} MB at 25/50/75/100% of generation, peak {r['peak_mb']:.0f} MB"
            + (f"; {r['tail_s']:.1f} s from the last batch's end to the run's" if r["tail_s"] is not None else "")
            + (f"; {r['files']} files, {r['refused']} refused by the queue limit of {args.queue_limit:,} tokens"
               if r["mode"].startswith("queue") else "")  # fmt: skip
        )
    print("target: ratio >= 0.9 (the client is never the bottleneck), RSS flat as the run grows")


if __name__ == "__main__":
    main()
