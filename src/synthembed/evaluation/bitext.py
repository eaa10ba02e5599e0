"""Bitext mining scores per language (paper section 4.3): Tatoeba and FLORES-200 through mteb's own tasks and evaluator,
each language with its script, resource group and share of the training data; and the numbers notebook 05 records.

    from synthembed.evaluation.bitext import evaluate_bitext, join_shares
    scores = evaluate_bitext("all-MiniLM-L6-v2", shared_data("multilingual", "tatoeba"), languages=["deu", "cmn"])
    joined = join_shares(scores, language_table("runs/smoke/generation"))   # F1 beside the training share

The scoring is mteb's own (its BitextMiningEvaluator through the official task classes, tasks.py); nothing here
computes a metric of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..generation import rundir
from .language_codes import RESOURCE_GROUPS, detect_script, language_name, other_side, paper_share, resource_group
from .multilingual import run_summary

if TYPE_CHECKING:
    from ..model import Embedder

# --- scores by language -----------------------------------------------------------------------------------------------


def metadata_scripts(task) -> dict[str, str]:
    """Subset -> script of its non-English side as the task's metadata declares it (`cmn-eng` -> Hans)."""
    eval_langs = task.metadata.eval_langs
    if not isinstance(eval_langs, dict):
        return {}
    scripts = {}
    for subset, langs in eval_langs.items():
        other = next((lang for lang in langs if not lang.startswith("eng")), langs[0])
        scripts[subset] = other.split("-")[1] if "-" in other else None
    return scripts


def data_scripts(task) -> dict[str, str]:
    """Subset -> the dominant script (detect_script) of the non-English side's sentences of a loaded bitext task.

    Read from the text because metadata can be wrong: mteb declares Tatoeba's ber as Tifinagh and max as Devanagari,
    both written in Latin letters in the files, and srp as Cyrillic where 70% of its sentences are Latin.
    """
    task.load_data()
    split = task.metadata.eval_splits[0]
    scripts = {}
    for subset in task.hf_subsets:
        if task.parallel_subsets:  # FLORES: one column per language
            sentences = task.dataset[split][other_side(subset)]
        else:
            sentences = task.dataset[subset][split]["sentence1"]
        counts = Counter(detect_script(text) for text in sentences)
        scripts[subset] = counts.most_common(1)[0][0] if counts else "Zyyy"
    return scripts


