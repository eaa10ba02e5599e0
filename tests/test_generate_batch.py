"""Generation at scale: the plan and its cost (`--plan-only`, estimate.py) and OpenAI's Batch API (`--backend
openai-batch`, batch.py) against the stand-in's files and batches endpoints (testing/batch_api.py), offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from synthembed.cli import main
from synthembed.errors import SynthembedError
from synthembed.generation import rundir
from synthembed.generation.batch import OpenAIBatchBackend, batch_prices
from synthembed.generation.batch_files import BATCH_ENDPOINT, BatchLimits, batch_line, read_result_line, request_of_line
from synthembed.generation.cache import ResponseCache
from synthembed.generation.cost import PRICES, price_of
from synthembed.generation.estimate import GpuThroughput, backend_costs, estimate_plan, measured_tokens
from synthembed.generation.llm import ChatRequest, ChatResponse, LLMClient, LLMError, RetryableError, run_async
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.reference import PAPER_EXAMPLES_BY_GROUP
from synthembed.testing.batch_api import BatchFaults
from synthembed.testing.loopback import Faults, LoopbackServer
from synthembed.testing.run_batch import run_batch_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(model="loopback", tasks_per_type=2, examples_per_task=3, languages="English,German,French", seed=0)
# Content faults in every reply kind but brainstorms (so both runs brainstorm the same tasks), transport faults on first
# attempts: a plain run retries them, a batch run resubmits their lines.
FAULTS = dict(
    malformed=0.1, fenced=0.1, refusal=0.05, server_error=0.1, rate_limit=0.05, retry_after=0.01, brainstorm=False
)


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _batch_backend(out: Path, server: LoopbackServer, **kwargs) -> OpenAIBatchBackend:
    return OpenAIBatchBackend(out, base_url=server.base_url, markers=True, poll_interval=0.02, progress=False, **kwargs)


def _generate(out: Path, server: LoopbackServer, backend="openai", **kwargs):
    return generate(
        out,
        GenerateConfig(**CONFIG),
        backend=backend,
        base_url=server.base_url,
        concurrency=4,
        backoff=0.01,
        progress=False,
        stand_in=True,
        **kwargs,
    )


# --- the plan and its cost --------------------------------------------------------------------------------------------


def _paper_config() -> GenerateConfig:
    settings = yaml.safe_load((ROOT / "params" / "paper.yaml").read_text())["02_generate"]
    fields = set(GenerateConfig.__dataclass_fields__)
    return GenerateConfig(**{k: v for k, v in settings.items() if k in fields})


def test_plan_of_the_paper_profile_is_its_500k_requests_and_prices_them():
    config = _paper_config()
    estimate = estimate_plan(config, prices=dict(PRICES))
    generation = {t: s.requests for t, s in estimate.generation.items()}
    assert generation == config.planned_requests()
    assert sum(generation.values()) == 1000 * sum(PAPER_EXAMPLES_BY_GROUP.values()) == 507_000
    # the first brainstorm wave: one request per 10 of the 60k/60k/13k/17k tasks wanted (half of the ~20 asked for)
    assert {t: s.requests for t, s in estimate.brainstorm.items()} == {
        "short-long": 6000,
        "long-short": 6000,
        "short-short": 1300,
        "long-long": 1700,
    }
    by_model = estimate.by_model
    assert sum(row["requests"] for row in by_model.values()) == 507_000 + 15_000
    assert by_model["gpt-4"]["requests"] - 15_000 == pytest.approx(0.75 * 507_000, rel=0.01)  # the paper's 3/4
    # cost per backend, by hand from the tokens per model and the list prices
    list_usd = sum(
        (row["prompt_tokens"] * price_of(m, PRICES)[0] + row["completion_tokens"] * price_of(m, PRICES)[1]) / 1e6
        for m, row in by_model.items()
    )
    assert estimate.costs["list_usd"] == pytest.approx(list_usd)
    assert estimate.costs["batch_usd"] == pytest.approx(list_usd / 2)
    tokens = sum(
        s.total_prompt + s.total_completion for s in [*estimate.brainstorm.values(), *estimate.generation.values()]
    )
    assert 100e6 < tokens < 600e6  # the paper's data was about 180M tokens; prompts are sent too


def test_backend_costs_by_hand():
    gpu = GpuThroughput(output_tokens_per_s=1000, prefill_tokens_per_s=10_000, usd_per_hour=3.0)
    costs = backend_costs(
        {
            "gpt-4o-mini": {"requests": 10, "prompt_tokens": 2e6, "completion_tokens": 1e6},
            "mystery": {"requests": 1, "prompt_tokens": 36e6, "completion_tokens": 3.6e6},
        },
        PRICES,
        gpu,
    )
    assert costs["per_model"]["gpt-4o-mini"]["list_usd"] == pytest.approx(2 * 0.15 + 1 * 0.60)
    assert costs["list_usd"] == pytest.approx(0.90) and costs["batch_usd"] == pytest.approx(0.45)
    assert costs["unpriced_models"] == ["mystery"] and costs["per_model"]["mystery"]["list_usd"] is None
    # (1M + 3.6M generated) / 1000 tok/s + (2M + 36M prompt) / 10,000 tok/s = 4600 s + 3800 s = 8400 s
    assert costs["gpu_hours"] == pytest.approx(8400 / 3600) and costs["gpu_usd"] == pytest.approx(7.0)
    assert batch_prices({"m": (1.0, 3.0)}) == {"m": (0.5, 1.5)}


def test_plan_only_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(
        [
            "generate",
            "--out",
            str(out),
            "--plan-only",
            "--model",
            "gpt-4o-mini",
            "--tasks-per-type",
            "3",
            "--examples-per-group",
            "sts=1000,bitext=500",
            "--task-types",
            "sts,bitext",
            "--gpu-tokens-per-s",
            "1000",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "sts" in printed and "1,000" in printed and "500" in printed
    assert "openai-batch" in printed and "GPU-hours" in printed and "1,000 generated" in printed


def test_measured_token_means_add_up_to_the_runs_tokens(tmp_path):
    with LoopbackServer() as server:
        stats = _generate(tmp_path / "run", server)
    means = measured_tokens(tmp_path / "run")
    assert sum(n * p for n, p, _ in means.values()) == pytest.approx(stats["tokens"]["prompt"])
    assert sum(n * c for n, _, c in means.values()) == pytest.approx(stats["tokens"]["completion"])
    estimate = estimate_plan(GenerateConfig(**CONFIG), measured=tmp_path / "run")
    sts = estimate.generation["sts"]
    assert sts.source.startswith("measured") and sts.completion_tokens == pytest.approx(means[("generate", "sts")][2])


# --- the batch file format (OpenAI's, and vLLM's run-batch) -----------------------------------------------------------


def test_batch_lines_and_result_lines_follow_the_documented_format():
    request = ChatRequest(
        "gpt-4o-mini",
        [{"role": "user", "content": "Write one example."}],
        max_tokens=64,
        seed=7,
        marker='{"stage":"generate","task_type":"sts"}',
    )
    line = batch_line(request)
    # https://platform.openai.com/docs/guides/batch and vLLM's BatchRequestInput: exactly these four keys
    assert set(line) == {"custom_id", "method", "url", "body"}
    assert line["method"] == "POST" and line["url"] == BATCH_ENDPOINT == "/v1/chat/completions"
    assert line["custom_id"] == request.key()
    assert line["body"] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Write one example."}],
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "seed": 7,
    }
    assert json.loads(json.dumps(line)) == line  # one JSON object per line
    assert "headers" in batch_line(request, marker=True)  # the stand-in's marker only when asked
    # an output line as OpenAI and `vllm run-batch` write it
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}"}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    }
    ok = read_result_line(
        {
            "id": "batch_req_1",
            "custom_id": line["custom_id"],
            "response": {"status_code": 200, "request_id": "r", "body": body},
            "error": None,
        },
        request,
    )
    assert isinstance(ok, ChatResponse) and (ok.text, ok.prompt_tokens, ok.completion_tokens) == ("{}", 11, 2)
    expired = read_result_line(
        {"id": "x", "custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": "expired"}},
        request,
    )
    server_error = read_result_line(
        {
            "id": "x",
            "custom_id": "c",
            "error": None,
            "response": {"status_code": 500, "body": {"error": {"message": "boom"}}},
        },
        request,
    )
    rejected = read_result_line(
        {
            "id": "x",
            "custom_id": "c",
            "error": None,
            "response": {"status_code": 400, "body": {"error": {"message": "bad", "code": "invalid_request_error"}}},
        },
        request,
    )
    assert isinstance(expired, RetryableError) and isinstance(server_error, RetryableError)
    assert isinstance(rejected, LLMError) and not isinstance(rejected, RetryableError)


# --- runs through the Batch API ---------------------------------------------------------------------------------------


def test_batch_run_equals_the_plain_run_at_half_the_cost(tmp_path):
    with LoopbackServer(faults=Faults(**FAULTS)) as server:
        plain = _generate(tmp_path / "plain", server)
    with LoopbackServer(faults=Faults(**FAULTS)) as server:
        server.batch_api.faults = BatchFaults(failed_line=0.15, expire_batches=1)
        # two follow-ups: a line of the expired batch meets its first-attempt faults in the first one
        batch = _generate(tmp_path / "batch", server, backend=_batch_backend(tmp_path / "batch", server, resubmits=2))
        served = server.served
        api = server.batch_api
    assert batch["complete"] and plain["complete"]
    for name in ("examples.jsonl", "rejects.jsonl", "tasks.jsonl"):
        assert (tmp_path / "batch" / name).read_text() == (tmp_path / "plain" / name).read_text(), name
    assert batch["tokens"] == plain["tokens"]
    assert batch["cost_usd"] == pytest.approx(plain["cost_usd"] / 2, abs=2e-6)
    # each failed or expired line went out once more per failure, in a follow-up batch
    entries = rundir.read_batches(tmp_path / "batch")["batches"]
    failed = served["batch_failed_line"] + served["batch_expired"] + served["server_error"] + served["rate_limit"]
    assert served["batch_failed_line"] > 0 and served["batch_expired"] > 0
    planned = plain["requests"]["brainstorm"] + plain["requests"]["generate_planned"]
    assert sum(e["requests"] for e in entries) == planned + failed
    assert api.created == len(entries) and all(e["status"] in ("completed", "expired") for e in entries)


def test_batch_files_stay_within_the_limits(tmp_path):
    with LoopbackServer() as server:
        limits = BatchLimits(max_requests=5, max_bytes=4000)
        stats = _generate(tmp_path / "run", server, backend=_batch_backend(tmp_path / "run", server, limits=limits))
    assert stats["complete"]
    for entry in rundir.read_batches(tmp_path / "run")["batches"]:
        path = rundir.batch_input_path(tmp_path / "run", entry["file"])
        assert len(path.read_text().splitlines()) <= 5 and path.stat().st_size <= 4000
        assert [json.loads(line)["url"] for line in path.read_text().splitlines()] == [BATCH_ENDPOINT] * entry[
            "requests"
        ]


@pytest.mark.parametrize("lost_reply", [False, True], ids=["recorded", "create-reply-lost"])
def test_a_killed_run_resumes_by_polling_the_same_batch(tmp_path, lost_reply):
    """SIGKILL while the first batch is in progress; the rerun polls it (or, when the kill came between create and
    its record, finds it by its input file) and never creates it again."""
    out = tmp_path / "run"
    with LoopbackServer() as server:
        server.batch_api.faults = BatchFaults(hold_batches=1)
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url}
        env.pop("OPENAI_API_KEY", None)
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synthembed.cli",
                "generate",
                "--out",
                str(out),
                "--backend",
                "openai-batch",
                "--model",
                "loopback",
                "--tasks-per-type",
                "2",
                "--examples-per-task",
                "3",
                "--languages",
                "English,German,French",
                "--quiet",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not any(e.get("batch_id") for e in _entries(out)):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the batch was never submitted"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        first = _entries(out)[0]
        assert server.batch_api.created == 1 and server.batch_api.batches[first["batch_id"]]["status"] == "in_progress"
        if lost_reply:
            state = rundir.read_batches(out)
            state["batches"][0].update(batch_id=None, status="written")
            rundir.write_batches(out, state)
        server.batch_api.release()
        backend = _batch_backend(out, server)
        stats = generate(out, GenerateConfig(**CONFIG), backend=backend, progress=False, stand_in=True)
        entries = _entries(out)
    assert stats["complete"] and stats["accepted"] > 0
    assert entries[0]["batch_id"] == first["batch_id"] and entries[0]["status"] == "completed"
    assert server.batch_api.created == len(entries) and backend.submitted == len(entries) - 1
    assert len({e["batch_id"] for e in entries}) == len(entries)


def _entries(out: Path) -> list[dict]:
    try:
        return rundir.read_batches(out)["batches"]
    except Exception:  # mid-write by the other process: the next look sees it whole
        return []


def test_without_resubmits_a_failed_line_waits_for_the_rerun_which_sends_only_it(tmp_path):
    """resubmits=0: scripted failed lines are not sent again in their session; they count as failures, the run is
    incomplete, and each rerun sends only what is still unanswered (a group whose brainstorm failed starts late)."""
    out = tmp_path / "run"
    with LoopbackServer() as server:
        server.batch_api.faults = BatchFaults(failed_line=0.2)
        sessions = []
        for _ in range(6):
            sessions.append(_generate(out, server, backend=_batch_backend(out, server, resubmits=0)))
            if sessions[-1]["complete"]:
                break
        failed_lines = server.served["batch_failed_line"]
    first, last = sessions[0], sessions[-1]
    assert not first["complete"] and first["faults"]["failed_requests"] and last["complete"]
    planned = last["requests"]["brainstorm"] + last["requests"]["generate_planned"]
    assert sum(e["requests"] for e in _entries(out)) == planned + failed_lines


# --- flat memory: the plan is read a file at a time, answers go to the cache ----------------------------------------


def _numbered_requests(count: int, progress: list[int]):
    for i in range(count):
        progress[0] = i + 1
        yield ChatRequest("loopback", [{"role": "user", "content": f"Write sentence {i}."}], seed=i)


def test_prefetch_reads_the_plan_a_file_at_a_time_and_answers_into_the_cache(tmp_path):
    """Each batch file is submitted as soon as it is full, before the rest of the plan is read (nothing holds the
    plan); the answers land in the cache, and streaming the requests afterwards counts them as this session's."""
    read = [0]
    with LoopbackServer() as server:
        backend = _batch_backend(tmp_path, server, limits=BatchLimits(max_requests=10))
        read_when_sent = []
        send = backend.jobs.send

        async def recording_send(n):
            read_when_sent.append(read[0])
            await send(n)

        backend.jobs.send = recording_send
        client = LLMClient(backend, cache=ResponseCache(tmp_path / "cache.sqlite"))

        async def session():
            await backend.prefetch(client, _numbered_requests(45, read))
            assert read_when_sent == [11, 21, 31, 41, 45]  # file k goes out when request 10k + 1 is read
            assert len(client.cache) == 45 and backend.final == {} and client.usage.requests == 0
            assert [e.get("imported") for e in rundir.read_batches(tmp_path)["batches"]] == [True] * 5
            assert not list((tmp_path / "batches").glob("*.output.jsonl"))  # downloads removed once imported
            answers = [a async for _, a in client.stream(_numbered_requests(45, read))]
            await backend.aclose()
            return answers

        answers = run_async(session())
    assert all(isinstance(a, ChatResponse) and a.text for a in answers)
    assert client.usage.requests == 45 and client.usage.cache_hits == 0  # fresh, though read back from the cache
    assert server.batch_api.created == 5


