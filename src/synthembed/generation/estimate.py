"""What a generation run will ask and cost, before it sends anything: `synthembed generate --plan-only`.

    from synthembed.generation.estimate import estimate_plan
    config = GenerateConfig(model="gpt-4", tasks_per_type=60000, examples_per_group="short-long=167000,...",
                            model_shares="gpt-4=0.75,gpt-3.5-turbo=0.25")
    estimate_plan(config).costs                                   # list, batch, GPU hours (plan_only.py prints it all)
    estimate_plan(config, measured="runs/cpu/generation")         # token means measured in a real run's cache

    synthembed generate --out runs/paper --plan-only --model gpt-4 --tasks-per-type 60000 \\
        --examples-per-group short-long=167000,long-short=122000,sts=99000,bitext=89000,long-long=17000,short-short=13000 \\
        --model-shares gpt-4=0.75,gpt-3.5-turbo=0.25 --languages paper

Requests are counted exactly (plan.py's rules: generation requests per group and per model, brainstorm requests of the
first wave). Tokens are estimates, said as such:
- prompts: SAMPLE_PROMPTS real prompts per group rendered from the plan (its seed and languages; tasks from the run's
  tasks.jsonl where there is one, else the groups' illustrative task definitions), counted with tiktoken where it is
  installed and has its encoding offline, else at one token per 4 UTF-8 bytes, plus a chat turn's overhead (tokens.py);
- completions: the words the group's length rules ask for under the sampled placeholders (taskgroups.length_rules),
  ESTIMATED_WORDS for fields without a rule, at TOKENS_PER_WORD, plus the JSON around them;
- `measured=RUN`: the mean prompt and completion tokens per stage and group of RUN's answered requests (its cache.sqlite)
  replace the estimates wherever RUN has answers.
Cost: list prices (cost.py), batch prices (BATCH_PRICE_FACTOR of list, OpenAI's Batch API), and GPU hours of a
self-hosted server at a stated throughput (GpuThroughput, settings of the command).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from ..taskgroups import TASK_GROUP
from . import rundir
from .batch import BATCH_PRICE_FACTOR
from .cost import load_prices, price_of
from .plan import TASKS_PER_BRAINSTORM, GenerateConfig, Planned, all_brainstorm_plans, brainstorm_plan, generation_plan
from .tokens import prompt_tokens, token_counter

SAMPLE_PROMPTS = 64  # rendered prompts per group whose tokens are averaged
TOKENS_PER_WORD = 1.4  # BPE tokens per word, English about 1.3, other languages more
JSON_TOKENS_PER_FIELD = 5  # a key, its quotes, colon and comma
BRAINSTORM_WORDS_PER_TASK = 18  # one brainstormed task definition ("Given a ..., retrieve ...")

# Words a field is written with where its group has no length rule: what the templates' wording asks for ("a few words
# or one sentence", "a short text"); sts and bitext by their `unit` placeholder. A guess; `measured=` replaces it.
ESTIMATED_WORDS: dict[tuple[str, str], int | str] = {
    ("short-long", "hard_negative_document"): "positive_document",  # the same length as the positive
    ("long-short", "label"): 3,
    ("long-short", "misleading_label"): 3,
    ("short-short", "input"): 8,
    ("short-short", "positive_document"): 20,
}
UNIT_WORDS = {"sentence": 20, "phrase": 6, "passage": 80}


@dataclass(frozen=True)
class GpuThroughput:
    """A self-hosted server's speed per GPU, a stated assumption: generated tokens/s and prompt (prefill) tokens/s of
    one GPU serving many requests at once (vLLM-class batching, a 7B-8B model in bf16), and what a GPU-hour costs."""

    output_tokens_per_s: float = 2500.0
    prefill_tokens_per_s: float = 25000.0
    usd_per_hour: float = 2.5

    def hours(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (completion_tokens / self.output_tokens_per_s + prompt_tokens / self.prefill_tokens_per_s) / 3600


@dataclass
class StageEstimate:
    """One stage of one group: requests, and tokens per request (with where they come from)."""

    requests: int
    prompt_tokens: float  # per request
    completion_tokens: float  # per request
    source: str  # "estimated" or "measured (N answers)"

    @property
    def total_prompt(self) -> float:
        return self.requests * self.prompt_tokens

    @property
    def total_completion(self) -> float:
        return self.requests * self.completion_tokens


@dataclass
class PlanEstimate:
    config: GenerateConfig
    brainstorm: dict[str, StageEstimate]  # asymmetric groups only: the first wave of brainstorm requests
    generation: dict[str, StageEstimate]
    brainstorm_max: int  # brainstorm requests if every round is needed (brainstorm_rounds per group)
    by_model: dict[str, dict[str, float]]  # model -> requests, prompt_tokens, completion_tokens
    prompt_bytes: float  # mean bytes of one request as a batch file line
    token_counter: str
    measured_from: str | None = None
    costs: dict[str, Any] = field(default_factory=dict)


# --- tokens --------------------------------------------------------------------------------------------------------


def _prompt_tokens(planned: Planned, count) -> int:
    return prompt_tokens(planned.request.messages, count)


def _field_words(task_type: str, placeholders: Mapping[str, Any]) -> dict[str, float]:
    """Words each field of one example is expected to have under these placeholders."""
    group = TASK_GROUP[task_type]
    words: dict[str, float] = {}
    for name, low, high in group.length_rules(placeholders):
        if low is not None and high is not None:
            guess = (low + high) / 2
        elif low is not None:
            guess = low * 1.1  # "at least N" (or a bare N): models write a little past the floor
        else:
            guess = (high or 1) * 0.6  # "less than N"
        words[name] = max(words.get(name, 0.0), guess)
    for name in group.fields:
        if name in words:
            continue
        rule = ESTIMATED_WORDS.get((task_type, name))
        if isinstance(rule, str):
            words[name] = words.get(rule, 0.0)
        elif rule is not None:
            words[name] = float(rule)
        else:
            words[name] = float(UNIT_WORDS.get(str(placeholders.get("unit")), 20))
    return words


def completion_tokens_estimate(task_type: str, placeholders: Mapping[str, Any]) -> float:
    """Tokens of one generation reply: its fields' words at TOKENS_PER_WORD, and the JSON around them.

    >>> round(completion_tokens_estimate("short-short", {"language": "English"}), 1)
    51.2
    """
    words = _field_words(task_type, placeholders)
    return sum(words.values()) * TOKENS_PER_WORD + JSON_TOKENS_PER_FIELD * len(words) + 2


def brainstorm_completion_estimate() -> float:
    """Tokens of one brainstorm reply: a JSON list of about TASKS_PER_BRAINSTORM task definitions."""
    return TASKS_PER_BRAINSTORM * (BRAINSTORM_WORDS_PER_TASK * TOKENS_PER_WORD + 3) + 2


# --- requests ------------------------------------------------------------------------------------------------------


def _sample_tasks(config: GenerateConfig, run_tasks: dict[str, list[str]]) -> dict[str, list[str]]:
    """Task definitions to render sample prompts with: the run's own where it has them, else the illustrations."""
    return {t: run_tasks.get(t) or list(TASK_GROUP[t].brainstorm_examples) for t in config.brainstorm_groups}


