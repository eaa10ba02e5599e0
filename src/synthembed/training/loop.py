"""Contrastive training of an embedding model: InfoNCE over in-batch and hard negatives, LoRA through peft, accelerate
underneath (one CPU or GPU, DDP, DeepSpeed ZeRO-3, FSDP), checkpoints that resume exactly, and export.

    synthembed train --data runs/gen/examples.jsonl,../shared/data/beir/scifact --base-model mistralai/Mistral-7B-v0.1 \\
        --out runs/model --batch-size 2048 --mini-batch-size 64
    accelerate launch --config_file configs/ddp.yaml -m synthembed.cli train ...      # many GPUs

    from synthembed.training.loop import TrainArguments, train
    out = train(TrainArguments(data=["examples.jsonl"], base_model="...", out="runs/m", max_steps=10))

The defaults are the paper's recipe (section 4.1): LoRA rank 16 on all linear layers, lr 1e-4, 100 warm-up steps then
linear decay, weight decay 0.1, max length 512, temperature 0.02, one hard negative per pair, gradient checkpointing,
bf16 on GPU. `--out` ends up holding:

    checkpoints/step-000100/   optimizer, scheduler, RNG states, weights and the data position (`--resume` continues)
    train_log.csv              step, loss, learning rate, gradient norm, pairs/s and tokens/s per step
    adapter/                   the LoRA adapter (peft), loadable by synthembed's load_embedder
    merged/                    LoRA merged into the base: a sentence-transformers directory (pooling, prompts, EOS)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import (
    TASK_TYPES,
    TrainingPair,
    beir_instruction,
    beir_to_pairs,
    examples_to_pairs,
    mix_pairs,
    read_beir,
    read_examples,
)
from ..errors import SynthembedError
from ..model_config import read_model_config, write_model_config

DEFAULT_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"
LOG_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "pairs_per_s", "tokens_per_s", "elapsed_s")
CHECKPOINTS = "checkpoints"


@dataclass
class TrainArguments:
    """Every training setting, with its help text; the command line is generated from these fields."""

    data: list[str] = field(
        metadata={"help": "comma-separated examples.jsonl files and/or BEIR folders (their --beir-split is used)"}
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
    no_gradient_checkpointing: bool = field(default=False, metadata={"help": "turn gradient checkpointing off"})
    bf16: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), yes or no"})
    log_every: int = field(default=1, metadata={"help": "write a log row every N steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --out"})
    no_export: bool = field(default=False, metadata={"help": "skip writing adapter/ and merged/ at the end"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


# --- command line ------------------------------------------------------------------------------------------------------

_LIST_FIELDS = {"data": str, "mix": float, "no_in_batch_negatives_for": str}
_FLAGS = {"no_lora", "group_by_task_type", "resume", "no_export", "no_gradient_checkpointing"}
_HIDDEN = {"gradient_checkpointing", "progress"}


def _csv_list(kind):
    def parse(text: str):
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def configure_train_parser(parser: argparse.ArgumentParser) -> None:
    """Add every TrainArguments field as an option (`--batch-size`), with its help text."""
    for f in dataclasses.fields(TrainArguments):
        if f.name in _HIDDEN:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in _FLAGS:
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name in _LIST_FIELDS:
            parser.add_argument(flag, type=_csv_list(_LIST_FIELDS[f.name]), required=required, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            parser.add_argument(
                flag, type=kind, default=None if required else f.default, required=required,
                help=f"{help_text} (default: {f.default})" if not required else help_text,
            )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_train_command(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainArguments) if hasattr(args, f.name)}
    values["progress"] = not args.quiet
    out = train(TrainArguments(**values))
    print(f"[train] finished: {out}")
    return 0


# --- checks ------------------------------------------------------------------------------------------------------------


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


def _check_out(out: Path, resume: bool) -> None:
    """Never overwrite: a non-empty --out needs --resume; --resume needs a checkpoint there."""
    if resume:
        if latest_checkpoint(out) is None:
            raise SynthembedError(f"--resume: {out} holds no checkpoint ({out / CHECKPOINTS}/step-*) to resume from")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthembedError(
            f"--out {out} is not empty; pass --resume to continue its training, or choose a new directory"
        )


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (a folder is renamed into place only once fully written)."""
    root = Path(out) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


