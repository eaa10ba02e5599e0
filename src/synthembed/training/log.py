"""train_log.csv: one row per logged optimizer step, written by the training loop and read back here (its only owner),
with the summary notebook 03 shows and records.

    from synthembed.training.log import log_summary
    log_summary("runs/interactive/train/minilm")   # {"steps": 24, "first loss": 2.1, "last loss": 1.4, ...}
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

LOG = "train_log.csv"
LOG_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "pairs_per_s", "tokens_per_s", "elapsed_s")


class TrainLog:
    """Appends rows to train_log.csv; on resume, rows past the checkpoint (written before a crash) are dropped so that
    the file reads as one uninterrupted run. Only the main process writes (`enabled`)."""

    def __init__(self, out: Path, keep_until: int, enabled: bool):
        self.path, self.enabled = Path(out) / LOG, enabled
        if not enabled:
            return
        kept = []
        if keep_until and self.path.is_file():
            with self.path.open(newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= keep_until]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, LOG_COLUMNS).writerow(row)


def read_train_log(out: str | Path) -> list[dict[str, float]]:
    """The rows of `out`/train_log.csv, numbers as floats (step as int).

    >>> read_train_log("runs/interactive/train/minilm")[0]["loss"]  # doctest: +SKIP
    2.0794
    """
    with (Path(out) / LOG).open(newline="") as handle:
        return [{k: int(v) if k == "step" else float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def log_summary(out: str | Path, window: int = 3) -> dict[str, float]:
    """A run's log in four numbers: steps done, the mean loss of the first and of the last `window` logged steps, and
    the median tokens per second."""
    rows = read_train_log(out)
    losses = [r["loss"] for r in rows]
    return {
        "steps": int(rows[-1]["step"]),
        "first loss": statistics.fmean(losses[:window]),
        "last loss": statistics.fmean(losses[-window:]),
        "tokens/s (median)": statistics.median(r["tokens_per_s"] for r in rows),
    }


def training_summary(
    train_dir: str | Path,
    pairs: int,
    synthetic_used: bool,
    similarities: dict[str, dict[str, float]],
    st_max_abs_diff: dict[str, float],
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Notebook 03's numbers, as tests/test_train_notebook.py reads them back: the training pairs, and per model (each
    a run folder `train_dir`/<name>) its log summary, its query-document similarities before and after training, how
    far sentence-transformers' embeddings of the export are from ours, where the adapter and merged model are, and
    which data it trained on (`data`: its setting, e.g. "curated")."""
    numbers: dict[str, Any] = {"pairs": pairs, "synthetic_used": synthetic_used}
    for name, shift in similarities.items():
        out = Path(train_dir) / name
        numbers[name] = {
            **log_summary(out), **shift, "st_max_abs_diff": st_max_abs_diff[name],
            "merged": str(out / "merged"), "adapter": str(out / "adapter"),
            **({"data": data[name]} if data and name in data else {}),
        }  # fmt: skip
    return numbers
