"""The paper's recipe in the plan: per-group request counts (examples_per_group) and the GPT-4 / GPT-3.5-Turbo split
(model_shares); old runs' stored configs still resume; bad settings are clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections import Counter

import pytest

from synthembed.errors import SynthembedError
from synthembed.generation import rundir
from synthembed.generation.commands import _resolve_config, configure_generate_parser
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig, brainstorm_plan, generation_plan, iter_generation_plan, plan_size
from synthembed.reference import PAPER_EXAMPLES_BY_GROUP
from synthembed.study import load_profile
from synthembed.taskgroups import ASYMMETRIC_TASK_TYPES
from synthembed.testing.loopback import LoopbackServer

CONFIG = dict(model="loopback", tasks_per_type=3, examples_per_task=2, languages="English,German,Spanish", seed=0)
TASKS = {"short-long": ["Given a question, retrieve answers.", "Given keywords, retrieve guides.", "Given a claim, find proof."],
         "long-short": ["Classify a review.", "Name a topic.", "Find the sentiment."],
         "short-short": ["Given a title, retrieve titles.", "Given a word, find a synonym.", "Given a query, find a query."],
         "long-long": ["Given an essay, retrieve essays.", "Given a patent, find prior art.", "Given a paper, find papers."]}
SHARES = {"gpt-4": 0.75, "gpt-3.5-turbo": 0.25}


def _by_group(plan):
    return dict(Counter(p.task_type for p in plan))


def test_examples_per_group_gives_exactly_the_asked_requests_per_group():
    asked = {"short-long": 7, "short-short": 2, "sts": 1, "bitext": 11}
    config = GenerateConfig(**CONFIG, examples_per_group=asked)
    plan = generation_plan(config, TASKS)
    expected = {"short-long": 7, "long-short": 6, "short-short": 2, "long-long": 6, "sts": 1, "bitext": 11}
    assert _by_group(plan) == expected == config.planned_requests()
    assert len({p.request_id for p in plan}) == len({p.request.key() for p in plan}) == len(plan)
    # 7 requests over 3 slots: 3, 2, 2 (as even as they go); 2 over 3: the third slot is unused, so not brainstormed
    slots = Counter(p.task for p in plan if p.task_type == "short-long")
    assert [slots[t] for t in TASKS["short-long"]] == [3, 2, 2]
    assert {p.task for p in plan if p.task_type == "short-short"} == set(TASKS["short-short"][:2])
    assert config.tasks_wanted("short-short") == 2 and config.tasks_wanted("short-long") == 3
    # the groups it does not name are planned exactly as without the setting
    plain = generation_plan(GenerateConfig(**CONFIG), TASKS)
    assert ([p.request.key() for p in plan if p.task_type in ("long-short", "long-long")]
            == [p.request.key() for p in plain if p.task_type in ("long-short", "long-long")])


def test_a_group_short_of_tasks_gets_its_filled_slots_and_more_tasks_only_add_requests():
    config = GenerateConfig(**{**CONFIG, "task_types": "short-long"}, examples_per_group="short-long=7")
    two = generation_plan(config, {"short-long": TASKS["short-long"][:2]})
    three = generation_plan(config, {"short-long": TASKS["short-long"]})
    assert len(two) == 3 + 2 and len(three) == 7
    # a resumed run whose brainstorm found the missing task keeps every request it already sent
    assert {p.request.key() for p in two} <= {p.request.key() for p in three}


def test_model_shares_spread_generation_requests_in_proportion_and_reproducibly():
    config = GenerateConfig(**{**CONFIG, "task_types": "sts,bitext", "tasks_per_type": 1},
                            examples_per_group={"sts": 4000, "bitext": 4000}, model_shares=SHARES)
    plan = generation_plan(config, {})
    models = [p.request.model for p in plan]
    assert len(plan) == 8000 and set(models) == set(SHARES)
    assert abs(models.count("gpt-4") / len(models) - 0.75) < 0.02  # binomial sd 0.005
    for group in ("sts", "bitext"):  # no group is left to one model
        group_models = [p.request.model for p in plan if p.task_type == group]
        assert abs(group_models.count("gpt-4") / len(group_models) - 0.75) < 0.03
    assert [p.request.model for p in generation_plan(config, {})] == models
    reseeded = generation_plan(dataclasses.replace(config, seed=1), {})
    assert [p.request.model for p in reseeded] != models
    # the draw depends on the request id alone: a smaller plan assigns its requests as the larger one does
    small = generation_plan(dataclasses.replace(config, examples_per_group={"sts": 50, "bitext": 50}), {})
    assert all(p.request.model == config.generation_model(p.request_id) for p in small)
    # the model sent is part of the cache key: the same prompt to the other model is another cache row
    first = plan[0].request
    other = next(m for m in SHARES if m != first.model)
    assert dataclasses.replace(first, model=other).key() != first.key()
    # brainstorms go to the largest share, which `model` becomes
    assert config.model == "gpt-4"
    assert brainstorm_plan(dataclasses.replace(config, task_types="short-long,sts,bitext",
                                               examples_per_group=None), "short-long", 0).request.model == "gpt-4"


def test_the_same_shares_spelt_differently_are_one_config():
    as_text = GenerateConfig(model_shares="gpt-3.5-turbo=0.25, gpt-4=0.75")
    assert as_text.as_dict() == GenerateConfig(model_shares=SHARES).as_dict()
    assert list(as_text.model_shares) == ["gpt-4", "gpt-3.5-turbo"]
    tied = [GenerateConfig(model_shares=shares) for shares in ({"b": 0.5, "a": 0.5}, {"a": 0.5, "b": 0.5})]
    assert tied[0].model == tied[1].model == "a"
    assert tied[0].generation_model("generate/sts/0/0") == tied[1].generation_model("generate/sts/0/0")


def test_an_old_stored_config_still_resumes_and_new_settings_are_stored(tmp_path):
    config = GenerateConfig(**CONFIG)
    stored = config.as_dict()
    assert "examples_per_group" not in stored and "model_shares" not in stored
    old_run = tmp_path / "old"
    old_run.mkdir()
    # config.json as a run from before these settings wrote it
    old_plan = {"model": "loopback", "task_types": list(config.task_types), "tasks_per_type": 3, "examples_per_task": 2,
                "languages": ["English", "German", "Spanish"], "seed": 0, "temperature": 1.0, "top_p": 1.0,
                "max_tokens": None}
    rundir.write_config(old_run, old_plan, {})
    assert rundir.check_out_dir(old_run, config.as_dict()) is True
    new_run = tmp_path / "new"
    new_run.mkdir()
    paper_like = GenerateConfig(**CONFIG, examples_per_group={"sts": 5}, model_shares=SHARES)
    rundir.write_config(new_run, paper_like.as_dict(), {})
    reread = GenerateConfig(**json.loads((new_run / rundir.CONFIG_FILE).read_text())["plan"])
    assert rundir.check_out_dir(new_run, reread.as_dict()) is True
    with pytest.raises(SynthembedError, match="model_shares"):
        rundir.check_out_dir(new_run, GenerateConfig(**CONFIG, examples_per_group={"sts": 5}).as_dict())


def _generate_args(out, *extra):
    parser = argparse.ArgumentParser()
    configure_generate_parser(parser)
    return parser.parse_args(["--out", str(out), *extra])


def test_command_line_flags_and_resume_without_them(tmp_path):
    args = _generate_args(tmp_path / "run", "--examples-per-group", "sts=5,bitext=7", "--model-shares",
                          "gpt-4=0.75,gpt-3.5-turbo=0.25")
    config = _resolve_config(args)
    assert config.examples_per_group == {"sts": 5, "bitext": 7} and config.model_shares == SHARES
    rundir.write_config(tmp_path / "run", config.as_dict(), {})
    assert _resolve_config(_generate_args(tmp_path / "run")).as_dict() == config.as_dict()


@pytest.mark.parametrize(("settings", "message"), [
    ({"examples_per_group": {"retrieval": 5}}, "unknown task group"),
    ({"task_types": "sts", "examples_per_group": {"bitext": 5}}, "does not generate"),
    ({"examples_per_group": {"sts": 0}}, "positive whole number"),
    ({"examples_per_group": {"sts": -3}}, "positive whole number"),
    ({"examples_per_group": {"sts": 2.5}}, "positive whole number"),
    ({"examples_per_group": "sts=many"}, "must be a number"),
    ({"examples_per_group": "sts"}, "NAME=NUMBER"),
    ({"model_shares": {"gpt-4": 0.75, "gpt-3.5-turbo": 0.15}}, "sum to 1"),
    ({"model_shares": {"gpt-4": 1.25, "gpt-3.5-turbo": -0.25}}, "positive"),
    ({"model_shares": "gpt-4=0.75,=0.25"}, "without a model name"),
    ({"model_shares": ["gpt-4"]}, "expected a mapping"),
])
def test_bad_settings_are_clear_errors(settings, message):
    with pytest.raises(SynthembedError, match=message):
        GenerateConfig(**{**CONFIG, **settings})


def test_the_transformers_backend_refuses_several_models(tmp_path):
    config = GenerateConfig(**{**CONFIG, "task_types": "sts"}, model_shares=SHARES)
    with pytest.raises(SynthembedError, match="one local model"):
        generate(tmp_path / "run", config, backend="transformers", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_run_with_model_shares_sends_each_request_to_its_model_and_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    config = GenerateConfig(**{**CONFIG, "task_types": "sts,bitext"}, examples_per_group={"sts": 9, "bitext": 5},
                            model_shares={"loopback": 0.6, "loopback-mini": 0.4})
    with LoopbackServer() as server:
        options = dict(base_url=server.base_url, concurrency=4, backoff=0.01, progress=False)
        stats = generate(tmp_path / "run", config, **options)
        served = dict(server.served)
        again = generate(tmp_path / "run", GenerateConfig(**rundir.read_config(tmp_path / "run")["plan"]), **options)
        assert dict(server.served) == served  # complete: the rerun sends nothing
    assert again["accepted"] == stats["accepted"]
    assert stats["requests"]["generate_planned"] == 14
    assert {t: row["requests"] for t, row in stats["by_task_type"].items()} == {"sts": 9, "bitext": 5}
    plan = {p.request_id: p.request.model for p in generation_plan(config, {})}
    assert stats["by_model"] == {m: {"requests": list(plan.values()).count(m),
                                     "accepted": sum(1 for e in rundir.read_examples(tmp_path / "run")
                                                     if plan[e["meta"]["request_id"]] == m)}
                                 for m in set(plan.values())}
    for example in rundir.read_examples(tmp_path / "run"):  # the stand-in answers as the model it was asked for
        assert example["meta"]["model"] == plan[example["meta"]["request_id"]]


def test_the_paper_profile_plans_the_papers_counts_and_split():
    section = load_profile("paper")["02_generate"]
    config = GenerateConfig(**{k: v for k, v in section.items() if k in GenerateConfig.__dataclass_fields__})
    planned = config.planned_requests()  # counted: building 507k requests takes tens of seconds
    assert planned == {group: 1000 * count for group, count in PAPER_EXAMPLES_BY_GROUP.items()}
    assert abs(sum(planned.values()) - 500_000) <= 0.02 * 500_000  # the paper: about 500k examples
    assert config.model_shares == SHARES and config.model == "gpt-4"
    # brainstormed definitions: the paper's 150k distinct instructions (sts and bitext have fixed ones)
    assert sum(config.tasks_wanted(t) for t in config.brainstorm_groups) == 150_000


def test_the_plan_read_a_request_at_a_time_is_the_plan_of_before_byte_for_byte():
    """A run plans its requests as it sends them (plan.iter_generation_plan), no longer all before the first: the same
    requests in the same order, or no earlier run could resume from its cache. The digest is that of the plan built
    whole before the change (generation_plan at commit 9bd992d), over every field a request is made of."""
    config = GenerateConfig(model_shares="gpt-4=0.75,gpt-3.5-turbo=0.25", tasks_per_type=40, examples_per_task=6,
                            examples_per_group="short-long=300,sts=77", languages="paper", seed=3)  # fmt: skip
    tasks = {t: [f"Task {i} of {t}: retrieve what answers the query." for i in range(40 - 3 * n)]
             for n, t in enumerate(ASYMMETRIC_TASK_TYPES)}  # fmt: skip
    digest, count = hashlib.sha256(), 0
    for p in iter_generation_plan(config, tasks):
        row = [p.request_id, p.stage, p.task_type, p.request.key(), p.request.model, p.request.marker, p.task,
               p.placeholders, p.prompt_sha256]
        digest.update(json.dumps(row, sort_keys=True).encode())
        count += 1
    assert (count, digest.hexdigest()) == (1229, "b68ab06edc9f6771ae9e6a9c42d70ae73361af167f32fafa019ce26a6a62459a")
    assert plan_size(config, tasks) == count
    assert plan_size(config, {}) == len(generation_plan(config, {})) == 77 + 40 * 6  # sts and bitext only
