"""The multilingual side of a generation run (paper section 4.3): examples per language beside the paper's shares, the
rate at which outputs were in the requested language, task groups and text lengths per language and script.

    from synthembed.evaluation.multilingual import language_table, verification_rates
    table = language_table("runs/smoke/generation")                 # count, share, paper_share per language
    rates = verification_rates("runs/smoke/generation")             # share of outputs in the requested language

Languages are grouped into high- and low-resource as the paper does (language_codes.resource_group); bitext mining
scores per language are bitext.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import SynthembedError
from ..generation import rundir
from ..languages import language_weights, word_count
from ..taskgroups import TASK_TYPES
from .language_codes import detect_script, resource_group

# --- a generation run -------------------------------------------------------------------------------------------------

# Rejections that happened after the language check passed (the pipeline deduplicates after validating): their output
# was in the requested language. Every other rejection (invalid JSON, refusal, truncation, schema, length) came before
# the check, so it says nothing about the language.
PASSED_LANGUAGE_CHECK = ("duplicate", "near_duplicate")
WRONG_LANGUAGE = "wrong_language"


def load_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(examples, generation-stage rejects) of a generation run directory, read through its owner, rundir.

    rejects.jsonl may be absent (a run that rejected nothing); examples.jsonl may not.
    """
    examples = rundir.read_examples(run_dir)
    for number, example in enumerate(examples, start=1):
        if "language" not in example or "task_type" not in example:
            raise SynthembedError(f"{Path(run_dir) / rundir.EXAMPLES_FILE}, line {number}: needs language and task_type")
    rejects = rundir.read_rejects(run_dir)
    for number, reject in enumerate(rejects, start=1):
        if "reason" not in reject:
            raise SynthembedError(f"{Path(run_dir) / rundir.REJECTS_FILE}, line {number}: a reject needs a reason")
    return examples, [r for r in rejects if r.get("stage", "generate") == "generate"]  # brainstorm rejects: no language


def _as_run(run: str | Path | tuple[list[dict[str, Any]], list[dict[str, Any]]]):
    return load_run(run) if isinstance(run, str | Path) else run


def language_table(run, languages: Sequence[str] | None = None) -> pd.DataFrame:
    """Accepted examples per language, their share, and the paper's share beside it.

    Columns: count, share (of this run's examples), paper_share (the paper's Figure 2 share over its 93 languages),
    expected_share (the paper's weights renormalised over the languages the run sampled from: what the run should
    show), group (resource_group). Rows: every language with an example or a reject, plus `languages` (default: the
    run's config), sorted by count then name.

    >>> language_table("runs/smoke/generation").loc["English", "share"]  # doctest: +SKIP
    """
    examples, rejects = _as_run(run)
    if languages is None and isinstance(run, str | Path):
        languages = rundir.run_languages(run)
    counts = Counter(str(e["language"]) for e in examples)
    names = set(counts) | {str(r["language"]) for r in rejects if r.get("language")} | set(languages or ())
    total = sum(counts.values())
    weights = language_weights()
    sampled = [name for name in (languages or names) if name in weights]
    sampled_weight = sum(weights[name] for name in sampled)
    rows = []
    for name in names:
        rows.append({
            "language": name,
            "count": counts.get(name, 0),
            "share": counts.get(name, 0) / total if total else 0.0,
            "paper_share": weights.get(name, 0.0),
            "expected_share": weights[name] / sampled_weight if name in sampled and sampled_weight else 0.0,
            "group": resource_group(name),
        })
    table = pd.DataFrame(rows, columns=["language", "count", "share", "paper_share", "expected_share", "group"])
    return table.sort_values(["count", "language"], ascending=[False, True]).set_index("language")


