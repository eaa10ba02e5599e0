"""The multilingual study: per-language statistics of a hand-built run (exact counts, shares, verification rates), the
same numbers as the pipeline's own stats.json on a real loopback run, script detection against mteb's Tatoeba metadata,
the code -> language mapping for every benchmark file, per-language score tables and notebook 05's recorded numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from synthembed.data import write_jsonl
from synthembed.errors import SynthembedError
from synthembed.evaluation.bitext import (
    group_means,
    language_scores,
    latin_gap,
    multilingual_summary,
    parse_codes,
    published_beside,
)
from synthembed.evaluation.language_codes import detect_script, language_name, other_side, resource_group
from synthembed.evaluation.multilingual import (
    language_table,
    length_summary,
    load_run,
    run_summary,
    task_group_by_language,
    text_lengths,
    verification_rates,
)
from synthembed.languages import ISO639_3_NAMES, LANGUAGES, language_weights
from synthembed.reference import MINILM_TATOEBA_F1_BY_LANGUAGE
from synthembed.taskgroups import TASK_TYPES

W = language_weights()


def _example(i, language, task_type, query, positive, negative=None, **placeholders):
    return {
        "id": f"ex{i}", "task_type": task_type, "task": "Retrieve it.", "language": language, "query": query,
        "positive": positive, "negative": negative, "fields": {},
        "meta": {"placeholders": {"language": language, **placeholders}, "model": "m", "prompt_sha256": ""},
    }  # fmt: skip


def _reject(i, language, reason, stage="generate"):
    return {"request_id": f"generate/x/{i}", "stage": stage, "task_type": "sts", "language": language, "reason": reason}


@pytest.fixture()
def known_run(tmp_path):
    """7 accepted examples in 4 languages; rejects: 4 wrong_language, 1 duplicate, 1 invalid_json, 1 brainstorm."""
    examples = [
        _example(0, "English", "short-long", "cheap flights", "Airlines sell cheap seats early.", "Birds fly south."),
        _example(1, "English", "short-long", "tide tables", "High tide is at noon today.", "The moon is bright."),
        _example(2, "English", "sts", "A dog runs.", "A dog is running.", "A cat sleeps."),
        _example(3, "German", "long-short", "Das Essen war wunderbar.", "positiv", "negativ"),
        _example(4, "German", "bitext", "Ich habe Hunger.", "I am hungry.", "I am angry.",
                 src_lang="German", tgt_lang="English"),
        _example(5, "Japanese", "short-short", "東京の天気", "東京は今日晴れです。"),
        _example(6, "Amharic", "short-short", "ሰላም", "ሰላም ነው።"),
    ]
    rejects = [
        _reject(0, "German", "wrong_language"),
        _reject(1, "Japanese", "wrong_language"),
        _reject(2, "Japanese", "wrong_language"),
        _reject(3, "Swahili", "wrong_language"),
        _reject(4, "English", "duplicate"),  # passed the language check before deduplication
        _reject(5, "English", "invalid_json"),  # never reached the language check
        _reject(6, None, "not_a_list", stage="brainstorm"),
    ]
    write_jsonl(tmp_path / "examples.jsonl", examples)
    write_jsonl(tmp_path / "rejects.jsonl", rejects)
    languages = ["English", "German", "Japanese", "Amharic", "Swahili"]
    (tmp_path / "config.json").write_text(json.dumps({"plan": {"languages": languages}}))
    return tmp_path


def test_language_table_counts_and_shares(known_run):
    table = language_table(known_run)
    assert list(table.index) == ["English", "German", "Amharic", "Japanese", "Swahili"]  # by count, then name
    assert table["count"].to_dict() == {"English": 3, "German": 2, "Amharic": 1, "Japanese": 1, "Swahili": 0}
    assert table.loc["English", "share"] == pytest.approx(3 / 7)
    assert table.loc["German", "share"] == pytest.approx(2 / 7)
    assert table.loc["Swahili", "share"] == 0.0
    assert table["share"].sum() == pytest.approx(1.0)
    assert table.loc["English", "paper_share"] == pytest.approx(0.431)
    assert table.loc["Amharic", "paper_share"] == pytest.approx(W["Amharic"])
    sampled = W["English"] + W["German"] + W["Japanese"] + W["Amharic"] + W["Swahili"]
    assert table.loc["German", "expected_share"] == pytest.approx(W["German"] / sampled)
    assert table["expected_share"].sum() == pytest.approx(1.0)
    assert table["group"].to_dict() == {"English": "high", "German": "high", "Amharic": "low", "Japanese": "high",
                                        "Swahili": "low"}  # fmt: skip


def test_verification_rates_exact(known_run):
    rates = verification_rates(known_run)
    assert rates.loc["English"].to_dict() == {"in_language": 4, "wrong_language": 0, "checked": 4, "rate": 1.0}
    assert rates.loc["German", "in_language"] == 2 and rates.loc["German", "wrong_language"] == 1
    assert rates.loc["German", "rate"] == pytest.approx(2 / 3)
    assert rates.loc["Japanese", "rate"] == pytest.approx(1 / 3)
    assert rates.loc["Swahili", "rate"] == 0.0
    assert rates.loc["Amharic", "rate"] == 1.0
    assert rates.loc["all"].to_dict() == {"in_language": 8, "wrong_language": 4, "checked": 12, "rate": pytest.approx(8 / 12)}
    assert "None" not in rates.index  # the brainstorm reject has no language and is no generated output


def test_task_group_heat_map_counts(known_run):
    grid = task_group_by_language(known_run)
    assert list(grid.columns) == list(TASK_TYPES)
    assert grid.loc["English"].to_dict() == {"short-long": 2, "long-short": 0, "short-short": 0, "long-long": 0,
                                             "sts": 1, "bitext": 0}  # fmt: skip
    assert grid.loc["German", "bitext"] == 1 and grid.loc["German", "long-short"] == 1
    assert int(grid.values.sum()) == 7
    assert grid.index[0] == "English"


def test_text_lengths_and_scripts(known_run):
    lengths = text_lengths(known_run)
    assert len(lengths) == 3 + 3 + 3 + 3 + 3 + 2 + 2  # the short-short examples have no negative
    bitext = lengths[lengths["id"] == "ex4"].set_index("field")
    assert bitext.loc["query", "language"] == "German"
    assert bitext.loc["positive", "language"] == "English"  # the target side is in tgt_lang
    japanese = lengths[lengths["language"] == "Japanese"]
    assert set(japanese["script"]) == {"Jpan"}  # kanji with kana is Japanese, not Chinese
    assert lengths.loc[(lengths["id"] == "ex6") & (lengths["field"] == "query"), "chars"].item() == 3
    assert set(lengths.loc[lengths["language"] == "Amharic", "script"]) == {"Ethi"}
    summary = length_summary(lengths)
    assert summary.loc[("English", "Latn"), "texts"] == 3 * 3 + 2  # 3 English examples + the bitext target side
    assert summary["texts"].sum() == len(lengths)


def test_run_summary(known_run):
    summary = run_summary(known_run)
    assert summary["examples"] == 7 and summary["languages"] == 4 and summary["wrong_language"] == 4
    assert summary["english_share"] == pytest.approx(3 / 7)
    assert summary["high_resource_share"] == pytest.approx(6 / 7)
    assert summary["verification_rate"] == pytest.approx(8 / 12)


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(SynthembedError, match="examples.jsonl is missing"):
        load_run(tmp_path)
    (tmp_path / "examples.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(SynthembedError, match="line 1: needs language and task_type"):
        load_run(tmp_path)


def test_agrees_with_generate_stats_on_a_loopback_run(tmp_path):
    """The same counts as the generation stage's stats.json, on a real run with scripted wrong-language replies."""
    from synthembed.generation.pipeline import generate
    from synthembed.generation.plan import GenerateConfig
    from synthembed.testing.loopback import Faults, LoopbackServer

    config = GenerateConfig(model="loopback", task_types=("short-short", "sts", "bitext"), tasks_per_type=3,
                            examples_per_task=3, languages="English,German,French,Russian,Japanese", seed=1)  # fmt: skip
    with LoopbackServer(faults=Faults(wrong_language=0.3, malformed=0.1, brainstorm=False)) as server:
        stats = generate(tmp_path, config, base_url=server.base_url, concurrency=4, backoff=0.01, progress=False)
    table = language_table(tmp_path)
    assert {k: v for k, v in table["count"].items() if v} == stats["by_language"]
    rates = verification_rates(tmp_path)
    assert rates.loc["all", "wrong_language"] == stats["rejections"].get("wrong_language", 0) > 0
    assert rates.loc["all", "in_language"] == stats["accepted"] + stats["duplicates"]["exact"] + stats["duplicates"]["near"]
    assert set(table.index) <= {"English", "German", "French", "Russian", "Japanese"}


