"""Every figure the notebooks show. Each function takes plain data (dicts, lists, DataFrames), returns the matplotlib
Figure, and saves it when given a path, so the CLI (`synthembed stats --plots DIR`) and the notebooks draw the same plots.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget"):
    matplotlib.use("Agg")  # headless by default; Jupyter keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: str | Path | None):
    """Save `fig` to `path` (parents created) when a path is given; returns the figure."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def new_figure(width: float = 7.0, height: float = 4.0):
    fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax


# --- generation (notebooks 01, 02) -------------------------------------------------------------------------------


# --- training (notebook 03) --------------------------------------------------------------------------------------


# --- evaluation (notebook 04) ------------------------------------------------------------------------------------


# --- multilingual (notebook 05) ----------------------------------------------------------------------------------


# --- long context (notebook 06) ----------------------------------------------------------------------------------
