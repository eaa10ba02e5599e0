"""What a generation run asks: its config, and every request of its plan with a seed of its own.

    from synthembed.generation.plan import GenerateConfig, brainstorm_plan, generation_plan
    config = GenerateConfig(model="gpt-4o-mini", tasks_per_type=4, examples_per_task=3, languages="English,German")
    paper = GenerateConfig(examples_per_group="short-long=167000,sts=99000", model_shares={"gpt-4": 0.75, "gpt-3.5-turbo": 0.25})
    brainstorm_plan(config, "short-long", 0).request_id          # 'brainstorm/short-long/0'
    generation_plan(config, {"short-long": ["Given a question, retrieve answers."], ...})   # every generation request
    iter_generation_plan(config, tasks)      # the same requests one at a time: what a run uses, never holding them all

The plan is a pure function of the config and the brainstormed tasks: the same config gives the same requests, byte for
byte, which is what lets a killed run resume from its response cache (pipeline.py). That includes the model each
generation request goes to under `model_shares`: a draw from the seed and the request id alone.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import SynthembedError
from ..languages import parse_languages
from ..taskgroups import ASYMMETRIC_TASK_TYPES, TASK_GROUP, TASK_TYPES
from .llm import ChatRequest
from .parsing import LENGTH_TOLERANCE
from .prompts import Prompt, brainstorm_prompt, generation_prompt, sample_placeholders

TASKS_PER_BRAINSTORM = 20  # what the brainstorm prompt asks for ("about 20")


@dataclass
class GenerateConfig:
    """Everything that decides which requests a run sends and which replies it keeps; a resumed run must match it
    exactly, so that one run's examples and rejects all come from one rule.

    `length_tolerance` decides only the verdict on a reply, never a request: a run judged again at another tolerance
    goes to a new --out and answers every request from the first run's response cache (`--backend replay --cache
    OLD/cache.sqlite`), nothing sent twice.

    `examples_per_group` ({group: generation requests}, or "short-long=167000,sts=99000") replaces tasks_per_type x
    examples_per_task for the groups it names (the paper's counts differ by group): the requests are spread as evenly
    as they go over the group's tasks_per_type task slots, so a group of fewer requests than slots brainstorms only as
    many tasks as it uses. A group whose brainstorm finds fewer tasks than it asks for gets the requests of the slots
    it filled, as without the setting.
    `model_shares` ({model: share}, or "gpt-4=0.75,gpt-3.5-turbo=0.25"; shares sum to 1) sends each generation
    request to one model, drawn from the seed and its request id, in proportion to the shares; `model` becomes the
    largest-share model, which answers the brainstorm requests.
    """

    model: str = "gpt-4o-mini"
    task_types: tuple[str, ...] = TASK_TYPES
    tasks_per_type: int = 4
    examples_per_task: int = 2
    languages: tuple[str, ...] | str = "paper"
    seed: int = 0
    temperature: float = 1.0  # the paper's sampling settings (section 3.1)
    top_p: float = 1.0
    max_tokens: int | None = None
    length_tolerance: float = LENGTH_TOLERANCE  # a text passes within this factor of the asked-for length; 0: unchecked
    examples_per_group: dict[str, int] | str | None = None
    model_shares: dict[str, float] | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.task_types, str):
            self.task_types = tuple(t.strip() for t in self.task_types.split(",") if t.strip())
        self.task_types = tuple(self.task_types)
        unknown = [t for t in self.task_types if t not in TASK_TYPES]
        if unknown or not self.task_types:
            raise SynthembedError(f"unknown task type(s) {unknown or self.task_types}; choose from {', '.join(TASK_TYPES)}")
        self.task_types = tuple(t for t in TASK_TYPES if t in self.task_types)  # canonical order
        self.languages = parse_languages(self.languages)
        two_languages = [t for t in self.task_types if len(TASK_GROUP[t].language_placeholders) == 2]
        if two_languages and len(self.languages) < 2:
            raise SynthembedError(f"{', '.join(two_languages)} needs at least two languages (--languages)")
        for name in ("tasks_per_type", "examples_per_task"):
            if int(getattr(self, name)) < 1:
                raise SynthembedError(f"{name} must be at least 1, got {getattr(self, name)}")
            setattr(self, name, int(getattr(self, name)))
        self.examples_per_group = _group_counts(self.examples_per_group, self.task_types) or None
        self.model_shares = _model_shares(self.model_shares) or None
        if self.model_shares:
            self.model = next(iter(self.model_shares))
        if not self.model:
            raise SynthembedError("a model name is needed (--model)")
        self.length_tolerance = float(self.length_tolerance)
        if self.length_tolerance != 0 and self.length_tolerance < 1:
            raise SynthembedError(f"length_tolerance must be 0 (no length check) or at least 1, got {self.length_tolerance}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task_types"] = list(self.task_types)
        d["languages"] = list(self.languages)
        if self.length_tolerance == LENGTH_TOLERANCE:
            del d["length_tolerance"]  # runs from before the setting recorded none: the default keeps them resumable
        for name in ("examples_per_group", "model_shares"):
            if d[name] is None:
                del d[name]  # likewise
        return d

    def examples_for_slot(self, task_type: str, slot: int) -> int:
        """Generation requests of the `slot`-th task of a group: examples_per_task, or the group's examples_per_group
        spread over its tasks_per_type slots, the first slots taking one more where it does not divide."""
        count = (self.examples_per_group or {}).get(task_type)
        if count is None:
            return self.examples_per_task
        per_slot, extra = divmod(count, self.tasks_per_type)
        return per_slot + (slot < extra)

    def tasks_wanted(self, task_type: str) -> int:
        """Tasks a group brainstorms: tasks_per_type, or fewer where its examples_per_group leaves slots unused."""
        return min(self.tasks_per_type, (self.examples_per_group or {}).get(task_type, self.tasks_per_type))

    def planned_requests(self) -> dict[str, int]:
        """Generation requests per group once every group has all its tasks (counted, no plan built).

        >>> GenerateConfig(task_types="sts,bitext", tasks_per_type=3, examples_per_group="sts=10").planned_requests()
        {'sts': 10, 'bitext': 6}
        """
        return {t: sum(self.examples_for_slot(t, j) for j in range(self.tasks_per_type)) for t in self.task_types}

    def generation_model(self, request_id: str) -> str:
        """The model a generation request goes to: `model`, or a draw in proportion to `model_shares` that depends on
        the seed and the request id alone, so a resumed run (and its response cache) sees the same."""
        if not self.model_shares:
            return self.model
        draw = int(hashlib.sha256(f"{self.seed}/{request_id}/model".encode()).hexdigest()[:13], 16) / 16**13
        cumulative = 0.0
        for model, share in self.model_shares.items():
            cumulative += share
            if draw < cumulative:
                return model
        return model  # a draw above the rounded sum of the shares

    @property
    def brainstorm_rounds(self) -> int:
        """Brainstorm requests allowed per group: enough for tasks_per_type at half the asked-for yield, plus two."""
        return -(-self.tasks_per_type // (TASKS_PER_BRAINSTORM // 2)) + 2

    @property
    def brainstorm_groups(self) -> tuple[str, ...]:
        """The run's groups that brainstorm their task definitions first (the asymmetric ones)."""
        return tuple(t for t in self.task_types if t in ASYMMETRIC_TASK_TYPES)


@dataclass
class Planned:
    """One request of the plan, with what its answer becomes."""

    request_id: str
    stage: str  # "brainstorm" | "generate"
    task_type: str
    request: ChatRequest
    task: str | None = None
    placeholders: dict[str, Any] = field(default_factory=dict)
    prompt_sha256: str = ""


def _pairs(value: Mapping[str, Any] | str, name: str) -> dict[str, Any]:
    """A {name: number} setting as a mapping, or as "a=1,b=2" text (the command line's form)."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise SynthembedError(f"{name}: expected NAME=NUMBER pairs separated by commas, got {value!r}")
        return {key.strip(): number.strip() for key, number in pairs}
    if not isinstance(value, Mapping):
        raise SynthembedError(f"{name}: expected a mapping or NAME=NUMBER text, got {value!r}")
    return {str(key).strip(): number for key, number in value.items()}


def _number(value: Any, what: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise SynthembedError(f"{what} must be a number, got {value!r}")
    return number


def _group_counts(value: Mapping[str, Any] | str | None, task_types: tuple[str, ...]) -> dict[str, int]:
    """examples_per_group checked (groups of the run, positive whole numbers), in TASK_TYPES order."""
    if value is None:
        return {}
    counts = _pairs(value, "examples_per_group")
    unknown = [g for g in counts if g not in TASK_TYPES]
    if unknown:
        raise SynthembedError(f"examples_per_group: unknown task group(s) {unknown}; choose from {', '.join(TASK_TYPES)}")
    absent = [g for g in counts if g not in task_types]
    if absent:
        raise SynthembedError(f"examples_per_group names {absent}, which this run does not generate "
                              f"(task_types: {', '.join(task_types)})")
    for group, count in counts.items():
        number = _number(count, f"examples_per_group[{group!r}]")
        if number < 1 or number != int(number):
            raise SynthembedError(f"examples_per_group[{group!r}] must be a positive whole number of requests, got {count!r}")
    return {g: int(float(counts[g])) for g in TASK_TYPES if g in counts}


def _model_shares(value: Mapping[str, Any] | str | None) -> dict[str, float]:
    """model_shares checked (named models, positive shares that sum to 1), largest share first, ties by name: one order
    for every spelling of the same shares, since the order decides which model each draw lands on."""
    if value is None:
        return {}
    shares = {model: _number(share, f"model_shares[{model!r}]") for model, share in _pairs(value, "model_shares").items()}
    if "" in shares:
        raise SynthembedError(f"model_shares: a share without a model name in {value!r}")
    negative = {m: s for m, s in shares.items() if s <= 0}
    if negative:
        raise SynthembedError(f"model_shares must be positive, got {negative}")
    if shares and not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6):
        raise SynthembedError(f"model_shares must sum to 1, got {sum(shares.values()):g} ({shares})")
    return dict(sorted(shares.items(), key=lambda item: (-item[1], item[0])))


def _request_seed(seed: int, request_id: str) -> int:
    return int(hashlib.sha256(f"{seed}/{request_id}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random(hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).hexdigest())


def _planned(config: GenerateConfig, request_id: str, prompt: Prompt) -> Planned:
    model = config.model if prompt.stage == "brainstorm" else config.generation_model(request_id)
    request = ChatRequest(model, tuple(dict(m) for m in prompt.messages), config.temperature, config.top_p,
                          config.max_tokens, _request_seed(config.seed, request_id), marker=prompt.marker)
    if prompt.stage == "brainstorm":
        return Planned(request_id, "brainstorm", prompt.task_type, request, prompt_sha256=prompt.sha256())
    return Planned(request_id, "generate", prompt.task_type, request, task=prompt.task,
                   placeholders=dict(prompt.placeholders), prompt_sha256=prompt.sha256())


def brainstorm_plan(config: GenerateConfig, task_type: str, round_index: int) -> Planned:
    """The `round_index`-th brainstorm request of an asymmetric group."""
    request_id = f"brainstorm/{task_type}/{round_index}"
    return _planned(config, request_id, brainstorm_prompt(task_type, _rng(config.seed, request_id)))


def all_brainstorm_plans(config: GenerateConfig) -> list[Planned]:
    """Every brainstorm request the run may send: brainstorm_rounds per asymmetric group."""
    return [brainstorm_plan(config, t, r) for t in config.brainstorm_groups for r in range(config.brainstorm_rounds)]


def iter_generation_plan(config: GenerateConfig, tasks: Mapping[str, Sequence[str]]) -> Iterator[Planned]:
    """Every generation request, in plan order: group, task slot, sample (examples_for_slot per slot), one at a time, so
    that a run never holds its whole plan (about 2 KB a request: 1 GB at the paper's 507k). sts and bitext have fixed
    instructions, so their tasks_per_type slots differ only in their sampled placeholders."""
    for task_type in config.task_types:
        fixed = TASK_GROUP[task_type].instruction is not None
        slots: Sequence[str | None] = [None] * config.tasks_per_type if fixed else tasks.get(task_type, [])
        for j, task in enumerate(slots):
            for k in range(config.examples_for_slot(task_type, j)):
                request_id = f"generate/{task_type}/{j}/{k}"
                placeholders = sample_placeholders(task_type, _rng(config.seed, request_id), config.languages)
                yield _planned(config, request_id, generation_prompt(task_type, task, placeholders))


def generation_plan(config: GenerateConfig, tasks: Mapping[str, Sequence[str]]) -> list[Planned]:
    """Every generation request, in plan order (iter_generation_plan, held whole: for small plans and tests)."""
    return list(iter_generation_plan(config, tasks))


def plan_size(config: GenerateConfig, tasks: Mapping[str, Sequence[str]]) -> int:
    """How many requests iter_generation_plan yields for `tasks`, counted without planning one.

    >>> plan_size(GenerateConfig(task_types="sts,short-long", tasks_per_type=3), {"short-long": ["a", "b"]})
    10
    """
    return sum(config.examples_for_slot(t, j)
               for t in config.task_types
               for j in range(config.tasks_per_type if TASK_GROUP[t].instruction is not None else len(tasks.get(t, []))))
