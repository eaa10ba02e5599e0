"""The multilingual side of the study (paper section 4.3): per-language statistics of a generation run, the languages
grouped into high- and low-resource as the paper does, and bitext-mining scores per language beside each language's
share of the training data.

    from synthembed.evaluation.multilingual import language_table, verification_rates, evaluate_bitext, join_shares
    table = language_table("runs/smoke/generation")                 # count, share, paper_share per language
    rates = verification_rates("runs/smoke/generation")             # share of outputs in the requested language
    scores = evaluate_bitext("all-MiniLM-L6-v2", shared_data("multilingual", "tatoeba"), languages=["deu", "cmn"])
    joined = join_shares(scores, table)                              # F1 beside the training share

Benchmarks name languages by ISO 639-3 code (Tatoeba `deu`, FLORES `deu_Latn`), mteb's BUCC and MIRACL by ISO 639-1
(`de`); the paper's language list (languages.py) by name. `language_name` maps all of them to one name, and to the
paper's spelling where the language is one of its 93. Scripts are ISO 15924 codes (`Latn`, `Cyrl`, `Hani`), read from
the text itself with unicodedata (`detect_script`).

The scoring is mteb's own (its BitextMiningEvaluator through the official task classes, local_tasks.py); nothing here
computes a metric of its own.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from ..data import TASK_TYPES, iter_jsonl
from ..errors import SynthembedError
from ..languages import HIGH_RESOURCE, ISO639_3_NAMES, LANGUAGES, canonical_language, language_weights
from ..model_config import read_model_config

# --- published numbers to put beside ours (x100; ../shared/data/README.md, PAPER.md) --------------------------------------

MINILM_TATOEBA_F1 = 3.88  # all-MiniLM-L6-v2 on MTEB Tatoeba, F1 averaged over the 112 languages
MINILM_TATOEBA_F1_BY_LANGUAGE = {"deu": 7.89, "fra": 8.17}
E5_MISTRAL_TATOEBA_F1 = 70.08  # intfloat/e5-mistral-7b-instruct (the paper reports 70.1)
E5_MISTRAL_TATOEBA_F1_BY_LANGUAGE = {"deu": 99.47, "spa": 98.80, "amh": 22.05}
MULTILINGUAL_E5_LARGE_TATOEBA_F1 = 75.73
# The paper's multilingual results (section 4.3): MIRACL dev nDCG@10, BUCC F1, Tatoeba F1; mE5-large for MIRACL.
PAPER_MULTILINGUAL = {"MIRACL": 62.9, "BUCC": 98.9, "Tatoeba": 70.1}
MULTILINGUAL_E5_LARGE_MIRACL = 66.5
TATOEBA_TOLERANCE = 0.3  # how close our MiniLM mean must come to the published 3.88

RESOURCE_GROUPS = ("high", "low", "unseen")  # high: English + the paper's 13; low: its other 79; unseen: not in its 93

# --- language codes -----------------------------------------------------------------------------------------------------

# ISO 639-1 codes of mteb's multilingual tasks (MIRACL, BUCC) for languages outside the paper's 93 (whose own two-letter
# codes languages.canonical_language knows).
ISO639_1_EXTRA: dict[str, str] = {"yo": "Yoruba"}
# nob/nno: the paper's "Norwegian" (XLM-R's `no`) is Bokmål; tgl: XLM-R's Filipino is Tagalog (`tl`);
# zsm/lvs/swh/pes/npi: the standard varieties that XLM-R's ms/lv/sw/fa/ne stand for.


def language_name(code: str) -> str:
    """The language a benchmark code names: ISO 639-3 (`deu`), FLORES (`deu_Latn`), a mined pair (`deu-eng`,
    `deu_Latn-eng_Latn`: the non-English side), ISO 639-1 (`de`, `de-en` as in mteb's BUCC and MIRACL) or a name.

    >>> language_name("cmn"), language_name("hin_Deva-eng_Latn"), language_name("de-en"), language_name("Tatar")
    ('Chinese', 'Hindi', 'German', 'Tatar')
    """
    text = str(code).strip()
    if "-" in text:  # a pair: the side that is not English
        sides = [side for side in text.split("-") if side]
        others = [side for side in sides if side.split("_")[0].lower() not in ("eng", "en")]
        text = others[0] if others else sides[0]
    key = text.split("_")[0].lower()
    if key in ISO639_3_NAMES:
        return ISO639_3_NAMES[key]
    if key in ISO639_1_EXTRA:
        return ISO639_1_EXTRA[key]
    try:
        return canonical_language(text)  # a paper name or an ISO 639-1 code the detector uses
    except SynthembedError:
        pass
    by_name = {name.lower(): name for name in ISO639_3_NAMES.values()}
    if key in by_name or text.lower() in by_name:
        return by_name.get(text.lower(), by_name.get(key))
    raise SynthembedError(f"unknown language code {code!r} (expected ISO 639-3 such as 'deu', 'deu_Latn', or ISO 639-1)")


def in_paper(language: str) -> bool:
    """Whether `language` (a name or code) is one of the paper's 93 training languages."""
    return language_name(language) in LANGUAGES


def resource_group(language: str) -> str:
    """The language's group: "high" (English and the paper's 13 high-resource ones), "low" (its other 79 languages) or
    "unseen" (not among its 93).

    >>> resource_group("deu"), resource_group("amh"), resource_group("kab")
    ('high', 'low', 'unseen')
    """
    name = language_name(language)
    if name == "English" or name in HIGH_RESOURCE:
        return "high"
    return "low" if name in LANGUAGES else "unseen"


def paper_share(language: str) -> float:
    """The language's share of the paper's synthetic data (0 for a language outside its 93)."""
    return language_weights().get(language_name(language), 0.0)


# --- scripts --------------------------------------------------------------------------------------------------------------

# unicodedata name prefix -> ISO 15924; the longest prefix wins ("FULLWIDTH LATIN" before "LATIN").
_SCRIPT_PREFIXES: dict[str, str] = {
    "LATIN": "Latn", "FULLWIDTH LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARMENIAN": "Armn",
    "HEBREW": "Hebr", "ARABIC": "Arab", "SYRIAC": "Syrc", "THAANA": "Thaa", "DEVANAGARI": "Deva", "BENGALI": "Beng",
    "GURMUKHI": "Guru", "GUJARATI": "Gujr", "ORIYA": "Orya", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda",
    "MALAYALAM": "Mlym", "SINHALA": "Sinh", "THAI": "Thai", "LAO": "Laoo", "TIBETAN": "Tibt", "MYANMAR": "Mymr",
    "GEORGIAN": "Geor", "HANGUL": "Hang", "HALFWIDTH HANGUL": "Hang", "ETHIOPIC": "Ethi", "CHEROKEE": "Cher",
    "KHMER": "Khmr", "MONGOLIAN": "Mong", "HIRAGANA": "Hira", "KATAKANA": "Kana", "HALFWIDTH KATAKANA": "Kana",
    "KATAKANA-HIRAGANA": "Kana", "CJK": "Hani", "KANGXI": "Hani", "TIFINAGH": "Tfng", "OL CHIKI": "Olck",
    "MEETEI MAYEK": "Mtei", "NKO": "Nkoo", "CANADIAN SYLLABICS": "Cans",
}  # fmt: skip
_PREFIXES_LONGEST_FIRST = sorted(_SCRIPT_PREFIXES, key=len, reverse=True)


@lru_cache(maxsize=65536)  # a corpus repeats few distinct characters; the name lookup is what costs
def char_script(char: str) -> str | None:
    """ISO 15924 code of one letter's script; None for what is not a letter (digits, punctuation, spaces, marks)."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    for prefix in _PREFIXES_LONGEST_FIRST:
        if name.startswith(prefix):
            return _SCRIPT_PREFIXES[prefix]
    return name.split(" ")[0].title() if name else "Zzzz"


def detect_script(text: str) -> str:
    """The dominant script of `text` as an ISO 15924 code, counted over its letters; "Zyyy" when it has none.

    Japanese mixes kana and kanji, so kana anywhere with kana + Han in the majority is "Jpan"; Han alone is "Hani"
    (unicodedata cannot tell Simplified from Traditional).

    >>> detect_script("Tom is here."), detect_script("Том здесь."), detect_script("トムはここにいる。"), detect_script("123")
    ('Latn', 'Cyrl', 'Jpan', 'Zyyy')
    """
    counts = Counter(script for script in map(char_script, text) if script)
    if not counts:
        return "Zyyy"
    kana = counts["Hira"] + counts["Kana"]
    if kana and kana + counts["Hani"] > sum(counts.values()) / 2:
        return "Jpan"
    return counts.most_common(1)[0][0]


# --- a generation run ---------------------------------------------------------------------------------------------------

# Rejections that happened after the language check passed (generate.py deduplicates after validating): their output
# was in the requested language. Every other rejection (invalid JSON, refusal, truncation, schema, length) came before
# the check, so it says nothing about the language.
PASSED_LANGUAGE_CHECK = ("duplicate", "near_duplicate")
WRONG_LANGUAGE = "wrong_language"


def load_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(examples, generation-stage rejects) of a generation run directory (DESIGN.md, "Data formats").

    rejects.jsonl may be absent (a run that rejected nothing); examples.jsonl may not.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "examples.jsonl").is_file():
        raise SynthembedError(f"{run_dir} is not a generation run: examples.jsonl is missing")
    examples = [obj for _, obj in iter_jsonl(run_dir / "examples.jsonl")]
    for number, example in enumerate(examples, start=1):
        if "language" not in example or "task_type" not in example:
            raise SynthembedError(f"{run_dir / 'examples.jsonl'}, line {number}: needs language and task_type")
    rejects = []
    if (run_dir / "rejects.jsonl").is_file():
        for number, obj in iter_jsonl(run_dir / "rejects.jsonl"):
            if "reason" not in obj:
                raise SynthembedError(f"{run_dir / 'rejects.jsonl'}, line {number}: a reject needs a reason")
            if obj.get("stage", "generate") == "generate":  # brainstorm rejects have no language
                rejects.append(obj)
    return examples, rejects


def run_languages(run_dir: str | Path) -> tuple[str, ...] | None:
    """The languages a run sampled from (its config.json), or None where the run has no config."""
    import json

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    plan = json.loads(path.read_text()).get("plan", {})
    languages = plan.get("languages")
    return tuple(languages) if languages else None


def run_is_stand_in(run_dir: str | Path) -> bool | None:
    """Whether the run's LLM was the loopback stand-in (its stats.json says so), None where the run has no stats."""
    import json

    path = Path(run_dir) / "stats.json"
    if not path.is_file():
        return None
    return bool(json.loads(path.read_text()).get("llm", {}).get("stand_in"))


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
        languages = run_languages(run)
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
    (detect_script), chars, words (parsing.word_count: scripts without spaces counted at a typical word length).

    For bitext the query is in src_lang and the documents in tgt_lang, so `language` is the language of that text.
    """
    from ..generation.parsing import word_count

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


# --- scores by language --------------------------------------------------------------------------------------------------


def _other_side(subset: str) -> str:
    """The non-English side of an mteb subset name: `deu-eng` -> deu, `hin_Deva-eng_Latn` -> hin_Deva, `de-en` -> de."""
    sides = [side for side in str(subset).split("-") if side]
    return next((s for s in sides if s.split("_")[0].lower() not in ("eng", "en")), sides[0] if sides else subset)


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
            sentences = task.dataset[split][_other_side(subset)]
        else:
            sentences = task.dataset[subset][split]["sentence1"]
        counts = Counter(detect_script(text) for text in sentences)
        scripts[subset] = counts.most_common(1)[0][0] if counts else "Zyyy"
    return scripts


def language_scores(results: dict[str, Any], scripts: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """One row per (task, language) from evaluate.evaluate_model's results: task, subset, code (the non-English side),
    language, group, script, score (x100, mteb's main score: F1 for bitext mining, nDCG@10 for MIRACL).

    `scripts` maps task name -> subset -> script (data_scripts or metadata_scripts); a FLORES code carries its own.
    """
    rows = []
    for entry in results["tasks"]:
        subsets = entry.get("subsets") or {"default": entry["main_score"]}
        task_scripts = (scripts or {}).get(entry["name"], {})
        for subset, score in subsets.items():
            code = _other_side(subset)
            script = task_scripts.get(subset) or (code.split("_")[1] if "_" in code else None)
            rows.append({
                "task": entry["name"], "subset": subset, "code": code.split("_")[0], "language": language_name(code),
                "group": resource_group(code), "script": script, "score": 100.0 * float(score),
            })
    return pd.DataFrame(rows, columns=["task", "subset", "code", "language", "group", "script", "score"])


class DistinctTexts:
    """An Embedder that encodes each distinct text once and serves repeats from memory (same vectors, less work).

    Tatoeba's 112 English sides hold 88,877 sentences of which 69,241 are distinct; mteb encodes each language's pair
    on its own, so the whole benchmark encodes 11% fewer texts this way. Everything but encode() is the wrapped
    Embedder's (pooling, max_len, settings, model), so evaluate.py fingerprints and wraps it as usual.

    Example:
        >>> emb = DistinctTexts(load_embedder("all-MiniLM-L6-v2"))  # doctest: +SKIP
        >>> emb.encode(["a", "b", "a"]).shape, emb.encoded  # doctest: +SKIP
        ((3, 384), 2)
    """

    def __init__(self, embedder):
        self._embedder = embedder
        self._memo: dict[str, Any] = {}
        self.encoded = 0  # distinct texts actually run through the model

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = True, desc: str = "encode"):
        import numpy as np

        missing = [text for text in dict.fromkeys(texts) if text not in self._memo]
        if missing:
            reps = self._embedder.encode(missing, batch_size=batch_size, show_progress=show_progress, desc=desc)
            self._memo.update(zip(missing, reps, strict=True))  # (N, D)
            self.encoded += len(missing)
        if not texts:
            return np.zeros((0, self._embedder.dimension), dtype=np.float32)
        return np.stack([self._memo[text] for text in texts])  # (len(texts), D)


def bitext_task(path: str | Path, languages: Sequence[str] | None = None, limit: int | None = None):
    """The local Tatoeba or FLORES folder as mteb's own bitext-mining task (local_tasks.local_task)."""
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
    embedder=None,
) -> pd.DataFrame:
    """Bitext mining per language on a local Tatoeba or FLORES folder, scored by mteb's evaluator through
    evaluate.evaluate_model (its wrapper, instruction rule and embedding cache).

    Args:
        model: a name or path load_embedder accepts ("all-MiniLM-L6-v2", a trained export).
        path: shared_data("multilingual", "tatoeba") or shared_data("multilingual", "flores200", "devtest").
        languages: codes to mine (`deu`; FLORES also `deu_Latn`); default every language on disk.
        limit: the first `limit` lines per language (a quick look; published numbers use all).
        instructions: "auto" (MiniLM as MTEB scores it: none), "on", "off" (evaluate.evaluate_model).
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
        from ..model import load_embedder

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


def find_trained_model(train_dir: str | Path) -> Path | None:
    """The model notebook 03 exported into `train_dir` (train.py's export: merged/, else adapter/), or None."""
    train_dir = Path(train_dir)
    for candidate in (train_dir / "merged", train_dir / "adapter", train_dir):
        if read_model_config(candidate) is not None:
            return candidate
    return None
