"""What a generation run asks: its config, and every request of its plan with a seed of its own.

    from synthembed.generation.plan import GenerateConfig, brainstorm_plan, generation_plan
    config = GenerateConfig(model="gpt-4o-mini", tasks_per_type=4, examples_per_task=3, languages="English,German")
    brainstorm_plan(config, "short-long", 0).request_id          # 'brainstorm/short-long/0'
    generation_plan(config, {"short-long": ["Given a question, retrieve answers."], ...})   # every generation request

The plan is a pure function of the config and the brainstormed tasks: the same config gives the same requests, byte for
byte, which is what lets a killed run resume from its response cache (pipeline.py).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
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
        return d

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


def _request_seed(seed: int, request_id: str) -> int:
    return int(hashlib.sha256(f"{seed}/{request_id}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random(hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).hexdigest())


def _planned(config: GenerateConfig, request_id: str, prompt: Prompt) -> Planned:
    request = ChatRequest(config.model, tuple(dict(m) for m in prompt.messages), config.temperature, config.top_p,
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


def generation_plan(config: GenerateConfig, tasks: dict[str, list[str]]) -> list[Planned]:
    """Every generation request, in plan order: group, task slot, sample. sts and bitext have fixed instructions, so
    their tasks_per_type x examples_per_task requests differ only in their sampled placeholders."""
    plan = []
    for task_type in config.task_types:
        fixed = TASK_GROUP[task_type].instruction is not None
        slots: Sequence[str | None] = [None] * config.tasks_per_type if fixed else tasks.get(task_type, [])
        for j, task in enumerate(slots):
            for k in range(config.examples_per_task):
                request_id = f"generate/{task_type}/{j}/{k}"
                placeholders = sample_placeholders(task_type, _rng(config.seed, request_id), config.languages)
                plan.append(_planned(config, request_id, generation_prompt(task_type, task, placeholders)))
    return plan
