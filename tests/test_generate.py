"""The generation pipeline: the plan, deduplication, the run directory's rules (resume, refuse, never overwrite), the cost budget,
replay from a cache alone, and the API key that must land in no file."""

from __future__ import annotations

import json
import random

import pytest

from synthembed.data import Example, read_examples
from synthembed.errors import SynthembedError
from synthembed.generation import digests
from synthembed.generation.dedup import Deduplicator, normalize_text
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig, brainstorm_plan, generation_plan, iter_generation_plan
from synthembed.generation.rundir import truncate_partial_line
from synthembed.generation.stats import generation_summary
from synthembed.taskgroups import TASK_TYPES
from synthembed.testing.loopback import LoopbackServer

CONFIG = dict(model="loopback", tasks_per_type=2, examples_per_task=2, languages="English,German,Spanish", seed=0)


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as s:
        yield s


def _run(out, server, **kwargs):
    config = GenerateConfig(**{**CONFIG, **kwargs.pop("config", {})})
    return generate(out, config, base_url=server.base_url, concurrency=4, backoff=0.01, progress=False, **kwargs)


def _lines(path):
    return sorted(path.read_text().splitlines()) if path.is_file() else []


def test_config_is_checked():
    with pytest.raises(SynthembedError, match="unknown task type"):
        GenerateConfig(task_types="short-long,retrieval")
    with pytest.raises(SynthembedError, match="two languages"):
        GenerateConfig(task_types="bitext", languages="English")
    with pytest.raises(SynthembedError, match="at least 1"):
        GenerateConfig(tasks_per_type=0)
    with pytest.raises(SynthembedError, match="unknown language"):
        GenerateConfig(languages="English,Klingon")
    assert len(GenerateConfig(languages="paper").languages) == 93
    assert GenerateConfig(task_types="sts,short-long").task_types == ("short-long", "sts")


def test_plan_is_a_pure_function_of_config_and_tasks():
    config = GenerateConfig(**CONFIG)
    tasks = {"short-long": ["Given a question, retrieve answers.", "Given keywords, retrieve guides."],
             "long-short": ["Classify a review."], "short-short": [], "long-long": ["Given an essay, retrieve essays."]}
    first, second = generation_plan(config, tasks), generation_plan(config, tasks)
    assert [p.request.key() for p in first] == [p.request.key() for p in second]
    assert len({p.request.key() for p in first}) == len(first)  # two samples of one prompt are two requests
    assert len({p.request.seed for p in first}) == len(first)
    assert len(first) == (2 + 1 + 0 + 1 + 2 + 2) * 2  # sts/bitext: tasks_per_type fixed-instruction slots
    other = generation_plan(GenerateConfig(**{**CONFIG, "seed": 1}), tasks)
    assert {p.request.key() for p in other}.isdisjoint(p.request.key() for p in first)
    assert brainstorm_plan(config, "long-long", 0).request == brainstorm_plan(config, "long-long", 0).request
    assert brainstorm_plan(config, "long-long", 0).request != brainstorm_plan(config, "long-long", 1).request
    for p in first:
        assert p.placeholders["language"] in ("English", "German", "Spanish")


def test_deduplication_exact_and_near():
    assert normalize_text("Ｈello,  WORLD!!") == normalize_text("hello world")
    dedup = Deduplicator()
    assert dedup.check("sts", "A cat sat.", "A cat sat down.", "Dogs bark.") is None
    assert dedup.check("sts", "A cat sat.", "A cat sat down.", "Dogs bark.") == "duplicate"
    assert dedup.check("sts", "a CAT sat", "A cat, sat down", "Birds sing.") == "near_duplicate"
    assert dedup.check("bitext", "A cat sat.", "A cat sat down.", "Dogs bark.") is None  # per task group
    assert dedup.check("sts", "A dog sat.", "A cat sat down.", None) is None


def test_digest_set_behaves_as_a_set_across_merges(monkeypatch):
    """DigestSet against a Python set of the same keys, with merges into the sorted array every 7 additions (str and
    bytes keys, repeats, lone surrogates), and its memory at 8 bytes a merged key."""
    monkeypatch.setattr(digests, "MERGE_AT", 7)
    rng = random.Random(0)
    keys = [f"generate/sts/{rng.randrange(300):04d}" for _ in range(500)] + ["\ud800 lone", b"raw bytes", ""]
    compact, reference = digests.DigestSet(), set()
    for key in keys:
        assert compact.add(key) == (key not in reference)
        reference.add(key)
    assert len(compact) == len(reference) and bool(compact)
    assert all(key in compact for key in reference)
    assert not any(f"generate/sts/{n:04d}x" in compact for n in range(300)) and 12 not in compact
    assert compact._sorted.nbytes == 8 * (len(reference) - len(compact._recent)) and len(compact._recent) < 7