@pytest.mark.parametrize(
    "text, script",
    [("Tom is here.", "Latn"), ("Том здесь.", "Cyrl"), ("トムはここにいる。", "Jpan"), ("我们今天去公园散步", "Hani"),
     ("오늘 날씨가 좋다", "Hang"), ("مرحبا بالعالم", "Arab"), ("नमस्ते दुनिया", "Deva"), ("Ｔｏｍ", "Latn"), ("123 !?", "Zyyy"),
     ("ᱥᱟᱱᱛᱟᱲᱤ", "Olck"), ("Γειά σου", "Grek")],
)  # fmt: skip
def test_detect_script(text, script):
    assert detect_script(text) == script


def test_language_names():
    assert language_name("cmn") == "Chinese" and language_name("pes") == "Persian" and language_name("nob") == "Norwegian"
    assert language_name("deu_Latn") == "German" and language_name("hin_Deva-eng_Latn") == "Hindi"
    assert language_name("de-en") == "German" and language_name("ar") == "Arabic"  # mteb's BUCC and MIRACL subsets
    assert language_name("German") == "German"
    miracl = ["ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te", "th", "yo", "zh"]
    assert [resource_group(code) for code in miracl].count("high") == 10 and resource_group("yo") == "unseen"
    assert resource_group("eng") == "high" and resource_group("cmn") == "high" and resource_group("swh") == "low"
    assert resource_group("kab") == "unseen" and resource_group("yue") == "unseen"
    with pytest.raises(SynthembedError, match="unknown language code"):
        language_name("xx-yy")
    # every name that looks like one of the paper's is spelled as the paper spells it
    paper = set(LANGUAGES)
    assert {"Chinese", "Persian", "Malay", "Latvian", "Swahili", "Filipino", "Kurdish (Kurmanji)"} <= paper
    assert sum(name in paper for name in ISO639_3_NAMES.values()) >= 70


