"""Every figure the notebooks show. Each function takes plain data (dicts, lists, DataFrames), returns the matplotlib
Figure, and saves it when given a path, so the CLI (`synthembed stats --plots DIR`) and the notebooks draw the same plots.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget"):
    matplotlib.use("Agg")  # headless by default; Jupyter keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402

from .reference import PAPER_EXAMPLES_BY_GROUP  # noqa: E402


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


def plot_language_weights(weights: dict[str, float], top: int = 20, path=None):
    """The sampling weight of the `top` most likely languages and of all the others together (docs/paper.md, section 2: Figure 2)."""
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
    paper_total = sum(PAPER_EXAMPLES_BY_GROUP[g] for g in groups) or 1
    fig, ax = new_figure(7, 3.6)
    x = range(len(groups))
    ax.bar([i - 0.2 for i in x], [100 * v / total for v in ours], width=0.4, label=f"this run ({sum(ours)} examples)")
    ax.bar([i + 0.2 for i in x], [100 * PAPER_EXAMPLES_BY_GROUP[g] / paper_total for g in groups], width=0.4,
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


def plot_score_margins(scores: list[dict], margin: float | None = 0.0, path=None):
    """Histogram of positive-minus-negative cosines per task group (curation's scores.jsonl rows); left of the dashed
    line the negative outscores the positive by more than `margin` and the example was dropped as a false negative."""
    groups: dict[str, list[float]] = {}
    for row in scores:
        if row.get("margin") is not None:
            groups.setdefault(row["task_type"], []).append(row["margin"])
    fig, ax = new_figure(7, 3.6)
    ax.hist(list(groups.values()) or [[]], bins=30, stacked=True, label=list(groups) or None)
    if margin is not None:
        ax.axvline(-margin, color="black", linestyle="--", label=f"drop below {-margin + 0:g}")
    ax.set_xlabel("cos(query, positive) - cos(query, negative)")
    ax.set_ylabel("examples")
    ax.set_title("Score margins of the hard negatives")
    ax.legend(fontsize=8)
    return save(fig, path)


# --- training (notebook 03) --------------------------------------------------------------------------------------


def plot_training_log(log, path: str | Path | None = None, title: str = "training"):
    """Loss per step (raw and a moving average) with the learning rate on a second axis, and throughput beside it.

    `log` is train_log.csv as a DataFrame or its path (columns step, loss, lr, tokens_per_s, ...).

    >>> fig = plot_training_log("runs/interactive/train/tiny/train_log.csv")  # doctest: +SKIP
    """
    import pandas as pd

    frame = pd.read_csv(log) if isinstance(log, str | Path) else pd.DataFrame(log)
    fig, (ax, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    ax.plot(frame["step"], frame["loss"], color="tab:blue", alpha=0.35, label="loss")
    window = max(1, len(frame) // 10)
    ax.plot(frame["step"], frame["loss"].rolling(window, min_periods=1).mean(), color="tab:blue",
            label=f"loss, mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title(title)
    lr_ax = ax.twinx()
    lr_ax.plot(frame["step"], frame["lr"], color="tab:orange", linestyle="--", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    more = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    right.plot(frame["step"], frame["tokens_per_s"], color="tab:green")
    right.set_xlabel("step")
    right.set_ylabel("tokens / s")
    right.set_title("throughput")
    fig.tight_layout()
    return save(fig, path)


def plot_similarity_shift(before, after, labels: list[str] | None = None, path: str | Path | None = None):
    """Query-document cosine similarities before and after training, side by side (rows: queries, columns: documents;
    the diagonal holds each query's own positive)."""
    import numpy as np

    before, after = np.asarray(before), np.asarray(after)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    low, high = float(min(before.min(), after.min())), float(max(before.max(), after.max()))
    for ax, matrix, name in zip(axes, (before, after), ("before training", "after training"), strict=True):
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("document (positive of query j)")
        ax.set_ylabel("query")
        if labels:
            ax.set_yticks(range(len(labels)), [label[:30] for label in labels], fontsize=7)
    fig.colorbar(image, ax=axes, fraction=0.025, label="cosine similarity")
    return save(fig, path)


# --- evaluation (notebook 04) ------------------------------------------------------------------------------------


def _grouped_bars(ax, labels: list[str], series: dict[str, list[float | None]], hatched: set[str] = frozenset()):
    """Bars grouped per label, one colour per series; missing values leave a gap; hatched series are published numbers."""
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else float(v) for v in values]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name,
                      hatch="//" if name in hatched else None, alpha=0.6 if name in hatched else 1.0)
        for bar, value in zip(bars, heights, strict=True):
            if not np.isnan(value):
                ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                            fontsize=7, rotation=90 if len(series) * len(labels) > 12 else 0)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar


