"""`synthembed batches`: a Batch API run's batches as its batches.json records them, their status at the provider, and
cancelling them. Stopping `synthembed generate` does not stop its batches: they run (and are billed) at the provider
until they end, so this is how an abandoned run stops costing.

    synthembed batches runs/gen                # each batch file: requests, input tokens, status, lines answered
    synthembed batches runs/gen --refresh      # ask the API for the status of each batch not seen ended
    synthembed batches runs/gen --cancel       # cancel the batches not ended; `synthembed generate` resumes later

A cancelled batch keeps what it answered before it stopped: the next `synthembed generate --out runs/gen` imports that
and sends the rest again (batch_cancelled is a passing failure, batch.py).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from ..files import folder_lock
from . import rundir
from .batch_jobs import BatchJobs
from .batch_queue import file_tokens
from .llm import openai_credentials, run_async


def format_batches(state: dict[str, Any]) -> str:
    """batches.json as a table: a row per batch file, then the totals by status."""
    entries = state.get("batches", [])
    lines = [f"{'file':<22} {'requests':>8} {'tokens':>10} {'status':<12} {'answered':>17} {'imported':>8} "
             f"{'refused':>7}  batch"]  # fmt: skip
    for e in entries:
        counts = e.get("counts") or {}
        answered = f"{counts['completed']:,} + {counts['failed']:,} failed" if counts else ""
        imported = "rewritten" if e["status"] == "rewritten" else "yes" if e.get("imported") else ""
        lines.append(f"{e['file']:<22} {e['requests']:>8,} {file_tokens(e):>10,} {e['status']:<12} {answered:>17} "
                     f"{imported:>8} {len(e.get('refused', [])):>7}  {e.get('batch_id') or '-'}")  # fmt: skip
    by_status = Counter(e["status"] for e in entries)
    lines.append(f"{len(entries)} batch file(s), {sum(e['requests'] for e in entries):,} requests: "
                 + (", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none"))  # fmt: skip
    if state.get("enqueued_token_limit"):
        lines.append(f"enqueued-token limit named by the API: {state['enqueued_token_limit']:,} tokens")
    return "\n".join(lines)


def configure_batches_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a generation run of --backend openai-batch")
    parser.add_argument("--refresh", action="store_true", help="ask the API for the status of each batch not seen ended")
    parser.add_argument("--cancel", action="store_true",
                        help="cancel the run's batches that have not ended: they stop running and being billed; what "
                             "they answered is kept, and `synthembed generate` on the run sends the rest again")  # fmt: skip
    parser.add_argument("--base-url", default=None, help="the Batch API's endpoint (default: the run's, else "
                        "OPENAI_BASE_URL, else OpenAI)")  # fmt: skip


async def _ask(run_dir: Path, base_url: str | None, cancel: bool) -> tuple[list[dict[str, Any]], list[str]]:
    import openai

    base_url, api_key = openai_credentials(base_url, "openai-batch", "a server with the files and batches endpoints")
    client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=3)
    jobs = BatchJobs(run_dir, client, api_key, poll_interval=0.0, progress=False)
    try:
        return await jobs.cancel() if cancel else ([], await jobs.refresh())
    finally:
        await jobs.aclose()
        await client.close()


def run_batches_command(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / rundir.BATCHES_FILE).is_file():
        raise SynthembedError(f"{run_dir} has no {rundir.BATCHES_FILE}: not a generation run of --backend openai-batch "
                              "or batch-files")  # fmt: skip
    errors: list[str] = []
    at_provider = any(e.get("input_file_id") for e in rundir.read_batches(run_dir)["batches"])
    if (args.refresh or args.cancel) and not at_provider:
        print("no batch of this run was sent to a provider (a batch-files run's files run on your GPUs): nothing to "
              "ask or cancel")  # fmt: skip
    elif args.refresh or args.cancel:
        runtime = (rundir.read_config(run_dir) or {}).get("runtime", {})
        # the lock: a running `synthembed generate` on the run would write batches.json too
        with folder_lock(run_dir, "synthembed batches", option="RUN_DIR"):
            cancelled, errors = run_async(_ask(run_dir, args.base_url or runtime.get("base_url"), args.cancel))
        if args.cancel:
            print(f"cancelled {len(cancelled)} batch(es)" + (": " + ", ".join(e["batch_id"] for e in cancelled)
                                                             if cancelled else ""))  # fmt: skip
    print(format_batches(rundir.read_batches(run_dir)))
    if errors:
        raise SynthembedError(f"{len(errors)} batch(es) could not be asked"
                              + (" or cancelled" if args.cancel else "") + ": " + "; ".join(errors))  # fmt: skip
    return 0