def task_group_by_language(run) -> pd.DataFrame:
    """Accepted examples per (language, task group): rows languages (most examples first), columns TASK_TYPES."""
    examples, _ = _as_run(run)
    table = pd.crosstab(
        pd.Series([e["language"] for e in examples], name="language", dtype=object),
        pd.Series([e["task_type"] for e in examples], name="task_type", dtype=object),
    )
    table = table.reindex(columns=[t for t in TASK_TYPES], fill_value=0)
    order = table.sum(axis=1).sort_values(ascending=False, kind="stable").index
    return table.loc[order]


def verification_rates(run) -> pd.DataFrame:
    """The rate at which outputs were in the requested language, per language and overall.

    in_language = accepted examples + rejects that failed only later (PASSED_LANGUAGE_CHECK); wrong_language = rejects
    for reason "wrong_language"; rate = in_language / (in_language + wrong_language). Outputs rejected before the
    language check (not JSON, refused, cut off, failing the schema or the length rules) are left out: nobody checked
    their language. The last row, "all", pools every language.
    """
    examples, rejects = _as_run(run)
    in_language = Counter(str(e["language"]) for e in examples)
    wrong = Counter()
    for reject in rejects:
        if reject["reason"] in PASSED_LANGUAGE_CHECK:
            in_language[str(reject.get("language"))] += 1
        elif reject["reason"] == WRONG_LANGUAGE:
            wrong[str(reject.get("language"))] += 1
    rows = []
    for name in sorted(set(in_language) | set(wrong)):
        rows.append({"language": name, "in_language": in_language[name], "wrong_language": wrong[name]})
    rows.append({"language": "all", "in_language": sum(in_language.values()), "wrong_language": sum(wrong.values())})
    table = pd.DataFrame(rows, columns=["language", "in_language", "wrong_language"]).set_index("language")
    table["checked"] = table["in_language"] + table["wrong_language"]
    table["rate"] = table["in_language"] / table["checked"].where(table["checked"] > 0)
    return table


TEXT_FIELDS = ("query", "positive", "negative")


def text_lengths(run) -> pd.DataFrame:
    """One row per text of every accepted example: id, language, task_type, field (query/positive/negative), script
    (detect_script), chars, words (languages.word_count: scripts without spaces counted at a typical word length).

    For bitext the query is in src_lang and the documents in tgt_lang, so `language` is the language of that text.
    """
    examples, _ = _as_run(run)
    rows = []
    for example in examples:
        placeholders = (example.get("meta") or {}).get("placeholders") or {}
        for field in TEXT_FIELDS:
            text = example.get(field)
            if not text:
                continue
            language = example["language"]
            if example["task_type"] == "bitext" and field != "query":
                language = placeholders.get("tgt_lang", language)
            rows.append({
                "id": example.get("id"), "language": language, "task_type": example["task_type"], "field": field,
                "script": detect_script(text), "chars": len(text), "words": word_count(text),
            })
    return pd.DataFrame(rows, columns=["id", "language", "task_type", "field", "script", "chars", "words"])


def length_summary(lengths: pd.DataFrame) -> pd.DataFrame:
    """Texts, median characters and median words per (language, script), most texts first."""
    if lengths.empty:
        return pd.DataFrame(columns=["texts", "median_chars", "median_words"])
    summary = lengths.groupby(["language", "script"]).agg(
        texts=("chars", "size"), median_chars=("chars", "median"), median_words=("words", "median")
    )
    return summary.sort_values("texts", ascending=False, kind="stable")


def run_summary(run) -> dict[str, Any]:
    """Key numbers of a run's multilingual side: examples, languages, English share, high-resource share, rate."""
    examples, rejects = _as_run(run)
    table = language_table((examples, rejects))
    rates = verification_rates((examples, rejects))
    total = int(table["count"].sum())
    return {
        "examples": total,
        "languages": int((table["count"] > 0).sum()),
        "english_share": float(table["share"].get("English", 0.0)),
        "high_resource_share": float(table.loc[table["group"] == "high", "share"].sum()),
        "verification_rate": None if pd.isna(rates.loc["all", "rate"]) else float(rates.loc["all", "rate"]),
        "wrong_language": int(rates.loc["all", "wrong_language"]),
    }
