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

# The paper's Figure 2 shares, for drawing beside a run's: task groups (thousands of examples) and languages.
PAPER_TASK_TYPE_COUNTS = {"short-long": 167, "long-short": 122, "sts": 99, "bitext": 89, "long-long": 17, "short-short": 13}


def plot_language_weights(weights: dict[str, float], top: int = 20, path=None):
    """The sampling weight of the `top` most likely languages and of all the others together (PAPER.md, Figure 2)."""
    items = sorted(weights.items(), key=lambda kv: -kv[1])
    shown, rest = items[:top], items[top:]
    labels = [k for k, _ in shown] + ([f"{len(rest)} others"] if rest else [])
    values = [v for _, v in shown] + ([sum(v for _, v in rest)] if rest else [])
    fig, ax = new_figure(8, 3.8)
    ax.bar(range(len(values)), [100 * v for v in values], color="tab:blue")
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("sampling weight (%)")
    ax.set_title("Language sampling weights (the paper's shares)")
    return save(fig, path)


def plot_task_type_distribution(stats: dict, path=None):
    """Accepted examples per task group beside the paper's shares (Figure 2, left)."""
    groups = list(stats["by_task_type"])
    ours = [stats["by_task_type"][g]["accepted"] for g in groups]
    total = max(1, sum(ours))
    paper_total = sum(PAPER_TASK_TYPE_COUNTS[g] for g in groups) or 1
    fig, ax = new_figure(7, 3.6)
    x = range(len(groups))
    ax.bar([i - 0.2 for i in x], [100 * v / total for v in ours], width=0.4, label=f"this run ({sum(ours)} examples)")
    ax.bar([i + 0.2 for i in x], [100 * PAPER_TASK_TYPE_COUNTS[g] / paper_total for g in groups], width=0.4,
           label="paper (500k examples)", color="tab:gray")
    ax.set_xticks(list(x), groups)
    ax.set_ylabel("share of examples (%)")
    ax.set_title("Examples by task group" + (" (loopback stand-in LLM)" if stats.get("llm", {}).get("stand_in") else ""))
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_language_distribution(stats: dict, top: int = 20, path=None):
    """Accepted examples per language, the `top` languages and the rest together (Figure 2, right)."""
    items = sorted(stats["by_language"].items(), key=lambda kv: -kv[1])
    shown, rest = items[:top], items[top:]
    labels = [k for k, _ in shown] + ([f"{len(rest)} others"] if rest else [])
    values = [v for _, v in shown] + ([sum(v for _, v in rest)] if rest else [])
    total = max(1, sum(values))
    fig, ax = new_figure(8, 3.6)
    ax.bar(range(len(values)), [100 * v / total for v in values], color="tab:green")
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("share of examples (%)")
    ax.set_title("Examples by language" + (" (loopback stand-in LLM)" if stats.get("llm", {}).get("stand_in") else ""))
    return save(fig, path)


def plot_rejections(stats: dict, path=None):
    """Rejected outputs by reason (parse failures, validation, duplicates, refusals, truncation)."""
    reasons = dict(stats.get("rejections", {}))
    fig, ax = new_figure(7, 3.4)
    if reasons:
        names = sorted(reasons, key=lambda k: -reasons[k])
        ax.barh(names[::-1], [reasons[n] for n in names][::-1], color="tab:red")
        ax.set_xlabel("rejected outputs")
    else:
        ax.text(0.5, 0.5, "no rejections", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"Rejections ({stats.get('accepted', 0)} accepted, {stats.get('rejected', 0)} rejected)")
    return save(fig, path)


def generation_plots(stats: dict, out_dir) -> list[Path]:
    """The three generation plots of a run's stats.json, as PNG files in `out_dir` (`synthembed stats --plots`)."""
    out_dir = Path(out_dir)
    paths = [out_dir / "task_types.png", out_dir / "languages.png", out_dir / "rejections.png"]
    for draw, path in zip((plot_task_type_distribution, plot_language_distribution, plot_rejections), paths, strict=True):
        plt.close(draw(stats, path=path))
    return paths


# --- training (notebook 03) --------------------------------------------------------------------------------------


# --- evaluation (notebook 04) ------------------------------------------------------------------------------------


# --- multilingual (notebook 05) ----------------------------------------------------------------------------------


# --- long context (notebook 06) ----------------------------------------------------------------------------------


def _length_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def plot_passkey_heatmap(table, path=None, title: str = "Passkey retrieval, top-1 accuracy (%)"):
    """Heat map of a passkey accuracy table: settings as rows, lengths (tokens) as columns, values in %.

    >>> plot_passkey_heatmap(grid.table(), "runs/passkey/heatmap.png")  # doctest: +SKIP
    """
    import numpy as np

    values = table.to_numpy(dtype=float)  # (settings, lengths); NaN where a length did not fit
    fig, ax = new_figure(1.2 + 0.9 * values.shape[1], 1.2 + 0.5 * values.shape[0])
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [_length_label(int(c)) for c in table.columns])
    ax.set_yticks(range(values.shape[0]), list(table.index))
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if np.isnan(v) else f"{v:.0f}"
        ax.text(j, i, text, ha="center", va="center", color="white" if np.isnan(v) or v < 60 else "black", fontsize=9)
    ax.set_xlabel("document length (tokens)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="top-1 accuracy (%)")
    return save(fig, path)


def plot_passkey_lines(
    table, paper=None, path=None, chance: float | None = None, title: str = "Passkey retrieval by length (cf. Figure 5)"
):
    """Accuracy (%) against length, one solid line per setting; the paper's points (dashed, x) and bands beside them.

    `paper` maps a setting label to {"points": {length: %}, "band": (low, high)} (synthembed.passkey.PAPER_FIGURE5);
    a label that matches one of ours shares its colour. `chance` (a fraction) draws the chance level.
    """
    fig, ax = new_figure(7.5, 4.2)
    colors = {}
    for label, row in table.iterrows():
        (line,) = ax.plot([int(c) for c in table.columns], row.to_numpy(dtype=float), marker="o", label=f"ours: {label}")
        colors[label] = line.get_color()
    lengths = [int(c) for c in table.columns]
    for label, entry in (paper or {}).items():
        color = colors.get(label)
        points = sorted(entry.get("points", {}).items())
        if points:
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], linestyle="--", marker="x", color=color,
                              label=f"paper: {label}")  # fmt: skip
            color = line.get_color()
        if entry.get("band"):
            span = lengths or [256, 32768]
            low, high = entry["band"]
            ax.fill_between([min(span + [256]), max(span + [32768])], low, high, color=color, alpha=0.12,
                            label=f"paper: {label} (range)")  # fmt: skip
    if chance is not None:
        ax.axhline(100 * chance, color="gray", linewidth=0.8, linestyle=":", label=f"chance ({100 * chance:.0f}%)")
    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths) | {n for e in (paper or {}).values() for n in e.get("points", {})})
    ax.set_xticks(ticks, [_length_label(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(fig, path)