# --- data --------------------------------------------------------------------------------------------------------------


def load_pairs(args: TrainArguments, cache_dir: Path | None = None, mined: dict | None = None) -> list[TrainingPair]:
    """Read every --data entry (examples.jsonl or BEIR folder), mine negatives for BEIR, mix by --mix.

    Mined negatives are read from `cache_dir` where present there; newly mined ones are put into `mined`
    ({file name: negatives}) for the caller to save once the output directory exists.
    """
    sources = []
    for entry in args.data:
        path = Path(entry).expanduser()
        if path.is_dir():
            sources.append(_beir_pairs(path, args, cache_dir, mined))
        elif path.is_file():
            pairs = examples_to_pairs(read_examples(path), source=str(path))
            if not pairs:
                raise SynthembedError(f"{path}: no examples (the file is empty)")
            sources.append(pairs)
        else:
            raise SynthembedError(f"--data {entry}: no such file or folder")
    pairs = mix_pairs(sources, args.mix, seed=args.seed)
    if not pairs:
        raise SynthembedError(f"--data {','.join(args.data)}: no training pairs (empty data, or --mix ratios of 0)")
    return pairs


def _beir_pairs(path: Path, args: TrainArguments, cache_dir: Path | None, mined: dict | None) -> list[TrainingPair]:
    corpus, queries, qrels = read_beir(path, split=args.beir_split)
    if not queries:
        raise SynthembedError(f"{path}: no queries with {args.beir_split} relevance judgements")
    if args.beir_instruction == "auto":
        task = beir_instruction(path)
    elif args.beir_instruction == "none":
        task = None
    else:
        task = args.beir_instruction
    negatives = None
    if args.hard_negatives != "none":
        name = f"negatives-{path.name}-{args.beir_split}-{args.hard_negatives.replace('/', '_').replace(':', '_')}.json"
        if cache_dir is not None and (cache_dir / name).is_file():
            negatives = json.loads((cache_dir / name).read_text())
        else:
            negatives = mine_negatives(args.hard_negatives, corpus, queries, qrels, task, args)
            if mined is not None:
                mined[name] = negatives
    return beir_to_pairs(corpus, queries, qrels, negatives=negatives, task=task, source=str(path))


def mine_negatives(how: str, corpus, queries, qrels, task, args: TrainArguments) -> dict[str, list[str]]:
    from .mining import mine_bm25, mine_embedding

    print(f"[train] mining hard negatives with {how} for {len(queries)} queries over {len(corpus)} documents")
    if how == "bm25":
        return mine_bm25(corpus, queries, qrels, depth=args.mine_depth, seed=args.seed, show_progress=args.progress)
    if how.startswith("embedding:"):
        from ..model import load_embedder

        miner = load_embedder(how.split(":", 1)[1], max_len=min(args.max_len, 512))
        return mine_embedding(miner, corpus, queries, qrels, task=task, depth=args.mine_depth, seed=args.seed)
    raise SynthembedError(f"--hard-negatives {how!r}: use bm25, none, or embedding:<model>")


