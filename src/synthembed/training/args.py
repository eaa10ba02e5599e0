"""Every setting of `synthembed train`, with its help text (training/commands.py makes the options from them), and
the checks that need neither data nor model.

    from synthembed.training.args import TrainArguments
    from synthembed.training.loop import train
    out = train(TrainArguments(data=["examples.jsonl"], base_model="...", out="runs/m", max_steps=10))

The defaults are the paper's recipe (section 4.1): LoRA rank 16 on all linear layers, lr 1e-4, 100 warm-up steps then
linear decay, weight decay 0.1, max length 512, temperature 0.02, one hard negative per pair, gradient checkpointing,
bf16 on GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from ..paths import check_model_folder
from ..pooling import POOLING_MODES
from ..taskgroups import TASK_TYPES

DEFAULT_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"


@dataclass
class TrainArguments:
    """Every training setting, with its help text; the command line is generated from these fields."""

    data: list[str] = field(
        metadata={"help": "comma-separated examples.jsonl files (or run / curated folders holding one) and/or BEIR "
                          "folders (their --beir-split is used)"}
    )
    base_model: str = field(metadata={"help": "hub id or directory of the base model (decoder-only or encoder)"})
    out: str = field(metadata={"help": "output directory; must be empty or absent unless --resume"})
    pooling: str | None = field(
        default=None, metadata={"help": "last|mean|weighted-mean|cls (default: last for decoder-only, else mean)"}
    )
    batch_size: int = field(default=32, metadata={"help": "global batch size (pairs per optimizer step, all processes)"})
    mini_batch_size: int | None = field(
        default=None,
        metadata={"help": "texts per forward pass (GradCache); default: the per-process batch, i.e. no caching"},
    )
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: --epochs over the data)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data when --max-steps is not given"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on biases and norms)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank on all linear layers"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the paper does not state it)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (the paper does not state it)"})
    no_lora: bool = field(default=False, metadata={"help": "train every weight instead of LoRA adapters"})
    max_len: int = field(default=512, metadata={"help": "tokens per text, EOS included"})
    temperature: float = field(default=0.02, metadata={"help": "InfoNCE temperature tau"})
    save_every: int = field(default=100, metadata={"help": "save a checkpoint every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    seed: int = field(default=0, metadata={"help": "seed for data order, mining and initialisation"})
    hard_negatives: str = field(
        default="bm25",
        metadata={"help": "how to mine negatives for BEIR data: bm25, none, or embedding:<model> (a smaller model)"},
    )
    mine_depth: int = field(default=30, metadata={"help": "mined negatives are sampled from this many top documents"})
    mine_skip: int = field(
        default=0,
        metadata={"help": "leave out this many top-ranked non-relevant documents, where unjudged positives hide: "
                          "negatives come from ranks [--mine-skip, --mine-depth)"},
    )
    mine_ratio: float | None = field(
        default=None,
        metadata={"help": "never take a negative that scores above this fraction of its query's positive (BM25 "
                          "score or cosine), e.g. 0.95: NV-Retriever's positive-aware ceiling"},
    )
    mix: list[float] | None = field(
        default=None, metadata={"help": "comma-separated sampling ratio per --data entry, e.g. 1,0.5"}
    )
    group_by_task_type: bool = field(
        default=False, metadata={"help": "draw every batch from one task group (short-long, sts, ...)"}
    )
    no_in_batch_negatives_for: list[str] | None = field(
        default=None,
        metadata={"help": "comma-separated task groups whose queries see only their own positive and hard negative, "
                          "e.g. long-short (classification: many examples share a label text)"},
    )
    beir_split: str = field(default="train", metadata={"help": "qrels split of BEIR folders used for training"})
    beir_instruction: str = field(
        default="auto",
        metadata={"help": "query instruction for BEIR data: auto (by folder name), none, or the text itself"},
    )
    query_task: str = field(
        default=DEFAULT_QUERY_TASK,
        metadata={"help": "instruction written into the exported model's query prompt (sentence-transformers)"},
    )
    gradient_checkpointing: bool = field(default=True, metadata={"help": "recompute activations in backward"})
    bf16: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), yes or no"})
    log_every: int = field(default=1, metadata={"help": "write a log row every N steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --out"})
    no_export: bool = field(default=False, metadata={"help": "skip writing adapter/ and merged/ at the end"})
    progress: bool = field(default=True, metadata={"help": "show progress bars (--quiet: none)"})


# --- checks ------------------------------------------------------------------------------------------------------------


# Each check: (the setting's field, a test of its value, what it must be). All run before anything is loaded or written,
# so a setting that a later stage would refuse (the loss refuses temperature 0) never leaves a half-started --out.
_VALUE_CHECKS = (
    ("temperature", lambda v: v > 0, "must be > 0"),
    ("lr", lambda v: v > 0, "must be > 0"),
    ("epochs", lambda v: v > 0, "must be > 0"),
    ("warmup_steps", lambda v: v >= 0, "must be >= 0"),
    ("weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("max_grad_norm", lambda v: v >= 0, "must be >= 0 (0: no clipping)"),
    ("lora_rank", lambda v: v >= 1, "must be at least 1"),
    ("lora_alpha", lambda v: v > 0, "must be > 0"),
    ("lora_dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("max_len", lambda v: v >= 3, "must be at least 3 (BOS or CLS, one token of text, EOS or SEP)"),
    ("save_every", lambda v: v >= 0, "must be >= 0 (0: only at the end)"),
    ("log_every", lambda v: v >= 1, "must be at least 1"),
    ("keep_checkpoints", lambda v: v >= 1, "must be at least 1"),
    ("mine_depth", lambda v: v >= 1, "must be at least 1"),
    ("mine_skip", lambda v: v >= 0, "must be >= 0"),
    ("mine_ratio", lambda v: v is None or 0 < v <= 1, "must be a fraction of the positive's score, in (0, 1]"),
    ("bf16", lambda v: v in ("auto", "yes", "no"), "must be auto, yes or no"),
    ("pooling", lambda v: v is None or v in POOLING_MODES, f"must be one of {', '.join(POOLING_MODES)}"),
)


def check_arguments(args: TrainArguments) -> None:
    """The settings that are wrong whatever the data and the machine, as a SynthembedError naming the option."""
    if args.max_steps is not None and args.max_steps < 1:
        raise SynthembedError(f"--max-steps must be at least 1, got {args.max_steps}")
    check_model_folder(args.base_model, "--base-model")  # now, not after the data are read and negatives mined
    for name, valid, rule in _VALUE_CHECKS:
        value = getattr(args, name)
        if not valid(value):
            raise SynthembedError(f"{option(name)} {rule}, got {value!r}")
    if args.mine_skip >= args.mine_depth:
        raise SynthembedError(
            f"--mine-skip {args.mine_skip} leaves no rank to mine from: negatives come from ranks [--mine-skip, "
            f"--mine-depth), so it must be below --mine-depth ({args.mine_depth})"
        )
    unknown = sorted(set(args.no_in_batch_negatives_for or ()) - set(TASK_TYPES))
    if unknown:
        raise SynthembedError(
            f"--no-in-batch-negatives-for: unknown task group {', '.join(unknown)} (one of {', '.join(TASK_TYPES)})"
        )


def option(name: str) -> str:
    """The command-line spelling of a field.

    >>> option("max_len")
    '--max-len'
    """
    return "--" + name.replace("_", "-")


# --- what a run records, and what a resumed run may change ------------------------------------------------------------

# The settings a resumed run may change: how long it runs (the schedule is rebuilt for the new length), how often it
# saves, logs and reports, what it exports at the end, and memory use only (the cached loss computes the same objective
# for any mini-batch; checkpointing recomputes the same activations). Any other change (data, batch size, pooling, max
# length, learning rate, ...) would continue a different training than the checkpoint and log describe, so it is refused.
RESUMABLE_SETTINGS = frozenset({
    "out", "resume", "max_steps", "epochs", "save_every", "keep_checkpoints", "log_every", "progress", "no_export",
    "query_task", "mini_batch_size", "gradient_checkpointing",
})  # fmt: skip


def _local_path(name: str) -> str:
    """An existing local file or folder as its absolute path (the same run named from another directory compares
    equal); anything else (a hub id) unchanged."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def recorded_settings(args: TrainArguments) -> dict[str, Any]:
    """The settings as train_args.json records them: local paths of --data and --base-model made absolute."""
    values = dataclasses.asdict(args)
    values["data"] = [_local_path(entry) for entry in args.data]
    values["base_model"] = _local_path(args.base_model)
    return values


