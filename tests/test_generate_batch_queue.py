"""The Batch API's enqueued-token limit (batch_queue.py): a batch the provider's queue refuses is sent again from the
same file once there is room, a known limit keeps every batch within it, and a file alone over the limit is written anew
on the rerun. Against the stand-in's batches endpoint, which refuses as OpenAI does (testing/batch_api.py)."""

from __future__ import annotations

import asyncio
import doctest
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from synthembed.cli import main
from synthembed.errors import SynthembedError
from synthembed.generation import batch_queue, rundir, tokens
from synthembed.generation.batch import OpenAIBatchBackend
from synthembed.generation.batch_files import BatchFileWriter, BatchLimits
from synthembed.generation.batch_queue import EnqueuedTokens, file_token_cap
from synthembed.generation.cache import ResponseCache
from synthembed.generation.estimate import estimate_plan
from synthembed.generation.llm import ChatRequest, LLMClient, run_async
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.testing.batch_api import BatchFaults
from synthembed.testing.loopback import LoopbackServer

CONFIG = dict(model="loopback", tasks_per_type=2, examples_per_task=3, languages="English,German", seed=0,
              task_types=("sts", "short-long"))  # fmt: skip
FILE_REQUESTS = 2
LATENCY = 0.3  # seconds a line takes: the batches of a stage are in the queue together


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _run(out, server, backend="batch", **kwargs):
    if backend == "batch":
        backend = OpenAIBatchBackend(out, base_url=server.base_url, markers=True, poll_interval=0.02, progress=False,
                                     limits=BatchLimits(max_requests=FILE_REQUESTS), max_in_flight=8, **kwargs)  # fmt: skip
    return generate(out, GenerateConfig(**CONFIG), backend=backend, base_url=server.base_url, concurrency=4,
                    backoff=0.01, progress=False, stand_in=True)  # fmt: skip


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The same plan answered request by request through the chat endpoint: what every batch run must equal."""
    out = tmp_path_factory.mktemp("plain") / "run"
    with LoopbackServer() as server:
        stats = _run(out, server, backend="openai")
    assert stats["complete"]
    return out, stats


def _same_data(out, plain_out) -> None:
    for name in ("examples.jsonl", "tasks.jsonl", "rejects.jsonl"):
        assert (out / name).read_text() == (plain_out / name).read_text(), name


def _largest_file(out) -> int:
    return max(e["input_tokens"] for e in rundir.read_batches(out)["batches"])


def test_a_refused_batch_is_sent_again_from_the_same_file_and_the_run_equals_the_plain_one(tmp_path, plain_run):
    """No limit given; the stand-in's tokenizer counts a third more than the client's estimate, and its queue holds
    about two files. Refused batches are submitted again from their uploaded file (no line resent, no failure), the
    limit the API named is kept in batches.json, and the data is the plain run's."""
    probe = tmp_path / "probe"  # one run without a limit, to size the queue by the files it writes
    with LoopbackServer() as server:
        assert _run(probe, server)["complete"]
    limit = int(2 * _largest_file(probe) * 4 / 3)
    out = tmp_path / "run"
    with LoopbackServer(latency=LATENCY) as server:
        server.batch_api.faults = BatchFaults(enqueued_token_limit=limit, bytes_per_token=3.0)
        stats = _run(out, server)
        api = server.batch_api
        batches = dict(api.batches)
    state = rundir.read_batches(out)
    entries = state["batches"]
    assert stats["complete"] and not stats["faults"]["failed_requests"]
    _same_data(out, plain_run[0])
    assert api.refused > 0 and state["enqueued_token_limit"] == limit
    refused = [batch_id for e in entries for batch_id in e.get("refused", [])]
    assert len(refused) == api.refused and all(batches[b]["status"] == "failed" for b in refused)
    # every file uploaded once, each refusal a second batches.create of the same file, never a second file of its lines
    assert api.uploads == len(entries) + sum(1 for b in batches.values() if b["output_file_id"])
    assert api.created == len(entries) + api.refused
    assert {batches[e["batch_id"]]["input_file_id"] for e in entries} == {e["input_file_id"] for e in entries}
    assert sum(e["requests"] for e in entries) == plain_run[1]["requests"]["brainstorm"] + plain_run[1]["requests"][
        "generate_planned"
    ]
    assert all(e["status"] == "completed" for e in entries)