@pytest.mark.realdata
def test_every_benchmark_code_has_a_name_and_its_script(shared_data):
    """Every Tatoeba and FLORES file has a name; the script read from the text agrees with mteb's Tatoeba metadata
    except where the metadata is wrong (ber and max are written in Latin letters, srp mostly Latin)."""
    import mteb

    from synthembed.data import read_flores, read_tatoeba

    pairs = read_tatoeba(shared_data / "multilingual" / "tatoeba")
    assert len(pairs) == 112 and all(code in ISO639_3_NAMES for code in pairs)
    flores = read_flores(shared_data / "multilingual" / "flores200" / "devtest")
    assert all(code.split("_")[0] in ISO639_3_NAMES for code in flores)
    for code, sentences in flores.items():  # FLORES names its script in the file name
        assert pd.Series([detect_script(s) for s in sentences]).mode()[0] == code.split("_")[1], code
    declared = {s.split("-")[0]: langs[0].split("-")[1] for s, langs in mteb.get_task("Tatoeba").metadata.eval_langs.items()}
    same = {"Hans": "Hani", "Hant": "Hani"}
    disagree = sorted(
        code for code, (left, _) in pairs.items()
        if pd.Series([detect_script(s) for s in left]).mode()[0] != same.get(declared[code], declared[code])
    )  # fmt: skip
    assert disagree == ["ber", "max", "srp"]


def test_language_scores_table():
    results = {"tasks": [
        {"name": "Tatoeba", "main_score": 0.3, "subsets": {"deu-eng": 0.5, "cmn-eng": 0.1}},
        {"name": "FloresBitextMining", "main_score": 0.2, "subsets": {"hin_Deva-eng_Latn": 0.2}},
        {"name": "BUCC.v2", "main_score": 0.9, "subsets": {"de-en": 0.9}},
    ]}  # fmt: skip
    table = language_scores(results, {"Tatoeba": {"deu-eng": "Latn", "cmn-eng": "Hani"}})
    assert table["language"].tolist() == ["German", "Chinese", "Hindi", "German"]
    assert table["code"].tolist() == ["deu", "cmn", "hin", "de"]
    assert table["script"].tolist()[:3] == ["Latn", "Hani", "Deva"] and pd.isna(table["script"].iloc[3])
    assert table["score"].tolist() == pytest.approx([50.0, 10.0, 20.0, 90.0])
    tatoeba = table[table["task"] == "Tatoeba"]
    assert latin_gap(tatoeba) == {"latin": pytest.approx(50.0), "non_latin": pytest.approx(10.0)}
    assert group_means(tatoeba).loc["high", "mean"] == pytest.approx(30.0)
    beside = published_beside(tatoeba, MINILM_TATOEBA_F1_BY_LANGUAGE)  # deu and fra: only deu is in ours
    published = MINILM_TATOEBA_F1_BY_LANGUAGE["deu"]
    assert beside.to_dict("records") == [{"code": "deu", "language": "German", "ours": 50.0, "published": published,
                                          "difference": pytest.approx(50.0 - published)}]  # fmt: skip