def sample_generation_prompts(
    config: GenerateConfig, run_tasks: dict[str, list[str]] | None = None, n: int = SAMPLE_PROMPTS
) -> list[Planned]:
    """`n` real generation requests per group of the config (its seed, languages and models), one per task slot."""
    small = dataclasses.replace(config, tasks_per_type=n, examples_per_task=1, examples_per_group=None)
    tasks = _sample_tasks(config, run_tasks or {})
    return generation_plan(small, {t: [ts[i % len(ts)] for i in range(n)] for t, ts in tasks.items()})


def generation_requests_by_model(config: GenerateConfig) -> dict[str, Counter]:
    """{group: Counter(model -> generation requests)}, every task slot filled (as planned_requests() assumes)."""
    out: dict[str, Counter] = {}
    for t in config.task_types:
        counts: Counter = Counter()
        if not config.model_shares:
            counts[config.model] = config.planned_requests()[t]
        else:
            for j in range(config.tasks_per_type):
                for k in range(config.examples_for_slot(t, j)):
                    counts[config.generation_model(f"generate/{t}/{j}/{k}")] += 1
        out[t] = counts
    return out


def first_wave(config: GenerateConfig, task_type: str) -> int:
    """Brainstorm requests a group sends first (pipeline._wave): enough for its tasks at half the asked-for yield."""
    return min(-(-config.tasks_wanted(task_type) // (TASKS_PER_BRAINSTORM // 2)), config.brainstorm_rounds)


def measured_tokens(run_dir: str | Path) -> dict[tuple[str, str], tuple[int, float, float]]:
    """{(stage, group): (answers, mean prompt tokens, mean completion tokens)} of a run's answered requests."""
    from .cache import ResponseCache  # sqlite only when asked

    stored = rundir.read_config(run_dir)
    cache_file = rundir.cache_path(run_dir, (stored or {}).get("runtime", {}).get("cache"))
    if stored is None or not cache_file.is_file():
        raise SynthembedError(
            f"--measured {run_dir}: not a generation run with a response cache "
            f"(needs {rundir.CONFIG_FILE} and {cache_file})"
        )
    allowed = set(GenerateConfig.__dataclass_fields__)
    config = GenerateConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in stored["plan"].items() if k in allowed}
    )
    tasks: dict[str, list[str]] = defaultdict(list)
    for row in rundir.read_tasks(run_dir):
        tasks[row["task_type"]].append(row["task"])
    cache = ResponseCache(cache_file, readonly=True)
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    try:
        for planned in all_brainstorm_plans(config) + generation_plan(config, tasks):
            hit = cache.get(planned.request)
            if hit is not None:
                row = sums[(planned.stage, planned.task_type)]
                row[0] += 1
                row[1] += hit.prompt_tokens
                row[2] += hit.completion_tokens
    finally:
        cache.close()
    return {key: (int(n), p / n, c / n) for key, (n, p, c) in sums.items() if n}


