"""Checkpoints of a training run: saved atomically every --save-every steps, found again, and resumed exactly.

    out/checkpoints/step-000100/   weights, optimizer, scheduler, every process's RNG states (accelerate's save_state)
                                   and trainer_state.json: the step, which is also the data position (BatchPlan)

    from synthembed.training.checkpoint import latest_checkpoint
    latest_checkpoint("runs/model")          # Path(".../checkpoints/step-000100") or None
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import StorageError, SynthembedError, writing
from ..files import check_writable, folder_entries
from .args import RESUMABLE_SETTINGS, TrainArguments, changed_settings, option
from .log import LOG

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
ARGS = "train_args.json"  # the settings, written when a run starts
DATA = "data"  # mined negatives, written when a run starts
# What a run writes before its first checkpoint: an --out holding only these was stopped (or refused a setting) before
# it saved anything, and starts again from step 0 rather than blocking both a rerun and --resume.
STARTED_FILES = frozenset({ARGS, LOG, DATA, CHECKPOINTS})


def check_out(out: Path, args: TrainArguments) -> tuple[bool, bool]:
    """(resume from a checkpoint, start again over a run that never saved one), or a SynthembedError. Never overwrites
    a run that has a checkpoint: that needs --resume, with the settings it was started with (train_args.json) except
    those RESUMABLE_SETTINGS names. --resume needs a started run in --out."""
    check_writable(out, "--out")
    if latest_checkpoint(out) is not None:
        if not args.resume:
            raise SynthembedError(
                f"--out {out} is not empty; pass --resume to continue its training, or choose a new directory"
            )
        _check_same_settings(out, args)
        return True, False
    if _started_without_checkpoint(out):
        return False, True
    if args.resume:
        raise SynthembedError(f"--resume: {out} holds no checkpoint ({out / CHECKPOINTS}/step-*) to resume from")
    if out.exists() and (not out.is_dir() or folder_entries(out)):
        raise SynthembedError(
            f"--out {out} is not empty and holds no run of `synthembed train`; choose a new directory"
        )
    return False, False


def _started_without_checkpoint(out: Path) -> bool:
    """--out holds what a run writes at its start and no complete checkpoint (only unfinished .partial-* ones)."""
    if not out.is_dir() or not (out / ARGS).is_file():
        return False
    return all(entry.name in STARTED_FILES for entry in folder_entries(out))


def read_settings(out: Path) -> dict | None:
    """The settings --out's run started with (train_args.json), or None where there are none or they are unreadable."""
    try:
        return json.loads((out / ARGS).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _check_same_settings(out: Path, args: TrainArguments) -> None:
    recorded = read_settings(out)
    if recorded is None:  # a run from before train_args.json was kept: nothing to compare against
        return
    changed = changed_settings(recorded, args)
    if changed:
        allowed = ", ".join(option(name) for name in sorted(RESUMABLE_SETTINGS - {"out", "resume", "progress"}))
        raise SynthembedError(
            f"--resume: {out} was started with other settings ({out / ARGS}): {'; '.join(changed)}. Resume with the "
            f"same settings (only {allowed} may change), or train into a new --out"
        )


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint (a folder is renamed into place only once fully written)."""
    root = Path(out) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / STATE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(accelerator, out: Path, step: int, position: tuple[int, int], steps_per_epoch: int, keep: int) -> Path:
    """Write checkpoints/step-NNNNNN atomically: everything goes into a temporary folder renamed into place, so a kill
    mid-save leaves the previous checkpoint as the latest complete one. `position` is (epoch, batch within it); the
    `keep` most recent checkpoints stay."""
    final = out / CHECKPOINTS / f"step-{step:06d}"
    partial = out / CHECKPOINTS / f".partial-step-{step:06d}"
    try:
        with writing(partial, "checkpoint"):  # safetensors and torch.save report a full disk in their own words
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(partial))  # weights, optimizer, scheduler, RNG states of every process
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                epoch, index = position
                state = {"step": step, "epoch": epoch, "batch_in_epoch": index, "steps_per_epoch": steps_per_epoch}
                (partial / STATE).write_text(json.dumps(state, indent=2))
    except StorageError as err:
        shutil.rmtree(partial, ignore_errors=True)  # the half-written one gives its space back
        last = latest_checkpoint(out)
        kept = (f"{last.name} is the latest complete checkpoint: --resume continues from it" if last
                else "there is no complete checkpoint yet: a rerun starts again")  # fmt: skip
        raise StorageError(f"{err}; {kept}", err.errno, err.filename) from None
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        older = sorted(p for p in (out / CHECKPOINTS).glob("step-*") if p != final)
        for stale in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_checkpoint(accelerator, out: Path) -> int:
    """Load the latest checkpoint into the prepared model, optimizer and scheduler (and every RNG state); returns the
    number of optimizer steps it had done, where training continues."""
    checkpoint = latest_checkpoint(out)
    accelerator.load_state(str(checkpoint))
    step = json.loads((checkpoint / STATE).read_text())["step"]
    accelerator.print(f"[train] resuming from {checkpoint} at step {step}")
    return step