def test_pair_sides_and_language_settings():
    assert other_side("deu-eng") == "deu" and other_side("eng_Latn-hin_Deva") == "hin_Deva" and other_side("en-de") == "de"
    assert other_side("eng-eng") == "eng"
    assert parse_codes("deu, cmn") == ["deu", "cmn"] and parse_codes(" ALL ") is None and parse_codes(None) is None
    assert parse_codes(["deu_Latn"]) == ["deu_Latn"]
    with pytest.raises(SynthembedError, match="unknown language code"):
        parse_codes("deu,xx-yy")


def test_multilingual_summary_records_notebook_05s_numbers(known_run):
    scores = pd.DataFrame([
        {"model": "baseline", "benchmark": "Tatoeba", "code": "deu", "group": "high", "script": "Latn", "score": 40.0},
        {"model": "baseline", "benchmark": "Tatoeba", "code": "cmn", "group": "high", "script": "Hani", "score": 2.0},
        {"model": "baseline", "benchmark": "Tatoeba", "code": "amh", "group": "low", "script": "Ethi", "score": 1.0},
        {"model": "baseline", "benchmark": "FLORES", "code": "deu", "group": "high", "script": "Latn", "score": 30.0},
        {"model": "trained", "benchmark": "Tatoeba", "code": "deu", "group": "high", "script": "Latn", "score": 45.12345},
    ])  # fmt: skip
    run, shares, lengths = load_run(known_run), language_table(known_run), text_lengths(known_run)
    numbers = multilingual_summary(known_run, run, shares, lengths, scores, limit=200, hub_tasks=[])
    assert numbers["generation_dir"] == str(known_run) and numbers["limit"] == 200 and numbers["hub_tasks"] == []
    assert {k: numbers[k] for k in run_summary(run)} == run_summary(run)
    assert numbers["counts"] == {"English": 3, "German": 2, "Amharic": 1, "Japanese": 1, "Swahili": 0}
    assert numbers["script_by_language"] == {"Amharic": "Ethi", "English": "Latn", "German": "Latn", "Japanese": "Jpan"}
    assert numbers["mean_scores"] == {"FLORES_baseline": 30.0, "Tatoeba_baseline": pytest.approx(43 / 3, abs=1e-4),
                                      "Tatoeba_trained": 45.1234}  # fmt: skip
    assert numbers["tatoeba_baseline"] == {"deu": 40.0, "cmn": 2.0, "amh": 1.0}
    assert (numbers["tatoeba_baseline_latin"], numbers["tatoeba_baseline_non_latin"]) == (40.0, 1.5)
    assert numbers["group_means"]["baseline/Tatoeba/high"] == 21.0 and numbers["group_means"]["trained/Tatoeba/high"] == 45.12
    assert numbers["stand_in"] is False  # no stats.json in the hand-built run


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_05_smoke(smoke_study):
    """Notebook 05's recorded numbers agree with the run it read and with the scores it wrote."""
    from synthembed.study import load_profile

    run_dir, results = smoke_study
    numbers = results["05_multilingual"]
    generation_dir = numbers["generation_dir"]
    table = language_table(generation_dir)
    assert numbers["counts"] == table["count"].to_dict()
    assert numbers["examples"] == sum(numbers["counts"].values()) > 0
    stats = json.loads((Path(generation_dir) / "stats.json").read_text())  # generation/stats.py's own count
    assert {k: v for k, v in numbers["counts"].items() if v} == stats["by_language"]
    assert numbers["verification_rate"] == pytest.approx(verification_rates(generation_dir).loc["all", "rate"])
    assert numbers["stand_in"] is True
    params = load_profile("smoke")["05_multilingual"]
    assert sorted(numbers["tatoeba_baseline"]) == sorted(params["tatoeba_languages"].split(","))
    assert numbers["tatoeba_baseline_latin"] > numbers["tatoeba_baseline_non_latin"]
    scores = pd.read_csv(run_dir / "multilingual" / "bitext_scores.csv")
    baseline = scores[(scores["model"] == "baseline") & (scores["benchmark"] == "Tatoeba")]
    assert dict(zip(baseline["code"], baseline["score"].round(4), strict=True)) == pytest.approx(
        numbers["tatoeba_baseline"], abs=1e-4
    )
    assert (scores["pairs"] <= params["limit"]).all()  # Tatoeba's Amharic has only 168 pairs
    # notebook 03's exports live in train/<run>/merged: the first one is found and scored beside the baseline
    assert set(scores["model"]) == {"baseline", "trained"}
    deu = scores[(scores["code"] == "deu") & (scores["model"] == "baseline")]
    assert deu["pairs"].tolist() == [params["limit"]] * 2  # Tatoeba and FLORES