def test_half_written_last_line_is_dropped(tmp_path):
    path = tmp_path / "examples.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    truncate_partial_line(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    truncate_partial_line(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'


def test_run_directory_layout_and_example_format(tmp_path, server):
    stats = _run(tmp_path / "run", server)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"examples.jsonl", "tasks.jsonl", "rejects.jsonl", "stats.json",
                                               "cache.sqlite", "config.json"}
    examples = read_examples(run / "examples.jsonl")
    assert len(examples) == stats["accepted"] > 0
    for e in examples:
        assert isinstance(e, Example) and e.meta.prompt_sha256 and e.meta.model == "loopback"
        assert (e.negative is None) == (e.task_type in ("short-short", "long-long"))
        assert e.language == e.meta.placeholders["language"]
    tasks = [json.loads(line) for line in (run / "tasks.jsonl").read_text().splitlines()]
    assert {t["task_type"] for t in tasks} == {"short-long", "long-short", "short-short", "long-long"}
    assert all(stats["by_task_type"][t]["tasks"] == 2 for t in ("short-long", "long-short", "short-short", "long-long"))
    assert stats["note"] and "stand-in" in stats["note"]


def test_rerun_of_a_finished_run_sends_nothing_and_changes_nothing(tmp_path, server):
    run = tmp_path / "run"
    _run(run, server)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix != ".sqlite" and p.is_file()}
    served = server.served["requests"]
    stats = _run(run, server)
    assert server.served["requests"] == served
    assert stats["complete"]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.suffix != ".sqlite" and p.is_file()} == before


def test_a_different_config_or_a_foreign_folder_is_refused(tmp_path, server):
    run = tmp_path / "run"
    _run(run, server)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(SynthembedError, match="examples_per_task: run has 2, asked for 3"):
        _run(run, server, config={"examples_per_task": 3})
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("mine")
    with pytest.raises(SynthembedError, match="not a generation run"):
        _run(foreign, server)
    assert [p.name for p in foreign.iterdir()] == ["thesis.txt"]


def test_max_cost_stops_cleanly_and_a_bigger_budget_finishes_the_same_run(tmp_path, server):
    full = _run(tmp_path / "full", server)
    run = tmp_path / "run"
    stopped = _run(run, server, max_cost=full["cost_usd"] / 3)
    assert stopped["stopped"] == "max_cost" and not stopped["complete"]
    assert 0 < stopped["accepted"] < full["accepted"]
    assert stopped["cost_usd"] >= full["cost_usd"] / 3
    again = _run(run, server, max_cost=full["cost_usd"] / 3)  # the budget covers the whole run, not each session
    assert again["stopped"] == "max_cost" and again["accepted"] <= stopped["accepted"] + 4
    finished = _run(run, server, max_cost=full["cost_usd"] * 10)
    assert finished["complete"] and finished["stopped"] is None
    assert _lines(run / "examples.jsonl") == _lines(tmp_path / "full" / "examples.jsonl")
    assert finished["cost_usd"] == pytest.approx(full["cost_usd"])  # nothing paid twice


def test_replay_rebuilds_a_run_from_its_cache_alone(tmp_path, server):
    _run(tmp_path / "orig", server)
    stats = generate(tmp_path / "replayed", GenerateConfig(**CONFIG), backend="replay",
                     cache=tmp_path / "orig" / "cache.sqlite", progress=False)
    assert stats["complete"] and stats["session"]["requests"] == 0
    assert _lines(tmp_path / "replayed" / "examples.jsonl") == _lines(tmp_path / "orig" / "examples.jsonl")
    with pytest.raises(SynthembedError, match="replay needs an existing response cache"):
        generate(tmp_path / "other", GenerateConfig(**CONFIG), backend="replay", cache=tmp_path / "none.sqlite")


def test_the_api_key_lands_in_no_file(tmp_path, server, monkeypatch):
    secret = "sk-test-h2b-9f8e7d6c5b4a39281706"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    run = tmp_path / "run"
    generate(run, GenerateConfig(**CONFIG), concurrency=4, progress=False, max_cost=100.0)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data and secret[8:].encode() not in data, path