def test_a_known_limit_keeps_every_batch_within_it(tmp_path, plain_run):
    """--enqueued-token-limit: files hold a quarter of it at most, several go out at once, and none is refused."""
    limit = 1_200  # a quarter of it is less than two requests' prompts
    out = tmp_path / "run"
    with LoopbackServer(latency=LATENCY) as server:
        server.batch_api.faults = BatchFaults(enqueued_token_limit=limit)
        stats = _run(out, server, token_limit=limit)
        api = server.batch_api
    assert stats["complete"] and api.refused == 0
    _same_data(out, plain_run[0])
    entries = rundir.read_batches(out)["batches"]
    assert all(e["input_tokens"] <= file_token_cap(limit) for e in entries)
    assert max(e["requests"] for e in entries) < FILE_REQUESTS  # the token cap, not the request count, cut them
    assert api.peak_enqueued > _largest_file(out)  # more than one batch in the queue at a time


def test_a_file_alone_over_the_limit_stops_the_run_and_the_rerun_writes_it_anew(tmp_path, plain_run, capsys):
    """A file that can never fit (its estimate alone is over the limit the refusal names) stops the run at once, with
    the way on; the rerun, told nothing, gives that file up and writes its requests in files under a quarter of it."""
    out = tmp_path / "run"
    with LoopbackServer(latency=LATENCY) as server:
        server.batch_api.faults = BatchFaults(enqueued_token_limit=400)
        with pytest.raises(SynthembedError, match=r"batches/\d+\.jsonl holds about .* Limit: 400 enqueued tokens.* never be accepted.* written anew"):
            _run(out, server)
        refused_first = server.batch_api.refused
        assert refused_first >= 1
        stats = _run(out, server)
        api = server.batch_api
    assert stats["complete"]
    _same_data(out, plain_run[0])
    entries = rundir.read_batches(out)["batches"]
    given_up = [e for e in entries if e["status"] == "rewritten"]
    assert given_up and all(e["input_tokens"] > file_token_cap(400) for e in given_up)
    # a file holds a quarter of the limit, or one request where that alone is more
    sent = [e for e in entries if e["status"] == "completed"]
    assert all(e["input_tokens"] <= file_token_cap(400) or e["requests"] == 1 for e in sent)
    assert api.refused == refused_first  # the rerun sent within the limit it learned


def test_the_cap_learns_from_refusals():
    queue = EnqueuedTokens()
    queue.running(1, 100)
    queue.running(2, 100)
    assert queue.fits(10**9)  # no limit known: anything goes
    # refused with two files of 100 in flight: two fit, three did not
    assert queue.refused(3, 100, "token_limit_exceeded", alone_before=0) is None
    assert queue.cap == 299 and not queue.fits(100) and queue.fits(99)
    # a batch that ran gives back a quarter of its tokens: load the run cannot see comes and goes
    queue.ended(1, accepted=True)
    assert queue.cap == 299 + 25 and queue.in_flight == {2: 100}
    queue.running(1, 100)
    # a named limit above what was learned does not raise the cap; one below lowers it
    queue.refused(4, 100, "Limit: 1,000 enqueued tokens.", alone_before=0)
    assert queue.cap == 299 and queue.named == 1000
    queue.refused(5, 100, "Limit: 150 enqueued tokens.", alone_before=0)
    assert queue.cap == 150
    queue.ended(1, accepted=True)  # learned back up to the named limit: the named one alone holds
    assert queue.learned is None and queue.cap == 150
    # alone: wait, doubling, at most MAX_WAIT
    lone = EnqueuedTokens(retry_interval=30.0)
    assert [lone.refused(1, 10, "x", k) for k in (0, 1, 2, 10)] == [30.0, 60.0, 120.0, batch_queue.MAX_WAIT]
    with pytest.raises(SynthembedError, match="--enqueued-token-limit"):
        EnqueuedTokens(0)


def test_file_input_tokens_are_the_sum_of_the_prompts_estimates(tmp_path):
    """A file's input_tokens is what tokens.prompt_tokens says of each of its lines, added up."""
    out = tmp_path / "run"
    with LoopbackServer() as server:
        assert _run(out, server)["complete"]
    for entry in rundir.read_batches(out)["batches"]:
        lines = rundir.batch_input_path(out, entry["file"]).read_text().splitlines()
        assert entry["input_tokens"] == sum(
            tokens.prompt_tokens(json.loads(x)["body"]["messages"], tokens.bytes_counter) for x in lines
        )