def plot_task_scores(table, path=None, title: str = "Main score per task (x100), ours beside published"):
    """Bars per task from `synthembed.evaluation.tables.task_table` (the columns other than task/kind/metric and the
    notes data/protocol are runs or published); a task that ran on a subset says so under its name."""
    series_names = [c for c in table.columns if c not in ("task", "kind", "metric", "data", "protocol")]
    fig, ax = new_figure(max(7.0, 1.2 * len(table) + 3), 4.5)
    series = {name: [None if v != v else v for v in table[name].tolist()] for name in series_names}  # NaN -> None
    notes = table["data"].tolist() if "data" in table.columns else [None] * len(table)
    labels = [f"{t}\n({m})" + (f"\n{d}" if d and d.startswith("subset") else "")
              for t, m, d in zip(table["task"], table["metric"], notes, strict=True)]  # fmt: skip
    _grouped_bars(ax, labels, series, hatched={n for n in series_names if n.endswith("(published)")})
    ax.set_ylabel("main score x100")
    ax.set_title(title)
    return save(fig, path)


def plot_category_scores(table, path=None, title: str = "Average per category (x100) beside the paper's Table 1"):
    """Bars per category from `synthembed.evaluation.tables.category_table`; the paper's columns hatched (56 MTEB datasets)."""
    series_names = [c for c in table.columns if c != "category"]
    fig, ax = new_figure(max(7.0, 1.0 * len(table) * max(1, len(series_names)) / 3 + 3), 4.5)
    series = {name: [None if v != v else v for v in table[name].tolist()] for name in series_names}
    _grouped_bars(ax, list(table["category"]), series, hatched={n for n in series_names if n.endswith("(paper)")})
    ax.set_ylabel("mean main score x100")
    ax.set_title(title)
    return save(fig, path)


def plot_model_scores(table, path=None, title: str = "Main score (x100) per model, per task and on average"):
    """Grouped bars from `synthembed.evaluation.tables.model_table` (the Table 1 shape): a group per task and the
    average, a bar per model; MTEB's published rows hatched. Column names carry the subset marks, so do the groups."""
    import numpy as np

    # per task and the average (model_table names them in attrs): a category column repeats its task where one
    # task stands for it
    groups = table.attrs.get("bar_columns") or [c for c in table.columns if c != "model"]
    series = {row["model"]: [None if np.isnan(row[c]) else row[c] for c in groups] for _, row in table.iterrows()}
    fig, ax = new_figure(max(7.0, 0.45 * len(groups) * max(1, len(series)) + 3), 4.5)
    _grouped_bars(ax, [c.replace(" (", "\n(") for c in groups], series,
                  hatched={name for name in series if name.endswith("(MTEB, published)")})  # fmt: skip
    ax.set_ylabel("main score x100")
    ax.set_title(title + (" (on subsets)" if any("subset" in c for c in groups) else ""))
    return save(fig, path)


# --- multilingual (notebook 05) ----------------------------------------------------------------------------------

# Colours for the paper's resource groups (language_codes.RESOURCE_GROUPS): high, low, not among its 93.
_GROUP_COLOURS = {"high": "tab:blue", "low": "tab:orange", "unseen": "tab:gray"}


def plot_language_shares(table, top: int = 25, path=None, title: str = "Examples per language: this run vs the paper"):
    """Bars of a run's language shares beside the paper's (multilingual.language_table), the `top` languages."""
    import numpy as np

    rows = table.head(top)
    fig, ax = new_figure(max(7.0, 0.35 * len(rows) + 2), 4.0)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, 100 * rows["share"], width=0.4, label="this run")
    ax.bar(x + 0.2, 100 * rows["paper_share"], width=0.4, label="paper (Figure 2)", color="tab:gray")
    ax.set_xticks(x, rows.index, rotation=60, ha="right")
    ax.set_ylabel("share of examples (%)")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def plot_task_language_heatmap(grid, top: int = 25, path=None, title: str = "Task group by language (examples)"):
    """Counts per (language, task group) (multilingual.task_group_by_language), each row shaded by its own shares."""
    rows = grid.head(top)
    shares = rows.div(rows.sum(axis=1).where(rows.sum(axis=1) > 0, 1), axis=0)
    fig, ax = new_figure(1.1 * len(rows.columns) + 3, 0.32 * len(rows) + 1.5)
    image = ax.imshow(shares.values, aspect="auto", cmap="Blues", vmin=0, vmax=1)
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            value = int(rows.iat[i, j])
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                        color="white" if shares.iat[i, j] > 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(len(rows.columns)), rows.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows.index)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the language's examples")
    return save(fig, path)


def plot_verification_rates(rates, path=None, title: str = "Outputs in the requested language"):
    """Per-language rate at which outputs were in the requested language (multilingual.verification_rates)."""
    rows = rates.drop(index="all", errors="ignore").dropna(subset=["rate"]).sort_values("rate")
    fig, ax = new_figure(max(7.0, 0.35 * len(rows) + 2), 4.0)
    ax.bar(range(len(rows)), 100 * rows["rate"], color="tab:green")
    for i, (_, row) in enumerate(rows.iterrows()):
        ax.text(i, 100 * row["rate"] + 1, f"{int(row['checked'])}", ha="center", fontsize=7)
    if "all" in rates.index and rates.loc["all", "checked"] > 0:
        ax.axhline(100 * rates.loc["all", "rate"], color="black", linestyle="--", linewidth=1, label="all languages")
        ax.legend(loc="lower right")
    ax.set_xticks(range(len(rows)), rows.index, rotation=60, ha="right")
    ax.set_ylim(0, 110)
    ax.set_ylabel("in the requested language (%)")
    ax.set_title(f"{title} (numbers: outputs checked)")
    return save(fig, path)