def estimate_plan(
    config: GenerateConfig,
    *,
    measured: str | Path | None = None,
    prices: dict | None = None,
    gpu: GpuThroughput | None = None,
    run_tasks: dict[str, list[str]] | None = None,
    sample: int = SAMPLE_PROMPTS,
) -> PlanEstimate:
    """Requests per group and model, tokens and cost per backend of `config` (nothing is sent)."""
    count, counter_name = token_counter()
    measured_means = measured_tokens(measured) if measured is not None else {}

    def stage(kind: str, task_type: str, requests: int, prompt: float, completion: float) -> StageEstimate:
        if (kind, task_type) in measured_means:
            n, prompt, completion = measured_means[(kind, task_type)]
            return StageEstimate(requests, prompt, completion, f"measured ({n} answers)")
        return StageEstimate(requests, prompt, completion, "estimated")

    samples: dict[str, list[Planned]] = defaultdict(list)
    for planned in sample_generation_prompts(config, run_tasks, sample):
        samples[planned.task_type].append(planned)
    generation = {}
    for t in config.task_types:
        prompt = statistics.fmean(_prompt_tokens(p, count) for p in samples[t])
        completion = statistics.fmean(completion_tokens_estimate(t, p.placeholders) for p in samples[t])
        generation[t] = stage("generate", t, config.planned_requests()[t], prompt, completion)
    brainstorm = {}
    for t in config.brainstorm_groups:
        prompts = [brainstorm_plan(config, t, r) for r in range(min(sample, config.brainstorm_rounds))]
        brainstorm[t] = stage(
            "brainstorm",
            t,
            first_wave(config, t),
            statistics.fmean(_prompt_tokens(p, count) for p in prompts),
            brainstorm_completion_estimate(),
        )
    by_model: dict[str, dict[str, float]] = defaultdict(
        lambda: {"requests": 0, "prompt_tokens": 0.0, "completion_tokens": 0.0}
    )
    for t, counts in generation_requests_by_model(config).items():
        for model, n in counts.items():
            row = by_model[model]
            row["requests"] += n
            row["prompt_tokens"] += n * generation[t].prompt_tokens
            row["completion_tokens"] += n * generation[t].completion_tokens
    for s in brainstorm.values():  # brainstorms go to config.model
        row = by_model[config.model]
        row["requests"] += s.requests
        row["prompt_tokens"] += s.total_prompt
        row["completion_tokens"] += s.total_completion
    line_bytes = statistics.fmean(
        len(json.dumps(p.request.as_dict(), ensure_ascii=False).encode()) + 120 for ps in samples.values() for p in ps
    )  # + the line's custom_id, method, url
    estimate = PlanEstimate(
        config,
        brainstorm,
        generation,
        config.brainstorm_rounds * len(brainstorm),
        dict(by_model),
        line_bytes,
        counter_name,
        str(measured) if measured is not None else None,
    )
    estimate.costs = backend_costs(
        estimate.by_model, prices if prices is not None else load_prices(), gpu or GpuThroughput()
    )
    return estimate


def backend_costs(
    by_model: Mapping[str, Mapping[str, float]], prices: dict[str, tuple[float, float]], gpu: GpuThroughput
) -> dict[str, Any]:
    """Cost of these tokens per backend: list price, batch price, and self-hosted GPU hours (and their USD).

    >>> c = backend_costs({"gpt-4": {"requests": 1, "prompt_tokens": 1e6, "completion_tokens": 5e5}}, {"gpt-4": (30.0, 60.0)},
    ...                   GpuThroughput(output_tokens_per_s=2500, prefill_tokens_per_s=25000, usd_per_hour=2))
    >>> c["list_usd"], c["batch_usd"], round(c["gpu_hours"], 4)
    (60.0, 30.0, 0.0667)
    """
    per_model: dict[str, dict[str, float | None]] = {}
    unpriced = []
    for model, row in by_model.items():
        price = price_of(model, prices)
        if price is None:
            unpriced.append(model)
            list_usd = None
        else:
            list_usd = (row["prompt_tokens"] * price[0] + row["completion_tokens"] * price[1]) / 1e6
        per_model[model] = {
            "list_usd": list_usd,
            "batch_usd": None if list_usd is None else list_usd * BATCH_PRICE_FACTOR,
        }
    list_total = sum(m["list_usd"] or 0.0 for m in per_model.values())
    prompt = sum(row["prompt_tokens"] for row in by_model.values())
    completion = sum(row["completion_tokens"] for row in by_model.values())
    hours = gpu.hours(prompt, completion)
    return {
        "per_model": per_model,
        "list_usd": list_total,
        "batch_usd": list_total * BATCH_PRICE_FACTOR,
        "unpriced_models": sorted(unpriced),
        "gpu_hours": hours,
        "gpu_usd": hours * gpu.usd_per_hour,
        "gpu": dataclasses.asdict(gpu),
    }