def language_scores(results: dict[str, Any], scripts: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """One row per (task, language) from run.evaluate_model's results: task, subset, code (the non-English side),
    language, group, script, score (x100, mteb's main score: F1 for bitext mining, nDCG@10 for MIRACL).

    `scripts` maps task name -> subset -> script (data_scripts or metadata_scripts); a FLORES code carries its own.
    """
    rows = []
    for entry in results["tasks"]:
        subsets = entry.get("subsets") or {"default": entry["main_score"]}
        task_scripts = (scripts or {}).get(entry["name"], {})
        for subset, score in subsets.items():
            code = other_side(subset)
            script = task_scripts.get(subset) or (code.split("_")[1] if "_" in code else None)
            rows.append({
                "task": entry["name"], "subset": subset, "code": code.split("_")[0], "language": language_name(code),
                "group": resource_group(code), "script": script, "score": 100.0 * float(score),
            })
    return pd.DataFrame(rows, columns=["task", "subset", "code", "language", "group", "script", "score"])


def bitext_task(path: str | Path, languages: Sequence[str] | None = None, limit: int | None = None):
    """The local Tatoeba or FLORES folder as mteb's own bitext-mining task (tasks.local_task)."""
    from .tasks import local_task

    return local_task(path, kind="bitext", languages=list(languages) if languages else None, limit=limit)


def evaluate_bitext(
    model: str,
    path: str | Path,
    languages: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    instructions: str = "auto",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
    embedder: Embedder | None = None,
) -> pd.DataFrame:
    """Bitext mining per language on a local Tatoeba or FLORES folder, scored by mteb's evaluator through
    run.evaluate_model (its wrapper, instruction rule and embedding cache).

    Args:
        model: a name or path load_embedder accepts ("all-MiniLM-L6-v2", a trained export).
        path: shared_data("multilingual", "tatoeba") or shared_data("multilingual", "flores200", "devtest").
        languages: codes to mine (`deu`; FLORES also `deu_Latn`); default every language on disk.
        limit: the first `limit` lines per language (a quick look; published numbers use all).
        instructions: "auto" (MiniLM as MTEB scores it: none), "on", "off" (run.evaluate_model).
        embedder: an Embedder already loaded; by default `model` is loaded and wrapped in DistinctTexts.

    Returns language_scores' table, best first, with the script read from the sentences and `pairs` per language.

    Example:
        >>> t = evaluate_bitext("all-MiniLM-L6-v2", shared_data("multilingual", "tatoeba"), ["deu"])  # doctest: +SKIP
        >>> round(t.loc[0, "score"], 2)  # doctest: +SKIP
        7.89
    """
    from .run import evaluate_model

    task = bitext_task(path, languages, limit)
    if embedder is None:
        from ..model import DistinctTexts, load_embedder

        embedder = DistinctTexts(load_embedder(model))
    scripts = {task.metadata.name: data_scripts(task)}
    split = task.metadata.eval_splits[0]
    pairs = {
        subset: len(task.dataset[split] if task.parallel_subsets else task.dataset[subset][split])
        for subset in task.hf_subsets
    }
    results = evaluate_model(
        model, [task], instructions=instructions, batch_size=batch_size, cache_dir=cache_dir, use_cache=use_cache,
        show_progress=show_progress, embedder=embedder,
    )  # fmt: skip
    table = language_scores(results, scripts)
    table["pairs"] = table["subset"].map(pairs)
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def join_shares(scores: pd.DataFrame, shares: pd.DataFrame | None = None) -> pd.DataFrame:
    """Scores per language with each language's training share beside them.

    `shares` is language_table's output for the run the model was trained on; without it (or for a language the run
    lacks) the paper's share is used. Adds columns paper_share and train_share.
    """
    joined = scores.copy()
    joined["paper_share"] = [paper_share(code) for code in joined["code"]]
    if shares is not None:
        run_share = shares["share"].to_dict()
        joined["train_share"] = [run_share.get(name, 0.0) for name in joined["language"]]
    else:
        joined["train_share"] = joined["paper_share"]
    return joined


def group_means(scores: pd.DataFrame, by: str = "group") -> pd.DataFrame:
    """Mean score and number of languages per resource group (or per `by`, e.g. "script")."""
    summary = scores.groupby(by)["score"].agg(["mean", "count"]).rename(columns={"count": "languages"})
    if by == "group":
        summary = summary.reindex([g for g in RESOURCE_GROUPS if g in summary.index])
    return summary


def latin_gap(scores: pd.DataFrame) -> dict[str, float]:
    """Mean score over Latin-script languages and over the rest: the paper's point that an English-only model fails
    outside Latin scripts."""
    latin = scores["script"] == "Latn"
    return {
        "latin": float(scores.loc[latin, "score"].mean()) if latin.any() else float("nan"),
        "non_latin": float(scores.loc[~latin, "score"].mean()) if (~latin).any() else float("nan"),
    }


def published_beside(scores: pd.DataFrame, published: dict[str, float]) -> pd.DataFrame:
    """Our per-language scores beside published ones for the codes both have: code, ours, published, difference."""
    ours = dict(zip(scores["code"], scores["score"], strict=True))
    rows = [
        {"code": code, "language": language_name(code), "ours": ours[code], "published": value,
         "difference": ours[code] - value}
        for code, value in published.items() if code in ours
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["code", "language", "ours", "published", "difference"])


def parse_codes(spec: str | Iterable[str] | None) -> list[str] | None:
    """A notebook's language setting as benchmark codes: None, "" or "all" -> None (every language on disk); else a comma
    list or a sequence, each checked by language_name so a typo fails before any encoding.

    >>> parse_codes("deu, cmn"), parse_codes("all")
    (['deu', 'cmn'], None)
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    codes = [str(item).strip() for item in items if str(item).strip()]
    for code in codes:
        language_name(code)
    return codes


def multilingual_summary(
    generation_dir: str | Path,
    run,
    shares: pd.DataFrame,
    lengths: pd.DataFrame,
    scores: pd.DataFrame,
    **settings: Any,
) -> dict[str, Any]:
    """Notebook 05's numbers (what its test reads back), from what the notebook computed: the run (load_run), its
    language_table (`shares`), text_lengths, and join_shares' scores with columns model and benchmark; `settings`
    (models, limit, hub_tasks) are recorded as given.

    Recorded: run_summary's numbers, counts per language, each language's usual script, mean score per benchmark and
    model, the baseline's Tatoeba score per language and its Latin / other-script means (latin_gap), mean score per
    model / benchmark / resource group (to 2 decimals), and whether the run's LLM was the stand-in.

    >>> multilingual_summary(run_dir, run, shares, lengths, scores, limit=200)["tatoeba_baseline"]  # doctest: +SKIP
    {'deu': 35.1, ...}
    """
    base = scores[(scores["model"] == "baseline") & (scores["benchmark"] == "Tatoeba")]
    gap = latin_gap(base)
    by_group = scores.groupby(["model", "benchmark", "group"])["score"].mean().round(2)
    return {
        "generation_dir": str(generation_dir),
        **run_summary(run),
        "counts": shares["count"].to_dict(),
        "script_by_language": {language: lengths.loc[lengths["language"] == language, "script"].mode()[0]
                               for language in sorted(lengths["language"].unique())},  # fmt: skip
        **settings,
        "mean_scores": {f"{benchmark}_{model}": round(float(group["score"].mean()), 4)
                        for (model, benchmark), group in scores.groupby(["model", "benchmark"])},  # fmt: skip
        "tatoeba_baseline": dict(zip(base["code"], base["score"].round(4), strict=True)),
        "tatoeba_baseline_latin": gap["latin"],
        "tatoeba_baseline_non_latin": gap["non_latin"],
        "group_means": {f"{m}/{b}/{g}": float(v) for (m, b, g), v in by_group.items()},
        "stand_in": bool(rundir.is_stand_in(generation_dir)),
    }
