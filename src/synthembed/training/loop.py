"""The training loop: InfoNCE over in-batch and hard negatives, LoRA through peft, accelerate underneath (one CPU or GPU,
DDP, DeepSpeed ZeRO-3, FSDP). `synthembed train` (training/commands.py) runs it.

    from synthembed.training.args import TrainArguments
    from synthembed.training.loop import train
    out = train(TrainArguments(data=["examples.jsonl"], base_model="...", out="runs/m", max_steps=10))

One step: this process's share of the global batch (BatchPlan) goes through CachedInfoNCE, which embeds it in
mini-batches (or, with one mini-batch, is the plain loss), the gradients are clipped, AdamW and the schedule step.
`--out` ends up holding:

    checkpoints/step-000100/   optimizer, scheduler, RNG states, weights and the data position (`--resume` continues)
    train_log.csv              step, loss, learning rate, gradient norm, pairs/s and tokens/s per step
    adapter/                   the LoRA adapter (peft), loadable by synthembed's load_embedder
    merged/                    LoRA merged into the base: a sentence-transformers directory (pooling, prompts, EOS)
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SynthembedError
from ..files import folder_lock, write_json_atomic
from ..model_config import read_model_config
from ..paths import local_folder_name
from .args import TrainArguments, changed_settings, check_arguments, check_batch_sizes, recorded_settings
from .checkpoint import ARGS, DATA, check_out, latest_checkpoint, read_settings, resume_checkpoint, save_checkpoint
from .data import BatchPlan, batch_texts, in_batch_flags, training_pairs
from .export import export
from .log import TrainLog

if TYPE_CHECKING:
    from ..losses import CachedInfoNCE


def train(args: TrainArguments, on_step: Callable[[int, float], Any] | None = None) -> Path:
    """Train as `args` says; returns --out. `on_step(step, loss)` is called after every optimizer step (1-based).
    One training run at a time works in --out: another one there is refused, naming it (files.folder_lock)."""
    out = Path(args.out).expanduser()
    check_arguments(args)
    # The processes of one multi-process run share --out: the first (global rank 0) holds it for all of them.
    with folder_lock(out, "synthembed train", enabled=os.environ.get("RANK", "0") == "0"):
        return _train(args, out, on_step)


def _train(args: TrainArguments, out: Path, on_step: Callable[[int, float], Any] | None) -> Path:
    from accelerate.utils import DistributedType, set_seed

    from ..losses import CachedInfoNCE  # torch: imported once a run starts, not by `synthembed train --help`

    resume, restart = check_out(out, args)
    # A restarted run reuses the negatives its first start mined only if it was started with these same settings.
    recorded = read_settings(out) if restart else None
    fresh_data = restart and (recorded is None or bool(changed_settings(recorded, args)))
    accelerator, bf16 = _accelerator(args.bf16)
    if restart:
        accelerator.print(f"[train] {out} holds no checkpoint yet (its run stopped before the first save): starting "
                          "it again from step 0")  # fmt: skip
    per_process, mini = check_batch_sizes(args.batch_size, args.mini_batch_size, accelerator.num_processes)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed and mini != per_process:
        raise SynthembedError(
            "--mini-batch-size: the cached loss backpropagates outside DeepSpeed's engine; under DeepSpeed use a "
            f"mini-batch equal to the per-process batch ({per_process}) and let ZeRO-3 and checkpointing save memory"
        )
    set_seed(args.seed)

    mined: dict[str, Any] = {}
    pairs = training_pairs(args, cache_dir=None if fresh_data else out / DATA, mined=mined)
    plan = BatchPlan(pairs, args.batch_size, seed=args.seed, group_by_task_type=args.group_by_task_type)
    total_steps = args.max_steps or max(1, math.floor(plan.steps_per_epoch * args.epochs))

    emb, base_path = _load_model(args, accelerator.device, bf16)
    trainable, total = trainable_parameters(emb.model)  # before prepare: ZeRO-3 leaves each process a shard
    optimizer = _optimizer(emb.model, args.lr, args.weight_decay)
    scheduler = _schedule(optimizer, args.warmup_steps, total_steps)
    if deepspeed:  # there is no DataLoader for accelerate to read the micro-batch size from
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = per_process
    model, optimizer, scheduler = accelerator.prepare(emb.model, optimizer, scheduler)
    emb.model = model
    start = _open_out(accelerator, out, args, resume, mined, fresh_data)

    embed = _CountingEmbed(emb, accelerator.autocast)
    loss = CachedInfoNCE(
        embed, mini_batch_size=mini, temperature=args.temperature, gather=accelerator.num_processes > 1,
        no_sync=lambda: accelerator.no_sync(model), backward=accelerator.backward,  # DeepSpeed's engine runs backward
    )  # fmt: skip
    accelerator.print(
        f"[train] {len(pairs)} pairs, {plan.steps_per_epoch} steps per epoch, {total_steps} steps; batch {args.batch_size} "
        f"({per_process} per process, mini-batch {mini}); {trainable:,} of {total:,} parameters train; "
        f"{accelerator.num_processes} process(es) on {accelerator.device}"
    )
    warning = warmup_warning(args.warmup_steps, total_steps, args.lr)
    if warning:
        accelerator.print(warning)
    steps = _Steps(accelerator, model, optimizer, scheduler, loss, embed, plan, per_process)
    steps.run(args, out, start, total_steps, on_step)

    if not args.no_export:
        # Whether queries carried `Instruct: ...` in training decides how the export is evaluated and prompted.
        export(
            accelerator, emb, out, base_path=base_path, query_task=args.query_task,
            lora_rank=None if args.no_lora else args.lora_rank, instructions=any(p.instructed for p in pairs),
        )  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def train_or_resume(args: TrainArguments, on_step=None) -> Path:
    """Train into args.out; continue from its latest checkpoint when one is there; reuse it as is when its export is
    complete. Lets a notebook be re-run over the same run directory without refusing or repeating finished work."""
    out = Path(args.out)
    if read_model_config(out / "merged") is not None:
        print(f"[train] {out} already holds a finished run; reusing it")
        return out
    return train(dataclasses.replace(args, resume=latest_checkpoint(out) is not None), on_step=on_step)


# --- setting up --------------------------------------------------------------------------------------------------------


def _accelerator(bf16_setting: str):
    """(accelerate's Accelerator, whether to train in bf16) for this machine and launch."""
    import torch
    from accelerate import Accelerator

    on_gpu = torch.cuda.is_available()
    sharded = [name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
               if os.environ.get(var, "").lower() == "true"]  # fmt: skip
    if sharded and not on_gpu:  # accelerate's plugins refuse CPU deep inside; say what works instead
        raise SynthembedError(
            f"{sharded[0]} (from the launch config) needs CUDA devices and none is visible; on CPU launch several "
            "processes with DDP instead: torchrun --standalone --nproc_per_node N -m synthembed.cli train ..."
        )
    bf16 = bf16_setting == "yes" or (bf16_setting == "auto" and on_gpu)
    # --batch-size is global and the schedule counts optimizer steps: without step_scheduler_with_optimizer=False,
    # accelerate would step the scheduler once per process per optimizer step (its per-process-batch convention),
    # running the warm-up and decay num_processes times too fast.
    accelerator = Accelerator(
        mixed_precision="bf16" if bf16 else "no", cpu=not on_gpu, step_scheduler_with_optimizer=False
    )
    return accelerator, bf16


def _load_model(args: TrainArguments, device, bf16: bool):
    """(the Embedder in training mode, with checkpointing and LoRA as `args` say; the base model's path or id)."""
    import torch

    from ..model import load_embedder

    # Frozen base weights can sit in bf16 on GPU; a full fine-tune keeps fp32 masters and autocasts.
    dtype = torch.bfloat16 if (bf16 and not args.no_lora) else torch.float32
    emb = load_embedder(args.base_model, pooling=args.pooling, max_len=args.max_len, device=device, dtype=dtype)
    base_path = base_model_record(args.base_model, emb.model.config._name_or_path)
    if args.gradient_checkpointing:
        enable_checkpointing(emb.model)
    if not args.no_lora:
        emb.model = add_lora(emb.model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    emb.model.train()
    return emb, str(base_path)


def base_model_record(base_model: str, loaded_from: str | None) -> str:
    """How the export names its base model. A hub id that resolved to a get-models copy stays the id (the export then
    loads on any machine that has the model); a local folder is made absolute (a relative one would load only from
    the directory training ran in); otherwise where transformers loaded it from.

    >>> base_model_record("HuggingFaceTB/SmolLM2-135M-Instruct", "/root/.cache/synthembed/models/smollm2-135m-instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    if local_folder_name(base_model):
        return base_model
    if Path(base_model).expanduser().is_dir():
        return str(Path(base_model).expanduser().resolve())
    return str(loaded_from or base_model)


def enable_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant, which LoRA's frozen inputs need). transformers 5 renamed
    gradient checkpointing to activation checkpointing; the old name warns and goes in v6."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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


def warmup_warning(warmup_steps: int, total_steps: int, lr: float) -> str | None:
    """A warning when the warm-up does not fit the run: the paper's 100 warm-up steps suit its ~1k steps, but a short
    run (a CPU study, a smoke test) with the same default never reaches --lr and barely trains.

    >>> warmup_warning(100, 10, 2e-4)[:60]
    '[train] warning: --warmup-steps 100 is not shorter than the '
    >>> warmup_warning(100, 1000, 1e-4) is None
    True
    """
    if warmup_steps < total_steps:
        return None
    peak = lr * _lr_factor(total_steps - 1, warmup_steps, total_steps)  # still warming up at the last step
    return (
        f"[train] warning: --warmup-steps {warmup_steps} is not shorter than the run's {total_steps} steps; the "
        f"learning rate peaks at {peak:.3g}, not --lr {lr:g} (pass --warmup-steps about {max(1, total_steps // 10)})"
    )


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to the peak, then linear decay to 0 at the last step (the paper's schedule); step is 0-based."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _schedule(optimizer, warmup_steps: int, total_steps: int):
    """The learning-rate schedule of _lr_factor as a torch scheduler."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup_steps, total_steps))


def _open_out(
    accelerator, out: Path, args: TrainArguments, resume: bool, mined: dict[str, Any], fresh_data: bool
) -> int:
    """Create --out, record the settings in train_args.json (a new run) and put the newly mined negatives in it, then
    resume from its latest checkpoint where `resume`; returns the number of steps already done. train_args.json comes
    first: an --out with it and no checkpoint is a run stopped early, which check_out lets start again."""
    if accelerator.is_main_process:  # only now, with settings checked and data and model loaded, is anything written
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json_atomic(out / ARGS, recorded_settings(args))
        if fresh_data:  # negatives mined under other settings by a start that never saved a checkpoint
            shutil.rmtree(out / DATA, ignore_errors=True)
        for name, negatives in mined.items():
            write_json_atomic(out / DATA / name, negatives)
    accelerator.wait_for_everyone()
    if resume:
        return resume_checkpoint(accelerator, out)  # weights, optimizer, scheduler and every RNG state
    return 0


# --- the steps ---------------------------------------------------------------------------------------------------------


class _CountingEmbed:
    """texts -> (b, D) through the Embedder under accelerate's autocast, counting the tokens of the passes that build a
    graph: each text once a step, whether the loss caches (its first pass runs without a graph) or not."""

    def __init__(self, emb, autocast):
        self.emb, self.autocast, self.tokens = emb, autocast, 0

    def __call__(self, texts: list[str]):
        import torch

        batch = self.emb.tokenize(texts)
        if torch.is_grad_enabled():
            self.tokens += int(batch["attention_mask"].sum())
        with self.autocast():
            return self.emb.embed(batch)  # (b, D)


@dataclasses.dataclass
class _Steps:
    """The optimizer steps of one run, over the prepared model, optimizer and schedule."""

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loss: CachedInfoNCE  # over `embed`
    embed: _CountingEmbed
    plan: BatchPlan
    per_process: int

    def run(self, args: TrainArguments, out: Path, start: int, total_steps: int, on_step=None) -> None:
        """Steps start+1 .. total_steps: each logged, checkpointed every --save-every steps and at the end."""
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        log = TrainLog(out, keep_until=start, enabled=accelerator.is_main_process)
        show = args.progress and accelerator.is_local_main_process
        bar = tqdm(total=total_steps, initial=start, desc="train", disable=not show)
        began = time.perf_counter()
        for step in range(start, total_steps):
            t0 = time.perf_counter()
            loss, grad_norm, lr = self.step(step, args.no_in_batch_negatives_for, args.max_grad_norm)
            seconds = time.perf_counter() - t0
            done = step + 1
            if done % args.log_every == 0 or done == total_steps:
                log.write(
                    step=done, epoch=round(done / self.plan.steps_per_epoch, 4), loss=loss, lr=lr, grad_norm=grad_norm,
                    pairs_per_s=args.batch_size / seconds,
                    tokens_per_s=self.embed.tokens * accelerator.num_processes / seconds,
                    elapsed_s=time.perf_counter() - began,
                )  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if (args.save_every and done % args.save_every == 0) or done == total_steps:
                position = self.plan.position(done)
                save_checkpoint(accelerator, out, done, position, self.plan.steps_per_epoch, args.keep_checkpoints)
            if on_step is not None:
                on_step(done, loss)
        bar.close()

    def step(self, step: int, no_in_batch_negatives_for: list[str] | None, max_grad_norm: float):
        """One optimizer step on this process's rows of global batch `step`: (loss, gradient norm, learning rate)."""
        rank = self.accelerator.process_index
        rows = self.plan.batch(step)[rank * self.per_process : (rank + 1) * self.per_process]
        queries, positives, negatives = batch_texts(rows)
        in_batch = in_batch_flags(rows, no_in_batch_negatives_for)  # (b,) or None: in-batch for all
        self.embed.tokens = 0
        loss = self.loss.step(queries, positives, negatives, in_batch_negatives=in_batch)
        grad_norm = float("nan")
        if max_grad_norm > 0:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, lr