def test_batch_lines_round_trip_to_their_requests():
    request = ChatRequest("m", [{"role": "user", "content": "hé"}], temperature=0.7, max_tokens=5, seed=2, marker="x")
    line = json.loads(json.dumps(batch_line(request, marker=True), ensure_ascii=False))
    back = request_of_line(line)
    assert back == request and back.key() == line["custom_id"] and back.marker == "x"
    line["body"]["messages"][0]["content"] = "changed"
    with pytest.raises(SynthembedError, match="not the request of that custom_id"):
        request_of_line(line)


def test_a_budget_sends_one_batch_at_a_time_and_a_rerun_finishes_the_same_data(tmp_path):
    """--max-cost in batch mode: batches go out one after another while the answers so far leave budget; the run stops
    incomplete, having sent nothing past the budget but the batch that crossed it, and a rerun with no budget ends with
    the data of a run that never stopped."""
    limits = BatchLimits(max_requests=6)
    with LoopbackServer() as server:
        whole = _generate(tmp_path / "whole", server, backend=_batch_backend(tmp_path / "whole", server, limits=limits))
    prices = {"loopback": (100.0, 100.0)}  # USD per 1M tokens, so that a handful of replies cost cents
    with LoopbackServer() as server:
        out = tmp_path / "budget"
        budget = 0.3 * _cost_at(whole, prices)
        first = _generate(out, server, backend=_batch_backend(out, server, limits=limits), max_cost=budget,
                          prices=prices)  # fmt: skip
        entries = _entries(out)
        one_batch = max(e["requests"] for e in entries) * _cost_at(whole, prices) / _planned(whole)
        rest = _generate(out, server, backend=_batch_backend(out, server, limits=limits), prices=prices)
    assert first["stopped"] == "max_cost" and not first["complete"]
    assert budget <= first["cost_usd"] <= budget + 2 * one_batch  # the batch that crossed it, at most
    assert rest["complete"]
    for name in ("examples.jsonl", "rejects.jsonl", "tasks.jsonl"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text(), name


def _planned(stats: dict) -> int:
    return stats["requests"]["brainstorm"] + stats["requests"]["generate_planned"]


def _cost_at(stats: dict, prices: dict) -> float:
    """The run's tokens at `prices` (half price: the Batch API's)."""
    inp, outp = prices["loopback"]
    return 0.5 * (stats["tokens"]["prompt"] * inp + stats["tokens"]["completion"] * outp) / 1e6


@pytest.mark.parametrize(
    "option", [("--max-batches", "0"), ("--batch-file-requests", "50001"), ("--enqueued-token-limit", "0")]
)
def test_batch_settings_are_checked_before_anything_is_written(tmp_path, capsys, option):
    out = tmp_path / "run"
    code = main(["generate", "--out", str(out), "--backend", "openai-batch", "--base-url", "http://127.0.0.1:9/v1",
                 "--model", "loopback", *option])  # fmt: skip
    assert code == 2 and option[0] in capsys.readouterr().err and not out.exists()


# --- the same files through vLLM's offline runner (`vllm run-batch`), imported back -----------------------------------


def test_batch_files_run_through_vllm_run_batch_and_come_back(tmp_path, capsys):
    """--backend batch-files: each stage's requests are written as batch files and the run stops, printing the
    `vllm run-batch` command for each; with their output files in place, the same command imports them and goes on.
    Two rounds (brainstorm, then generation) end with the data of a run through the API."""
    out = tmp_path / "run"
    args = ["generate", "--out", str(out), "--backend", "batch-files", "--model", "loopback", "--tasks-per-type", "2",
            "--examples-per-task", "3", "--languages", "English,German,French", "--quiet"]  # fmt: skip
    with LoopbackServer() as server:
        plain = _generate(tmp_path / "plain", server)
        commands = []
        for _ in range(4):
            code = main(args)
            if code == 0:
                break
            assert code == 3
            printed = capsys.readouterr().err
            todo = [line.strip() for line in printed.splitlines() if line.strip().startswith("vllm run-batch")]
            assert todo, printed
            for command in todo:
                words = command.split()
                assert words[words.index("--model") + 1] == "loopback"
                # what `vllm run-batch` does, with the stand-in as the model (testing/run_batch.py)
                run_batch_file(words[words.index("-i") + 1], words[words.index("-o") + 1], server.base_url)
            commands += todo
    assert code == 0 and len(commands) == 2  # the brainstorm file, then the generation file
    for name in ("examples.jsonl", "rejects.jsonl", "tasks.jsonl"):
        assert (out / name).read_text() == (tmp_path / "plain" / name).read_text(), name
    stats = json.loads((out / "stats.json").read_text())
    assert stats["complete"] and stats["cost_usd"] == 0 and stats["tokens"] == plain["tokens"]
    assert all(e["imported"] and e["batch_id"] is None for e in _entries(out))  # nothing went to an API