@pytest.mark.parametrize("module", [batch_queue, tokens])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


async def _submit_and_lose_the_reply(backend: OpenAIBatchBackend) -> str:
    """One file of one request submitted, its batch id then dropped from batches.json as a kill between
    batches.create and its record would leave it; the id of the batch made."""
    jobs = backend.jobs
    jobs.load()
    writer = BatchFileWriter(jobs.folder, "t", BatchLimits(max_requests=1), jobs.record)
    writer.add(ChatRequest("loopback", [{"role": "user", "content": "Write one sentence."}], seed=1))
    writer.close()
    await jobs.send(1)
    made = jobs.entry(1)["batch_id"]
    jobs.entry(1).update(batch_id=None, status="written")
    jobs.save()
    return made


def test_a_lost_create_reply_is_found_past_the_first_page_of_batches(tmp_path):
    """A kill between batches.create and its record: the next session looks for the batch by its input file, newest
    first, page by page back to the upload, so 150 later batches of the account (refusals leave one each) do not hide
    it."""

    def backend() -> OpenAIBatchBackend:
        return OpenAIBatchBackend(tmp_path, base_url=server.base_url, markers=True, poll_interval=0.02, progress=False)

    with LoopbackServer() as server:

        async def killed_session() -> str:
            first = backend()
            made = await _submit_and_lose_the_reply(first)
            path = rundir.batch_input_path(tmp_path, first.jobs.entry(1)["file"])
            other = await first._client.files.create(file=("other.jsonl", path.read_bytes()), purpose="batch")
            for _ in range(150):
                await first._client.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions",
                                                   completion_window="24h")  # fmt: skip
            await first.aclose()
            return made

        async def next_session() -> str:
            second = backend()
            await second.jobs.send(1)
            found = second.jobs.entry(1)["batch_id"]
            await second.aclose()
            return found

        made = run_async(killed_session())
        found = run_async(next_session())
        assert found == made and server.batch_api.created == 151