@pytest.mark.slow
def test_transformers_backend_runs_the_pipeline(tmp_path, tiny_mistral):
    # A random-weight model writes no JSON: the point is the mechanics (local batches, cache, stats), not acceptance.
    config = GenerateConfig(model=str(tiny_mistral), task_types="sts,bitext", tasks_per_type=1, examples_per_task=2,
                            languages="English,German", max_tokens=8)
    stats = generate(tmp_path / "run", config, backend="transformers", batch_size=4, progress=False)
    assert stats["requests"]["generate_answered"] == 4 and stats["complete"]
    assert stats["accepted"] + stats["rejected"] == 4
    assert stats["tokens"]["completion"] > 0 and stats["unpriced_models"]


@pytest.mark.slow
def test_judging_in_worker_processes_gives_the_same_run(tmp_path, server):
    inline = _run(tmp_path / "inline", server)
    pooled = _run(tmp_path / "pooled", server, workers=2)
    assert _lines(tmp_path / "pooled" / "examples.jsonl") == _lines(tmp_path / "inline" / "examples.jsonl")
    assert _lines(tmp_path / "pooled" / "rejects.jsonl") == _lines(tmp_path / "inline" / "rejects.jsonl")
    assert pooled["accepted"] == inline["accepted"] > 0


def test_workers_default_follows_the_concurrency(tmp_path, server, monkeypatch):
    from synthembed.generation.feed import AUTO_WORKERS_CONCURRENCY, auto_workers

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert auto_workers(AUTO_WORKERS_CONCURRENCY - 1) == 0 and auto_workers(AUTO_WORKERS_CONCURRENCY) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert auto_workers(64) == 0  # no core to spare: a worker would only compete with the event loop
    _run(tmp_path / "run", server)  # concurrency 4, no workers asked for: judged inline, and the run says so
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]["workers"] == 0


def test_the_stand_in_is_named_whatever_the_model_is_called(tmp_path, server):
    stats = _run(tmp_path / "run", server, config={"model": "gpt-4o-mini"})
    assert stats["llm"]["stand_in"] and stats["cost_is_hypothetical"] and "stand-in" in stats["note"]
    assert stats["price_usd_per_1m_tokens"] == {"input": 0.15, "output": 0.6}


def test_generation_summary_is_what_notebook_02_records(tmp_path, server):
    stats = _run(tmp_path / "run", server)
    summary = generation_summary(tmp_path / "run")
    assert summary == {
        "generation_dir": str(tmp_path / "run"), "accepted": stats["accepted"], "rejected": stats["rejected"],
        "acceptance_rate": stats["acceptance_rate"], "task_types_present": sorted(TASK_TYPES),
        "languages_present": sorted(stats["by_language"]), "rejections": stats["rejections"],
        "total_tokens": stats["tokens"]["total"], "cost_usd": stats["cost_usd"], "complete": True, "stand_in": True,
    }
    with pytest.raises(SynthembedError, match="not a generation run"):
        generation_summary(tmp_path / "nothing")


def test_a_run_fed_through_a_small_window_writes_what_a_run_fed_at_once_writes(server, tmp_path, monkeypatch):
    """The pipeline plans and sends in a bounded window (feed.py): the files are the same as with the whole plan in
    flight, and the requests planned but not yet written never exceed the window (plus its judging backlog)."""
    from synthembed.generation import pipeline

    wide = _run(tmp_path / "wide", server, config={"examples_per_task": 6})
    read, written, most_held = [0], [0], [0]

    def counted_plan(config, tasks):
        for planned in iter_generation_plan(config, tasks):
            read[0] += 1
            most_held[0] = max(most_held[0], read[0] - written[0])
            yield planned

    real_process = pipeline._Run.process

    def counted_process(self, planned, response, judged=None):
        written[0] += 1
        return real_process(self, planned, response, judged)

    monkeypatch.setattr(pipeline, "iter_generation_plan", counted_plan)
    monkeypatch.setattr(pipeline._Run, "process", counted_process)
    monkeypatch.setattr(pipeline, "plan_window", lambda backend: 5)
    narrow = _run(tmp_path / "narrow", server, config={"examples_per_task": 6})
    assert read[0] == written[0] == narrow["requests"]["generate_planned"] == wide["requests"]["generate_planned"] > 40
    assert most_held[0] <= 2 * 5
    for name in ("examples.jsonl", "rejects.jsonl", "tasks.jsonl"):
        assert (tmp_path / "narrow" / name).read_text() == (tmp_path / "wide" / name).read_text(), name