class BatchPlan:
    """Which pairs form global batch number `step`: a deterministic function of (seed, step), so that the data position
    of a checkpoint is just its step. Each epoch is a fresh seeded permutation; an incomplete last batch is dropped.
    With `group_by_task_type`, batches are cut within one task group and the batches of all groups shuffled together.

    >>> plan = BatchPlan([TrainingPair(query=str(i), positive="p") for i in range(10)], batch_size=4, seed=0)
    >>> plan.steps_per_epoch, len(plan.batch(0))
    (2, 4)
    """

    def __init__(self, pairs: list[TrainingPair], batch_size: int, seed: int = 0, group_by_task_type: bool = False):
        self.pairs, self.batch_size, self.seed, self.grouped = pairs, batch_size, seed, group_by_task_type
        self._epoch, self._batches = -1, []
        self.steps_per_epoch = len(self._epoch_batches(0))
        if self.steps_per_epoch == 0:
            raise SynthembedError(
                f"{len(pairs)} training pairs do not fill one batch of --batch-size {batch_size}"
                + (" within any single task group (--group-by-task-type)" if group_by_task_type else "")
            )

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        if not self.grouped:
            order = rng.permutation(len(self.pairs)).tolist()
            return [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
        batches = []
        for task_type in sorted({p.task_type for p in self.pairs}):
            members = [i for i, p in enumerate(self.pairs) if p.task_type == task_type]
            members = [members[j] for j in rng.permutation(len(members))]
            batches += [members[i : i + self.batch_size] for i in range(0, len(members) - self.batch_size + 1, self.batch_size)]
        return [batches[j] for j in rng.permutation(len(batches))]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global step `step` (counted from 0)."""
        return divmod(step, self.steps_per_epoch)

    def batch(self, step: int) -> list[TrainingPair]:
        epoch, index = self.position(step)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return [self.pairs[i] for i in self._batches[index]]


# --- model -------------------------------------------------------------------------------------------------------------


def enable_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant, which LoRA's frozen inputs need). transformers 5 renamed
    gradient checkpointing to activation checkpointing; the old name warns and goes in v6."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def in_batch_flags(rows: list[TrainingPair], without: list[str] | None) -> list[bool] | None:
    """Per row: may its query use the other rows' documents as negatives? None when every row may (the default).

    >>> in_batch_flags([TrainingPair(query="q", positive="p", task_type="long-short")], ["long-short"])
    [False]
    """
    if not without:
        return None
    return [row.task_type not in without for row in rows]


def add_lora(model, rank: int = 16, alpha: int = 32, dropout: float = 0.1):
    """Wrap a transformers model with LoRA adapters on all linear layers (the paper's setting, rank 16); only the
    adapters train. Returns the peft model.

    >>> # model = add_lora(AutoModel.from_pretrained(path)); model.print_trainable_parameters()
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", bias="none")
    return get_peft_model(model, config)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _optimizer(model, lr: float, weight_decay: float):
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        # The fused kernel is several times cheaper per step on CPU and CUDA alike (measured in bench_train_cpu.py).
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(groups, lr=lr)


def _schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the peak, then linear decay to 0 at the last step (the paper's schedule)."""
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- the loop ----------------------------------------------------------------------------------------------------------


def train(args: TrainArguments, on_step: Callable[[int, float], Any] | None = None) -> Path:
    """Train as `args` says; returns --out. `on_step(step, loss)` is called after every optimizer step (1-based)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed

    from ..losses import CachedInfoNCE, info_nce
    from ..model import load_embedder

    out = Path(args.out).expanduser()
    _check_out(out, args.resume)
    if args.max_steps is not None and args.max_steps < 1:
        raise SynthembedError(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.save_every < 0 or args.log_every < 1:
        raise SynthembedError("--save-every must be >= 0 and --log-every >= 1")
    unknown = sorted(set(args.no_in_batch_negatives_for or ()) - set(TASK_TYPES))
    if unknown:
        raise SynthembedError(
            f"--no-in-batch-negatives-for: unknown task group {', '.join(unknown)} (one of {', '.join(TASK_TYPES)})"
        )

    on_gpu = torch.cuda.is_available()
    sharded = [name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
               if os.environ.get(var, "").lower() == "true"]  # fmt: skip
    if sharded and not on_gpu:  # accelerate's plugins refuse CPU deep inside; say what works instead
        raise SynthembedError(
            f"{sharded[0]} (from the launch config) needs CUDA devices and none is visible; on CPU launch several "
            "processes with DDP instead: torchrun --standalone --nproc_per_node N -m synthembed.cli train ..."
        )
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and on_gpu)
    # --batch-size is global and the schedule counts optimizer steps: without step_scheduler_with_optimizer=False,
    # accelerate would step the scheduler once per process per optimizer step (its per-process-batch convention),
    # running the warm-up and decay num_processes times too fast.
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no", cpu=not on_gpu, step_scheduler_with_optimizer=False
    )
    per_process, mini = check_batch_sizes(args.batch_size, args.mini_batch_size, accelerator.num_processes)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed and mini != per_process:
        raise SynthembedError(
            "--mini-batch-size: the cached loss backpropagates outside DeepSpeed's engine; under DeepSpeed use a "
            f"mini-batch equal to the per-process batch ({per_process}) and let ZeRO-3 and checkpointing save memory"
        )
    set_seed(args.seed)

    mined: dict[str, Any] = {}
    pairs = load_pairs(args, cache_dir=out / "data", mined=mined)
    plan = BatchPlan(pairs, args.batch_size, seed=args.seed, group_by_task_type=args.group_by_task_type)
    total_steps = args.max_steps or max(1, math.floor(plan.steps_per_epoch * args.epochs))

    # Frozen base weights can sit in bf16 on GPU; a full fine-tune keeps fp32 masters and autocasts.
    dtype = torch.bfloat16 if (bf16 and not args.no_lora) else torch.float32
    emb = load_embedder(args.base_model, pooling=args.pooling, max_len=args.max_len, device=accelerator.device, dtype=dtype)
    base_path = emb.model.config._name_or_path or args.base_model
    if args.gradient_checkpointing and not args.no_gradient_checkpointing:
        enable_checkpointing(emb.model)
    if not args.no_lora:
        emb.model = add_lora(emb.model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    emb.model.train()
    trainable, total = trainable_parameters(emb.model)

    optimizer = _optimizer(emb.model, args.lr, args.weight_decay)
    scheduler = _schedule(optimizer, args.warmup_steps, total_steps)
    if deepspeed:  # there is no DataLoader for accelerate to read the micro-batch size from
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = per_process
    model, optimizer, scheduler = accelerator.prepare(emb.model, optimizer, scheduler)
    emb.model = model

    start = 0
    if accelerator.is_main_process:  # only now, with data and model loaded, does anything get written
        out.mkdir(parents=True, exist_ok=True)
        for name, negatives in mined.items():
            (out / "data").mkdir(exist_ok=True)
            (out / "data" / name).write_text(json.dumps(negatives))
    accelerator.wait_for_everyone()
    if args.resume:
        checkpoint = latest_checkpoint(out)
        accelerator.load_state(str(checkpoint))  # weights, optimizer, scheduler and every RNG state
        start = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
        accelerator.print(f"[train] resuming from {checkpoint} at step {start}")
    elif accelerator.is_main_process:
        (out / "train_args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))
    log = _Log(out / "train_log.csv", keep_until=start, enabled=accelerator.is_main_process)

    tokens = [0]

    def embed_fn(texts: list[str]):
        batch = emb.tokenize(texts)
        tokens[0] += int(batch["attention_mask"].sum())
        with accelerator.autocast():
            return emb.embed(batch)  # (b, D)

    cached = CachedInfoNCE(
        embed_fn, mini_batch_size=mini, temperature=args.temperature, gather=accelerator.num_processes > 1,
        no_sync=lambda: accelerator.no_sync(model),
    )
    accelerator.print(
        f"[train] {len(pairs)} pairs, {plan.steps_per_epoch} steps per epoch, {total_steps} steps; batch {args.batch_size} "
        f"({per_process} per process, mini-batch {mini}); {trainable:,} of {total:,} parameters train; "
        f"{accelerator.num_processes} process(es) on {accelerator.device}"
    )
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start, desc="train", disable=not (args.progress and accelerator.is_local_main_process))
    began = time.perf_counter()
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        rows = plan.batch(step)[accelerator.process_index * per_process : (accelerator.process_index + 1) * per_process]
        queries, positives = [r.query for r in rows], [r.positive for r in rows]
        negatives = [r.negative for r in rows] if any(r.negative is not None for r in rows) else None
        in_batch = in_batch_flags(rows, args.no_in_batch_negatives_for)  # (b,) or None: in-batch for all
        tokens[0] = 0
        if mini == per_process:  # one pass: the plain loss, backpropagated by accelerate (DeepSpeed needs that)
            q_reps, p_reps = embed_fn(queries), embed_fn(positives)  # (b, D) each
            n_reps = None
            if negatives is not None:
                present = [i for i, n in enumerate(negatives) if n is not None]
                n_reps = q_reps.new_zeros(q_reps.shape)  # (b, D) absent rows are masked by info_nce
                n_reps = n_reps.index_copy(0, torch.tensor(present, device=n_reps.device), embed_fn([negatives[i] for i in present]))
            loss_t = info_nce(
                q_reps, p_reps, n_reps, temperature=args.temperature, q_texts=queries, p_texts=positives,
                n_texts=negatives, gather=accelerator.num_processes > 1,
                in_batch_negatives=True if in_batch is None else in_batch,
            )
            accelerator.backward(loss_t)
            loss = float(loss_t.detach())
        else:
            loss = cached.step(queries, positives, negatives, in_batch_negatives=in_batch)
            tokens[0] //= 2  # the cached loss embeds every text twice (without, then with a graph)
        grad_norm = float("nan")
        if args.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        done = step + 1
        if done % args.log_every == 0 or done == total_steps:
            log.write(
                step=done, epoch=round(done / plan.steps_per_epoch, 4), loss=loss, lr=lr, grad_norm=grad_norm,
                pairs_per_s=args.batch_size / seconds, tokens_per_s=tokens[0] * accelerator.num_processes / seconds,
                elapsed_s=time.perf_counter() - began,
            )
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if (args.save_every and done % args.save_every == 0) or done == total_steps:
            save_checkpoint(accelerator, out, done, plan, args.keep_checkpoints)
        if on_step is not None:
            on_step(done, loss)
    bar.close()

    if not args.no_export:
        # Whether queries carried `Instruct: ...` in training decides how the export is evaluated and prompted.
        with_instructions = any(p.instructed for p in pairs)
        export(accelerator, emb, out, base_path=str(base_path), args=args, instructions=with_instructions)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


class _Log:
    """train_log.csv, one row per logged step; on resume, rows past the checkpoint (written before a crash) are dropped
    so that the file reads as one uninterrupted run."""

    def __init__(self, path: Path, keep_until: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if keep_until and path.is_file():
            with path.open(newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= keep_until]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, LOG_COLUMNS).writerow(row)


def save_checkpoint(accelerator, out: Path, step: int, plan: BatchPlan, keep: int) -> Path:
    """Write checkpoints/step-NNNNNN atomically: everything goes into a temporary folder renamed into place, so a kill
    mid-save leaves the previous checkpoint as the latest complete one."""
    final = out / CHECKPOINTS / f"step-{step:06d}"
    partial = out / CHECKPOINTS / f".partial-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # weights, optimizer, scheduler, RNG states of every process
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        epoch, index = plan.position(step)
        state = {"step": step, "epoch": epoch, "batch_in_epoch": index, "steps_per_epoch": plan.steps_per_epoch}
        (partial / "trainer_state.json").write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        older = sorted(p for p in (out / CHECKPOINTS).glob("step-*") if p != final)
        for stale in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --- export ------------------------------------------------------------------------------------------------------------


def export(accelerator, emb, out: Path, base_path: str, args: TrainArguments, instructions: bool = True) -> None:
    """adapter/ (LoRA only) and merged/ (a sentence-transformers directory), each with synthembed_config.json.

    `instructions` says whether training queries carried a task instruction. It is recorded (evaluation's "auto" mode
    reads it), and without instructions the exported query prompt is empty, so that queries are embedded as trained.

    The merged model is rebuilt from the saved adapter on the main process, so it comes out the same whether training
    ran on one device or sharded (ZeRO-3, FSDP), where the live model holds only shards.
    """
    import torch
    from peft import PeftModel

    from ..model import Embedder, load_embedder

    model = accelerator.unwrap_model(emb.model)
    state = accelerator.get_state_dict(emb.model)  # the full state dict, gathered from shards (a collective)
    if not accelerator.is_main_process:
        return
    settings = {
        **Embedder.settings(emb),
        "base_model": str(base_path),
        "instructions": bool(instructions),
        "query_task": args.query_task if instructions else None,
        "lora_rank": None if args.no_lora else args.lora_rank,
    }
    dtype = next(model.parameters()).dtype
    if isinstance(model, PeftModel):
        adapter = out / "adapter"
        model.save_pretrained(adapter, state_dict=state)
        emb.tokenizer.save_pretrained(adapter)
        write_model_config(adapter, settings)
        merged = load_embedder(str(adapter), device="cpu", dtype=dtype if dtype != torch.float16 else torch.float32)
        write_sentence_transformers(merged.model.merge_and_unload(), emb.tokenizer, out / "merged", settings)
    else:
        write_sentence_transformers(model, emb.tokenizer, out / "merged", settings, state_dict=state)
    print(f"[train] exported {'adapter/ and ' if (out / 'adapter').is_dir() else ''}merged/ to {out}")


_ST_POOLING_KEYS = {
    "last": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
    "weighted-mean": "pooling_mode_weightedmean_tokens",
    "cls": "pooling_mode_cls_token",
}


def write_sentence_transformers(model, tokenizer, directory: Path, settings: dict[str, Any], state_dict=None) -> Path:
    """Save a plain transformers model as a sentence-transformers directory that embeds exactly like our Embedder:
    Transformer -> Pooling (our mode) -> Normalize, the query prompt `Instruct: {task}\\nQuery: `, and, for decoder-only
    models, a tokenizer whose post-processor appends EOS itself (sentence-transformers has no other way to add it).

    The tokenizer then already ends every text with EOS, so synthembed_config.json says append_eos false here; the
    token sequence is the same as in training (BOS, text truncated to max_len - 2, EOS).
    """
    import copy

    from ..data import format_query

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, state_dict=state_dict)
    tokenizer = copy.deepcopy(tokenizer)
    settings = dict(settings)
    if settings.get("append_eos"):
        _append_eos_in_tokenizer(tokenizer)
        settings["append_eos"] = False
        settings["eos_in_tokenizer"] = True
    tokenizer.save_pretrained(directory)
    dimension = int(model.config.hidden_size)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    pooling = {"word_embedding_dimension": dimension, **{key: False for key in _ST_POOLING_KEYS.values()}}
    pooling.update({"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True})
    pooling[_ST_POOLING_KEYS[settings["pooling"]]] = True
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": int(settings["max_len"]), "do_lower_case": False}, indent=2)
    )
    st_config = {
        "prompts": {"query": format_query(settings.get("query_task"), ""), "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    write_model_config(directory, settings)
    return directory


def _append_eos_in_tokenizer(tokenizer) -> None:
    """Make a fast tokenizer end every text with EOS through its post-processor (truncation then leaves room for it)."""
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    probe = tokenizer("x")["input_ids"]
    starts_with_bos = bos is not None and probe and probe[0] == tokenizer.bos_token_id
    single = (f"{bos} $A {eos}" if starts_with_bos else f"$A {eos}")
    special = [(eos, tokenizer.eos_token_id)] + ([(bos, tokenizer.bos_token_id)] if starts_with_bos else [])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=f"{single} $B:1 {eos}:1", special_tokens=special
    )


# --- notebook helpers --------------------------------------------------------------------------------------------------


def train_or_resume(args: TrainArguments, on_step=None) -> Path:
    """Train into args.out; continue from its latest checkpoint when one is there; reuse it as is when its export is
    complete. Lets a notebook be re-run over the same run directory without refusing or repeating finished work."""
    out = Path(args.out)
    if read_model_config(out / "merged") is not None:
        print(f"[train] {out} already holds a finished run; reusing it")
        return out
    return train(dataclasses.replace(args, resume=latest_checkpoint(out) is not None), on_step=on_step)