def test_plan_only_sizes_the_batch_files_under_the_queue_limit(tmp_path, capsys):
    """--plan-only with --enqueued-token-limit: files of as many requests as a quarter of the limit holds, by the
    plan's mean prompt tokens; without it, the tokens of a full file (what a limit must hold)."""
    argv = ["generate", "--out", str(tmp_path / "never"), "--plan-only", "--model", "gpt-4o-mini", "--tasks-per-type",
            "3", "--examples-per-group", "sts=1000,bitext=500", "--task-types", "sts,bitext"]  # fmt: skip
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--enqueued-token-limit", "100000"]) == 0
    limited = capsys.readouterr().out
    config = GenerateConfig(model="gpt-4o-mini", tasks_per_type=3, examples_per_group="sts=1000,bitext=500",
                            task_types=("sts", "bitext"))  # fmt: skip
    estimate = estimate_plan(config)
    stages = [*estimate.brainstorm.values(), *estimate.generation.values()]
    per_request = sum(s.total_prompt for s in stages) / sum(s.requests for s in stages)
    per_file = int(re.search(r"in files of ([\d,]+)", limited).group(1).replace(",", ""))
    assert per_file * per_request <= 25_000 < (per_file + 1) * per_request
    files = {name: int(re.search(r"in about ([\d,]+) batch file", text).group(1)) for name, text in
             (("plain", plain), ("limited", limited))}  # fmt: skip
    assert files["plain"] == 1 and files["limited"] == -(-sum(s.requests for s in stages) // per_file)
    assert "a full file is about" in plain and not (tmp_path / "never").exists()


# --- API failures under a limit: nothing stays counted in the queue that the run no longer watches -------------------


def _prefetch(tmp_path, server, requests, **kwargs):
    """Answer `requests` through batches of one request each into a fresh cache, within 20 s; (backend, cache)."""
    backend = OpenAIBatchBackend(tmp_path, base_url=server.base_url, markers=True, poll_interval=0.02, progress=False,
                                 limits=BatchLimits(max_requests=1), **kwargs)  # fmt: skip
    backend.api_backoff = 0.01
    backend._client = backend.jobs._client = backend._client.with_options(max_retries=0)
    client = LLMClient(backend, cache=ResponseCache(tmp_path / "cache.sqlite"))

    async def session():
        try:
            await asyncio.wait_for(backend.prefetch(client, requests), timeout=20)
        finally:
            await backend.aclose()

    run_async(session())
    return backend, client.cache


def _sentences(count: int) -> list[ChatRequest]:
    return [ChatRequest("loopback", [{"role": "user", "content": f"Write sentence {i} " + "x" * 400}], seed=i)
            for i in range(count)]  # fmt: skip


def test_a_failed_create_under_a_limit_is_sent_again_and_blocks_nothing(tmp_path):
    """batches.create fails (500, nothing made) for the first file; with room for one file at a time, the others wait
    for it, it is sent again, and every request is answered with no refusal."""
    requests = _sentences(4)
    one = tokens.prompt_tokens(requests[0].messages, tokens.bytes_counter)
    with LoopbackServer(latency=0.1) as server:
        server.batch_api.faults = BatchFaults(enqueued_token_limit=int(1.5 * one), fail_creates=1)
        backend, cache = _prefetch(tmp_path, server, requests, token_limit=int(1.5 * one))
        api = server.batch_api
    assert all(cache.has(r.key()) for r in requests) and not backend.final
    assert api.refused == 0 and api.created == 4 and backend.jobs.queue.in_flight == {}


def test_a_batch_given_up_after_api_failures_frees_its_room(tmp_path, monkeypatch):
    """The first batch's status cannot be read (retrieve fails past the retries): its lines fail in this session and
    its room goes to the next file, which would otherwise wait for good."""
    monkeypatch.setattr("synthembed.generation.batch.API_RETRIES", 1)
    requests = _sentences(2)
    one = tokens.prompt_tokens(requests[0].messages, tokens.bytes_counter)
    with LoopbackServer(latency=0.1) as server:
        server.batch_api.faults = BatchFaults(fail_retrieves=2)  # both tries at the first batch
        backend, cache = _prefetch(tmp_path, server, requests, token_limit=int(1.5 * one))
    assert set(backend.final) == {requests[0].key()} and cache.has(requests[1].key())
    assert backend.jobs.queue.in_flight == {}


def test_over_the_cap_a_submitted_file_is_kept_and_an_unsent_one_written_anew(tmp_path):
    """A rerun under a limit gives up the files over a quarter of it that were never submitted; one whose create reply
    was lost to the kill is found among the account's batches and kept (giving it up would pay its requests twice)."""
    requests = _sentences(6)
    one = tokens.prompt_tokens(requests[0].messages, tokens.bytes_counter)

    def backend(**kwargs) -> OpenAIBatchBackend:
        return OpenAIBatchBackend(tmp_path, base_url=server.base_url, markers=True, poll_interval=0.02,
                                  progress=False, **kwargs)  # fmt: skip

    with LoopbackServer() as server:
        server.batch_api.faults = BatchFaults(hold_batches=1)

        async def killed_session() -> str:
            first = backend()
            jobs = first.jobs
            jobs.load()
            writer = BatchFileWriter(jobs.folder, "t", BatchLimits(max_requests=3), jobs.record)
            for request in requests:
                writer.add(request)
            writer.close()  # files 1 and 2, three requests each
            await jobs.send(1)
            made = jobs.entry(1)["batch_id"]
            jobs.entry(1).update(batch_id=None, status="written")  # the reply lost to the kill; file 2 never sent
            jobs.save()
            await first.aclose()
            return made

        async def rerun() -> list[dict]:
            second = backend(token_limit=4 * one)  # a file may hold one request's tokens
            second.jobs.load()
            await second.jobs.rewrite_over_cap()
            entries = [dict(e) for e in second.jobs.load()["batches"]]
            await second.aclose()
            return entries

        made = run_async(killed_session())
        entries = run_async(rerun())
        server.batch_api.release()
    assert entries[0]["batch_id"] == made and not entries[0]["imported"]
    assert entries[1]["status"] == "rewritten" and entries[1]["imported"] and entries[1]["batch_id"] is None


def test_a_queue_full_of_other_batches_stops_the_run_after_a_few_tries_and_the_rerun_goes_on(tmp_path, plain_run):
    """Another batch of the organization holds the queue: the run's first file is refused with nothing of the run in
    flight, tried ALONE_TRIES times with waits that double, then the run stops saying so; once the other batch has
    ended, the rerun finishes with the plain run's data."""
    import openai

    out = tmp_path / "run"
    with LoopbackServer(latency=LATENCY) as server:
        server.batch_api.faults = BatchFaults(enqueued_token_limit=1_000, hold_batches=1)
        other = openai.OpenAI(base_url=server.base_url, api_key="sk-other", max_retries=0)
        lines = [{"custom_id": f"other-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "loopback", "messages": [{"role": "user", "content": "x" * 800}]}} for i in range(4)]
        upload = other.files.create(file=("other.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()),
                                    purpose="batch")  # fmt: skip
        held = other.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(SynthembedError, match=f"refused {batch_queue.ALONE_TRIES} times .* other batches of your"):
            _run(out, server)
        assert server.batch_api.refused == batch_queue.ALONE_TRIES
        server.batch_api.release()
        deadline = time.monotonic() + 30
        while other.batches.retrieve(held.id).status != "completed":
            assert time.monotonic() < deadline, "the other batch never ended"
            time.sleep(0.05)
        stats = _run(out, server)
    assert stats["complete"]
    _same_data(out, plain_run[0])


# --- `synthembed batches`: looking at a run's batches and cancelling them ---------------------------------------------


def _submitted(out) -> bool:
    try:
        return any(e.get("batch_id") for e in rundir.read_batches(out)["batches"])
    except Exception:  # mid-write by the other process: the next look sees it whole
        return False


def test_batches_command_cancels_a_killed_runs_batch_and_generate_finishes_the_run(tmp_path, plain_run, capsys):
    """A run killed with its batch at the provider: `synthembed batches --cancel` stops it there (killing the process
    does not), the listing shows it, and the next `synthembed generate` imports what it answered and sends the rest."""
    out = tmp_path / "run"
    with LoopbackServer() as server:
        server.batch_api.faults = BatchFaults(hold_batches=1)
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url}
        child = subprocess.Popen([sys.executable, "-m", "synthembed.cli", "generate", "--out", str(out), "--backend",
                                  "openai-batch", "--model", "loopback", "--tasks-per-type", "2", "--examples-per-task",
                                  "3", "--languages", "English,German", "--task-types", "sts,short-long", "--quiet"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 60
        while not _submitted(out):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the batch was never submitted"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        held = rundir.read_batches(out)["batches"][0]["batch_id"]
        assert main(["batches", str(out), "--cancel"]) == 0
        printed = capsys.readouterr().out
        assert f"cancelled 1 batch(es): {held}" in printed and "cancelling" in printed
        server.batch_api.release()  # the stand-in notices the cancel once its held batch may run
        stats = _run(out, server)
        assert server.batch_api.batches[held]["status"] == "cancelled"
    assert stats["complete"]
    _same_data(out, plain_run[0])
    assert main(["batches", str(out)]) == 0
    listing = capsys.readouterr().out
    assert "1 cancelled" in listing and re.search(r"\d+ batch file\(s\), [\d,]+ requests", listing)


def test_batches_command_needs_a_batch_run(tmp_path, capsys):
    assert main(["batches", str(tmp_path)]) == 2
    assert "no batches.json" in capsys.readouterr().err


def test_batches_command_reports_an_unreachable_api_and_finds_a_batch_whose_reply_was_lost(tmp_path, capsys):
    """--refresh against a server that is gone: a message per batch, exit 2, batches.json unchanged. A batch whose
    create reply was lost to a kill is found by its input file and cancelled too (it runs and is billed)."""
    with LoopbackServer() as server:
        server.batch_api.faults = BatchFaults(hold_batches=1)
        backend = OpenAIBatchBackend(tmp_path, base_url=server.base_url, markers=True, poll_interval=0.02,
                                     progress=False)  # fmt: skip

        async def killed_session() -> str:
            made = await _submit_and_lose_the_reply(backend)
            await backend.aclose()
            return made

        made = run_async(killed_session())
        before = (tmp_path / rundir.BATCHES_FILE).read_text()
        assert main(["batches", str(tmp_path), "--refresh", "--base-url", "http://127.0.0.1:9/v1"]) == 2
        assert "could not be asked" in capsys.readouterr().err
        assert (tmp_path / rundir.BATCHES_FILE).read_text() == before
        assert main(["batches", str(tmp_path), "--cancel", "--base-url", server.base_url]) == 0
        assert f"cancelled 1 batch(es): {made}" in capsys.readouterr().out
        assert server.batch_api.batches[made]["status"] == "cancelling" and server.batch_api.created == 1
        server.batch_api.release()