def plot_text_lengths(lengths, top: int = 20, path=None, title: str = "Text length per language and script"):
    """Box plots of characters per text (multilingual.text_lengths) for the `top` (language, script) pairs."""
    counts = lengths.groupby(["language", "script"]).size().sort_values(ascending=False).head(top)
    fig, ax = new_figure(max(7.0, 0.4 * len(counts) + 2), 4.0)
    data = [lengths.loc[(lengths["language"] == lang) & (lengths["script"] == script), "chars"] for lang, script in counts.index]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(counts) + 1), [f"{lang} ({script})" for lang, script in counts.index], rotation=60, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("characters per text")
    ax.set_title(title)
    return save(fig, path)


def plot_scores_by_language(scores, reference: float | None = None, reference_label: str = "", path=None,
                            title: str = "Bitext mining F1 by language"):  # fmt: skip
    """Per-language scores (bitext.language_scores), best first, Latin-script languages in one colour and the
    rest in another; `reference` draws a published mean as a line."""
    rows = scores.sort_values("score", ascending=False)
    latin = (rows["script"] == "Latn").to_numpy()
    fig, ax = new_figure(max(7.0, 0.12 * len(rows) + 3), 4.0)
    x = range(len(rows))
    ax.bar(x, rows["score"], color=["tab:blue" if is_latin else "tab:red" for is_latin in latin])
    ax.bar([], [], color="tab:blue", label="Latin script")
    ax.bar([], [], color="tab:red", label="other scripts")
    ax.axhline(rows["score"].mean(), color="black", linewidth=1, label=f"our mean {rows['score'].mean():.2f}")
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label or f"published {reference}")
    ax.set_xticks(list(x), rows["code"], rotation=90, fontsize=6 if len(rows) > 40 else 8)
    ax.set_ylabel("F1 (x100)")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def plot_score_vs_share(scores, path=None, title: str = "Score against the language's share of training data"):
    """Scatter of per-language score against training share (bitext.join_shares), by resource group; languages
    with no training data sit at the left edge. Labels name each point's code."""
    import numpy as np

    fig, ax = new_figure(7.0, 4.5)
    shares = scores["train_share"].to_numpy(dtype=float)
    floor = shares[shares > 0].min() / 3 if (shares > 0).any() else 1e-4
    x = np.where(shares > 0, shares, floor)
    for group, colour in _GROUP_COLOURS.items():
        chosen = (scores["group"] == group).to_numpy()
        if chosen.any():
            ax.scatter(100 * x[chosen], scores["score"].to_numpy()[chosen], color=colour, label=group, s=18)
    if len(scores) <= 40:
        for xi, yi, code in zip(100 * x, scores["score"], scores["code"], strict=True):
            ax.annotate(code, (xi, yi), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("share of training data (%, log; none at the left edge)")
    ax.set_ylabel("score (x100)")
    ax.set_title(title)
    ax.legend(title="resource group")
    return save(fig, path)



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

    `paper` maps a setting label to {"points": {length: %}, "band": (low, high)} (synthembed.reference.PAPER_FIGURE5);
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


def plot_method_at_work(cosine, probabilities, temperature: float, path=None):
    """One batch through InfoNCE (notebook 03): queries (rows) against their positives and the hard negatives
    (columns), as cosine similarities and as each row's softmax of cosine / temperature; the framed cells are the
    positives, where the loss wants all of a row's probability (training/anatomy.py computes both matrices)."""
    import numpy as np

    n = len(cosine)
    columns = [f"p{i + 1}" for i in range(n)] + [f"n{i + 1}" for i in range(n)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * n + 1.8))
    titles = ("cosine similarity", f"softmax(cosine / {temperature:g}) per query")
    for ax, matrix, title, cmap in zip(axes, (cosine, probabilities), titles, ("viridis", "magma"), strict=True):
        matrix = np.asarray(matrix, dtype=float)
        image = ax.imshow(matrix, cmap=cmap, aspect="auto")
        for (row, col), value in np.ndenumerate(matrix):  # dark text on the bright cells, light on the dark ones
            shade = image.norm(value)
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="k" if shade > 0.6 else "w")
        for i in range(n):  # frame each query's positive
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.axvline(n - 0.5, color="white", linewidth=2)  # in-batch positives | hard negatives
        ax.set_xticks(range(2 * n), columns)
        ax.set_xlabel("positives | hard negatives")
        ax.set_yticks(range(n), [f"q{i + 1}" for i in range(n)])
        ax.set_title(title)
    return save(fig, path)
