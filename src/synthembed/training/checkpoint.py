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

from ..errors import SynthembedError

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"


def check_out(out: Path, resume: bool) -> None:
    """Never overwrite: a non-empty --out needs --resume; --resume needs a checkpoint there."""
    if resume:
        if latest_checkpoint(out) is None:
            raise SynthembedError(f"--resume: {out} holds no checkpoint ({out / CHECKPOINTS}/step-*) to resume from")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthembedError(
            f"--out {out} is not empty; pass --resume to continue its training, or choose a new directory"
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
