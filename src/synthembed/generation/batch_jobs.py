"""The batches of one run at the provider, and the run's record of them: batches.json and the index of which batch file
holds which request (batch_files.py), uploading and submitting a file, polling a batch until it ends, downloading its
results, and the progress bar over all of them. The openai-batch backend (batch.py) decides what to send; this module
sends it, through the official client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import SynthembedError
from . import rundir
from .batch_files import BATCH_ENDPOINT, BatchIndex, BatchLimits, drop_unfinished, iter_input_lines
from .batch_queue import ALONE_TRIES, EnqueuedTokens, file_token_cap, file_tokens, queue_refusal
from .llm import RetryableError, redact

COMPLETION_WINDOW = "24h"
TERMINAL = ("completed", "failed", "expired", "cancelled")
RESULTS_SUFFIX = ".results.jsonl"  # beside a batch input file: what `vllm run-batch -o` wrote for it (batch-files)


class BatchNotRun(Exception):
    """A batch file whose results file is not there yet (the batch-files backend): its requests wait for a rerun."""


class BatchJobs:
    """The batches of the run in `state_dir`, reached through `client` (an openai.AsyncOpenAI); `poll_interval` seconds
    between batches.retrieve calls; `progress` None shows the bar where stderr is a terminal; `token_limit` the
    provider's enqueued-token limit where it is known (batch_queue.py)."""

    def __init__(self, state_dir: Path, client: Any, api_key: str, poll_interval: float, progress: bool | None,
                 token_limit: int | None = None):  # fmt: skip
        import openai

        self.state_dir = Path(state_dir)
        self.folder = self.state_dir / rundir.BATCH_INPUTS_DIR
        self.poll_interval = poll_interval
        self._client = client
        self._api_key = api_key
        self._openai = openai
        self._state: dict[str, Any] | None = None
        self.index: BatchIndex | None = None
        self._progress = progress
        self._bar = None
        self._counts: dict[int, tuple[int, int]] = {}  # batch file number -> (lines answered, lines)
        self.submitted = 0  # batches this session created (the stand-in's tests count them)
        self._uploading = asyncio.Lock()  # one upload at a time: memory is one file's, whatever max_in_flight is
        self.queue = EnqueuedTokens(token_limit, retry_interval=poll_interval)
        self._rewritten = False  # rewrite_over_cap ran this session
        self._created: set[int] = set()  # files whose batches.create reply this session has: no batch is lost

    # --- state: OUT/batches.json, the batch files and their index -------------------------------------------------

    def load(self) -> dict[str, Any]:
        """batches.json, read once; the index opened (built from the input files where a run has none)."""
        if self._state is None:
            self._state = rundir.read_batches(self.state_dir)
            drop_unfinished(self.folder)
            self.queue.named = self.queue.named or self._state.get("enqueued_token_limit")
            self.index = BatchIndex(self.folder, [e for e in self._state["batches"] if not e.get("imported")],
                                     self.state_dir)  # fmt: skip
        return self._state

    def save(self) -> None:
        rundir.write_batches(self.state_dir, self.load())

    def file_limits(self, limits: BatchLimits) -> BatchLimits:
        """`limits` with the input tokens a file may hold under the known enqueued-token limit."""
        cap = file_token_cap(self.queue.limit)
        if cap is None or (limits.max_tokens is not None and limits.max_tokens <= cap):
            return limits
        return dataclasses.replace(limits, max_tokens=cap)

    async def rewrite_over_cap(self) -> None:
        """Files not yet submitted that hold more input tokens than a file may under the known limit are given up
        (marked imported, so that their requests are written anew, into smaller files: one alone over the limit is
        refused for ever, and smaller ones run side by side). An uploaded one is first looked for among the account's
        batches (a create reply lost to a kill): one that was submitted is kept, never given up and sent twice."""
        cap = file_token_cap(self.queue.limit)
        if cap is None or self._rewritten:
            return
        self._rewritten = True
        for entry in self.load()["batches"]:
            if entry["batch_id"] is not None or entry.get("imported") or file_tokens(entry) <= cap:
                continue
            found = await self._submitted_before(entry) if entry["input_file_id"] is not None else None
            if found is not None:
                entry.update(batch_id=found.id, status=found.status)
            else:
                entry.update(status="rewritten", imported=True)
        self.save()

    def entry(self, n: int) -> dict[str, Any]:
        return self.load()["batches"][n - 1]

    def record(self, tmp: Path, lines: int, size: int, sha256: str, keys: list[str], tokens: int) -> int:
        """A finished input file gets its number and name, its entry in batches.json and its lines in the index."""
        state = self.load()
        n = len(state["batches"]) + 1
        name = f"{rundir.BATCH_INPUTS_DIR}/{n:05d}.jsonl"
        os.replace(tmp, rundir.batch_input_path(self.state_dir, name))
        state["batches"].append(
            {
                "n": n,
                "file": name,
                "requests": lines,
                "bytes": size,
                "input_tokens": tokens,  # estimated (tokens.prompt_tokens), for the enqueued-token limit
                "sha256": sha256,
                "input_file_id": None,
                "batch_id": None,
                "status": "written",
                "output_file_id": None,
                "error_file_id": None,
                "imported": False,
                "written_at": time.time(),
            }
        )
        # batches.json first: a kill before the index is written leaves a file that no request points to (never sent,
        # its requests written again), never an index row pointing past batches.json
        self.save()
        self.index.add(n, keys)
        return n

    # --- the API ----------------------------------------------------------------------------------------------------

    async def send(self, n: int) -> None:
        """Upload and submit batch file `n` as far as it has not been (a resumed session finishes what a kill cut)."""
        entry = self.entry(n)
        if entry["batch_id"] is not None:
            return
        if entry["input_file_id"] is None:
            path = rundir.batch_input_path(self.state_dir, entry["file"])
            async with self._uploading:  # the client holds a file whole (and its multipart copy) while it uploads
                uploaded = await self.call(self._client.files.create(file=(path.name, path.read_bytes()),
                                                                     purpose="batch"))  # fmt: skip
            entry.update(input_file_id=uploaded.id, uploaded_at=time.time())
            self.save()
        elif n not in self._created:  # uploaded by an earlier session: perhaps submitted too, the reply lost to a kill
            found = await self._submitted_before(entry)
            if found is not None:
                entry.update(batch_id=found.id, status=found.status)
                self.save()
                return
        await self.queue.room_for(n, file_tokens(entry))  # within the enqueued-token limit (batch_queue.py)
        try:
            batch = await self.call(
                self._client.with_options(max_retries=0).batches.create(
                    input_file_id=entry["input_file_id"],
                    endpoint=BATCH_ENDPOINT,
                    completion_window=COMPLETION_WINDOW,
                    metadata={"synthembed_file": entry["file"], "synthembed_sha256": entry["sha256"]},
                )
            )
        except BaseException:
            self.queue.ended(n)
            raise
        self._created.add(n)
        self.submitted += 1
        entry.update(batch_id=batch.id, status=batch.status, submitted_at=time.time())
        self.save()

    async def _submitted_before(self, entry: dict[str, Any]) -> Any:
        """The batch made from `entry`'s uploaded file and not refused (a reply lost to a kill), else None: the account's
        batches are listed newest first, page by page, back to the upload (or the newest 100 where its time was not
        recorded): refusals leave a failed batch each, so the one sought may be far down the list."""
        refused = set(entry.get("refused", ()))  # batches of this file the queue limit turned away
        since = entry.get("uploaded_at")
        with self.api_errors():
            seen = 0
            async for batch in self._client.batches.list(limit=100):
                if batch.input_file_id == entry["input_file_id"] and batch.id not in refused:
                    return batch
                seen += 1
                # listed newest first: one created before the upload (a minute's clock skew allowed) ends the search
                if (since is None and seen >= 100) or (since is not None and batch.created_at < since - 60):
                    return None
        return None

    @contextlib.contextmanager
    def api_errors(self):
        """An API failure as a RetryableError (the LLMClient tries again, which resumes from the state) or a
        SynthembedError (a refused key: every call would fail)."""
        openai = self._openai
        try:
            yield
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise SynthembedError(
                redact(f"the batch endpoint refused the request ({err.status_code}): {err.message}", self._api_key)
            ) from None
        except openai.APIStatusError as err:
            raise RetryableError(
                redact(f"batch API error {err.status_code}: {err.message}", self._api_key),
                "rate_limit" if err.status_code == 429 else "server_error",
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise RetryableError(f"batch API unreachable: {err}", "connection") from None

    async def call(self, awaitable):
        with self.api_errors():
            return await awaitable

    async def download(self, file_id: str | None, path: Path) -> Path:
        """A result file streamed to `path` (never held in memory whole); `path` is absent where there is no file."""
        path.unlink(missing_ok=True)
        if file_id:
            partial = path.with_name(path.name + ".part")
            with self.api_errors():
                async with self._client.files.with_streaming_response.content(file_id) as response:
                    await response.stream_to_file(partial)
            os.replace(partial, path)
        return path

    # --- waiting ----------------------------------------------------------------------------------------------------

    def show(self, n: int, done: int, total: int) -> None:
        """The batches' progress bar: lines answered of the lines waited for, and how many batches are in each status."""
        self._counts[n] = (done, total)
        if self._bar is None:
            from tqdm.auto import tqdm

            # progress None: shown where stderr is a terminal (tqdm's disable=None)
            self._bar = tqdm(
                total=0,
                desc="batches",
                unit="req",
                dynamic_ncols=True,
                disable=None if self._progress is None else not self._progress,
            )
        self._bar.total = sum(t for _, t in self._counts.values())
        self._bar.n = sum(d for d, _ in self._counts.values())
        statuses = Counter(self.entry(k)["status"] for k in self._counts)
        self._bar.set_postfix_str(", ".join(f"{s} {c}" for s, c in sorted(statuses.items())), refresh=False)
        self._bar.refresh()

    async def wait(self, n: int) -> Any:
        """Submit batch `n` if it is not yet, then poll it until it ends; the last Batch object. A batch refused for
        the enqueued-token limit is submitted again, from the same file, once there is room (batch_queue.py)."""
        await self.send(n)
        entry = self.entry(n)
        alone = 0  # refusals in a row with nothing else of the run in flight
        while True:
            batch = await self.call(self._client.batches.retrieve(entry["batch_id"]))
            if batch.status not in TERMINAL and n not in self.queue.in_flight:
                self.queue.running(n, file_tokens(entry))  # an earlier session's batch, still out
            counts = batch.request_counts
            changed = (batch.status, batch.output_file_id, batch.error_file_id) != (
                entry["status"],
                entry["output_file_id"],
                entry["error_file_id"],
            )
            if changed:
                self._note(entry, batch)  # ended_at: seen ended, within a poll interval of its end
                self.save()
            if counts is not None:
                # in memory at each poll, on disk with the next save (`synthembed batches` shows them)
                entry["counts"] = {"completed": counts.completed, "failed": counts.failed, "total": counts.total}
                self.show(n, counts.completed + counts.failed, counts.total or entry["requests"])
            if batch.status in TERMINAL:
                message = queue_refusal(batch)
                if message is None:
                    self.queue.ended(n, accepted=True)
                    return batch
                alone = await self._refused(n, batch, message, alone)
                await self.send(n)
                continue
            await asyncio.sleep(self.poll_interval)

    async def _refused(self, n: int, batch: Any, message: str, alone: int) -> int:
        """Batch `n` was refused for the enqueued-token limit: recorded (its file is sent again, the refused batch is
        never taken for it), and where nothing else of the run is in flight, a wait; the refusals in a row alone."""
        entry = self.entry(n)
        tokens = file_tokens(entry)
        delay = self.queue.refused(n, tokens, message, alone)
        entry.setdefault("refused", []).append(batch.id)
        entry.update(batch_id=None, status="queue_full", output_file_id=None, error_file_id=None)
        entry.pop("ended_at", None)
        if self.queue.named:
            self.load()["enqueued_token_limit"] = self.queue.named  # a rerun writes its files under it
        self.save()
        if delay is None:
            return 0
        if self.queue.named is not None and tokens > self.queue.named:  # alone over the limit: never accepted
            raise SynthembedError(
                f"batch file {entry['file']} holds about {tokens:,} input tokens, more than the Batch API's "
                f"enqueued-token limit ({message}): it can never be accepted. Run this command again: the files not "
                f"yet submitted that hold more than {file_token_cap(self.queue.named):,} tokens are written anew, in "
                "smaller files"
            )
        if alone + 1 >= ALONE_TRIES:
            raise SynthembedError(
                f"batch file {entry['file']} (about {tokens:,} input tokens) was refused {alone + 1} times for the "
                f"Batch API's enqueued-token limit with nothing else of this run in flight ({message}): other batches "
                "of your organization fill the queue. Run this command again once they have ended; nothing is lost"
                + ("" if self.queue.limit else ". If this file alone is over your limit, give it with "
                   "--enqueued-token-limit TOKENS: the files not yet submitted are then written anew under it")
            )
        await asyncio.sleep(delay)
        return alone + 1

    # --- looking and cancelling from outside a run: `synthembed batches` ---------------------------------------------

    def _note(self, entry: dict[str, Any], batch: Any) -> None:
        """What the API said of a batch, into its entry: status, output files, line counts."""
        entry.update(status=batch.status, output_file_id=batch.output_file_id, error_file_id=batch.error_file_id)
        counts = batch.request_counts
        if counts is not None:
            entry["counts"] = {"completed": counts.completed, "failed": counts.failed, "total": counts.total}
        if batch.status in TERMINAL:
            entry["ended_at"] = time.time()  # called when it was not seen ended before

    def _batches_only(self) -> list[dict[str, Any]]:
        """batches.json's entries, read without the index or clearing half-written files (`synthembed batches` only
        looks and cancels: neither is its business)."""
        if self._state is None:
            self._state = rundir.read_batches(self.state_dir)
        return self._state["batches"]

    async def _ask(self, entry: dict[str, Any], call: Any) -> str | None:
        """One API call about `entry`'s batch, its answer noted and saved at once; the error, where it failed."""
        try:
            self._note(entry, await self.call(call))
        except RetryableError as err:
            return f"{entry['file']} ({entry['batch_id']}): {err}"
        self.save()
        return None

    async def refresh(self) -> list[str]:
        """Each batch of the run not seen ended, as the API says it is now (into batches.json); a batch uploaded whose
        create reply was lost to a kill is looked for first. The errors, one per batch that could not be asked."""
        errors = []
        for entry in self._batches_only():
            if entry["batch_id"] is None and entry["input_file_id"] is not None and not entry.get("imported"):
                try:
                    found = await self._submitted_before(entry)  # running and billed, though the run never heard of it
                except RetryableError as err:
                    errors.append(f"{entry['file']} (looking for its batch): {err}")
                    continue
                if found is not None:
                    entry.update(batch_id=found.id)
            if entry["batch_id"] is not None and entry["status"] not in TERMINAL:
                errors.append(await self._ask(entry, self._client.batches.retrieve(entry["batch_id"])))
        return [e for e in errors if e]

    async def cancel(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Cancel the run's batches that have not ended at the provider (they stop running and being billed; what they
        answered so far is kept, and a later `generate` imports it and sends the rest again): (the entries cancelled,
        the errors of those that could not be). Each answer is saved as it comes."""
        errors = await self.refresh()
        cancelled = []
        for entry in self._batches_only():
            if entry["batch_id"] is not None and entry["status"] not in (*TERMINAL, "cancelling"):
                error = await self._ask(entry, self._client.batches.cancel(entry["batch_id"]))
                if error is None:
                    cancelled.append(entry)
                else:
                    errors.append(error)
        return cancelled, errors

    async def aclose(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.index is not None:
            self.index.close()
            self.index, self._state = None, None


# --- batch files run on your own GPUs: `--backend batch-files` ---------------------------------------------------------


def results_path(out: str | Path, entry: dict[str, Any]) -> Path:
    """Where `vllm run-batch` is to write the results of batch file `entry`: OUT/batches/NNNNN.results.jsonl."""
    return rundir.batch_input_path(out, entry["file"]).with_suffix(RESULTS_SUFFIX)


class LocalBatchJobs(BatchJobs):
    """The batches of a run whose files are run by the user with vLLM's offline runner, not sent to an API: a file is
    "sent" by being written, has "ended" once its results file (results_path) is there, and is imported from it. The
    results file is the user's: it is copied, never moved or deleted."""

    def __init__(self, state_dir: Path, progress: bool | None):
        super().__init__(state_dir, client=None, api_key="", poll_interval=0.0, progress=progress)

    async def send(self, n: int) -> None:
        return None

    async def wait(self, n: int) -> Any:
        entry = self.entry(n)
        path = results_path(self.state_dir, entry)
        if not path.is_file():
            raise BatchNotRun(n)
        if entry["status"] != "completed":
            entry.update(status="completed", ended_at=time.time())
            self.save()
        return SimpleNamespace(id=f"local-{n:05d}", status="completed", output_file_id=str(path), error_file_id=None,
                               errors=None)  # fmt: skip

    async def download(self, file_id: str | None, path: Path) -> Path:
        path.unlink(missing_ok=True)
        if file_id:
            shutil.copyfile(file_id, path)
        return path


def pending_commands(out: str | Path) -> list[str]:
    """The `vllm run-batch` command of each batch file of the run in `out` whose results are neither imported nor
    written yet (the batch-files backend), with the model its requests name."""
    commands = []
    for entry in rundir.read_batches(out)["batches"]:
        if entry.get("imported") or results_path(out, entry).is_file():
            continue
        path = rundir.batch_input_path(out, entry["file"])
        model = next((line["body"]["model"] for line in iter_input_lines(path)), "MODEL") if path.is_file() else "MODEL"
        commands.append(f"vllm run-batch -i {path} -o {results_path(out, entry)} --model {model}")
    return commands