def changed_settings(recorded: dict[str, Any], args: TrainArguments) -> list[str]:
    """The settings of `args` that differ from a run's train_args.json, as `--lr 0.0001 -> 0.0002`; those a resume may
    change (RESUMABLE_SETTINGS) and those the file does not hold (an older version wrote it) are not compared.

    >>> changed_settings({"lr": 1e-4, "max_steps": 5}, TrainArguments(data=["d"], base_model="m", out="o", lr=2e-4))
    ['--lr 0.0001 -> 0.0002']
    """
    now = recorded_settings(args)
    then = {**recorded, "data": [_local_path(d) for d in recorded.get("data") or []]}
    if isinstance(recorded.get("base_model"), str):
        then["base_model"] = _local_path(recorded["base_model"])
    changed = []
    for name, value in now.items():
        if name in RESUMABLE_SETTINGS or name not in recorded:
            continue
        if _comparable(then[name]) != _comparable(value):
            changed.append(f"{option(name)} {then[name]!r} -> {value!r}".replace("'", ""))
    return changed


def _comparable(value: Any) -> Any:
    """A value as JSON gives it back (tuples as lists), so a setting read from train_args.json equals the same one given."""
    return [_comparable(v) for v in value] if isinstance(value, list | tuple) else value


def check_batch_sizes(batch_size: int, mini_batch_size: int | None, num_processes: int) -> tuple[int, int]:
    """(per-process batch, mini-batch) or a SynthembedError naming the setting that does not divide.

    >>> check_batch_sizes(64, 8, 2)
    (32, 8)
    """
    if batch_size < 1:
        raise SynthembedError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size % num_processes:
        raise SynthembedError(
            f"--batch-size {batch_size} does not divide by the number of processes ({num_processes}); "
            f"use a multiple of {num_processes}"
        )
    per_process = batch_size // num_processes
    mini = per_process if mini_batch_size is None else mini_batch_size
    if mini < 1:
        raise SynthembedError(f"--mini-batch-size must be at least 1, got {mini}")
    if per_process % mini:
        raise SynthembedError(
            f"--mini-batch-size {mini} does not divide the per-process batch {per_process} "
            f"(--batch-size {batch_size} over {num_processes} process(es))"
        )
    return per_process, mini
