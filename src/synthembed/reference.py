"""Every published number that synthembed puts beside its own, in one place: nothing else hard-codes a figure.

Sources are named per constant (the paper: Wang et al. 2024, arXiv 2401.00368 v3, section, table or figure, restated
in docs/paper.md; MTEB's published leaderboard scores). Scores are x100, as the paper and MTEB print them. How close
ours must come to them is a tolerance of ours, kept where it is checked.

    from synthembed.reference import PAPER_TABLE1, PUBLISHED
    PAPER_TABLE1["E5-mistral full data"]["average"]  # 66.6
    PUBLISHED["all-MiniLM-L6-v2"]["SciFact"]  # 64.51 (nDCG@10)
"""

from __future__ import annotations

# The paper's synthetic data by task group, in thousands of examples (section 3.1, Figure 2): 500k in all.
PAPER_EXAMPLES_BY_GROUP: dict[str, int] = {
    "short-long": 167, "long-short": 122, "sts": 99, "bitext": 89, "long-long": 17, "short-short": 13,
}  # fmt: skip

# --- the paper: MTEB English (Table 1) --------------------------------------------------------------------------------

# The paper's Table 1 (MTEB English, 56 datasets), mean main score per MTEB category and over all datasets.
_TABLE1_COLUMNS = ("classification", "clustering", "pair-classification", "reranking", "retrieval", "sts",
                   "summarization", "average")  # fmt: skip
PAPER_TABLE1: dict[str, dict[str, float]] = {
    setting: dict(zip(_TABLE1_COLUMNS, scores, strict=True))
    for setting, scores in (
        ("E5-mistral full data", (78.5, 50.3, 88.3, 60.2, 56.9, 84.6, 31.4, 66.6)),
        ("E5-mistral synthetic only", (78.2, 50.5, 86.0, 59.0, 46.9, 81.2, 31.9, 63.1)),
        ("E5-mistral synthetic + MS MARCO", (78.3, 49.9, 87.1, 59.5, 52.2, 81.2, 32.7, 64.5)),
        ("BGE-large-en-v1.5", (76.0, 46.1, 87.1, 60.0, 54.3, 83.1, 31.6, 64.2)),
    )
}

# --- MTEB's published scores, per task (../shared/data/README.md) -----------------------------------------------------

# Main score per task as MTEB's leaderboard reports it (nDCG@10, cosine Spearman, accuracy, F1 averaged over languages).
# all-MiniLM-L6-v2's STSBenchmark is main_score 0.8203247283076371 in MTEB's results repository
# (github.com/embeddings-benchmark/results, results/sentence-transformers__all-MiniLM-L6-v2/
# 8b3219a92973c328a8e22fadcfa821b5dc75636a/STSBenchmark.json, mteb 1.12.75). It is also the target for the `en` test
# split of STSBenchmarkMultilingualSTS, which holds the same 1,379 pairs (tests/test_reproduce_published.py): that
# task's own per-subset file for this model is not among the results readable offline, so no figure is added for it.
PUBLISHED: dict[str, dict[str, float]] = {
    "all-MiniLM-L6-v2": {
        "SciFact": 64.51, "STSBenchmark": 82.03, "SICK-R": 77.58, "Banking77Classification": 80.04, "Tatoeba": 3.88,
    },
    # sentence-transformers/all-mpnet-base-v2 in MTEB's results repository (github.com/embeddings-benchmark/results,
    # results/sentence-transformers__all-mpnet-base-v2/): SciFact, STSBenchmark and SICK-R from the revision folder
    # 84f2bcc00d77236f9e89c8a360a00fb1139bf47d (mteb 1.12.75; main scores 0.6557, 0.834219, 0.805854), Banking77 from
    # no_revision_available (mteb 1.12.41; 0.817013, the mean of 10 runs; the model card's older figure is 81.86).
    "all-mpnet-base-v2": {"SciFact": 65.57, "STSBenchmark": 83.42, "SICK-R": 80.59, "Banking77Classification": 81.70},
    "e5-mistral-7b-instruct": {"SciFact": 76.41, "STSBenchmark": 88.60, "Tatoeba": 70.08},
    "e5-small-v2": {"SciFact": 68.85},
    "BM25": {"SciFact": 67.89},
}  # fmt: skip

# --- multilingual (section 4.3) ---------------------------------------------------------------------------------------

# all-MiniLM-L6-v2 on MTEB Tatoeba, F1 averaged over the 112 languages, and for two of them.
MINILM_TATOEBA_F1 = PUBLISHED["all-MiniLM-L6-v2"]["Tatoeba"]
MINILM_TATOEBA_F1_BY_LANGUAGE: dict[str, float] = {"deu": 7.89, "fra": 8.17}
# intfloat/e5-mistral-7b-instruct on MTEB Tatoeba (the paper rounds it to 70.1), and three of its languages.
E5_MISTRAL_TATOEBA_F1 = PUBLISHED["e5-mistral-7b-instruct"]["Tatoeba"]
E5_MISTRAL_TATOEBA_F1_BY_LANGUAGE: dict[str, float] = {"deu": 99.47, "spa": 98.80, "amh": 22.05}
MULTILINGUAL_E5_LARGE_TATOEBA_F1 = 75.73  # intfloat/multilingual-e5-large on MTEB Tatoeba
# The paper's multilingual results (section 4.3): MIRACL dev nDCG@10, BUCC F1, Tatoeba F1; and mE5-large's
# MIRACL, which E5-mistral does not reach.
PAPER_MULTILINGUAL: dict[str, float] = {"MIRACL": 62.9, "BUCC": 98.9, "Tatoeba": 70.1}
MULTILINGUAL_E5_LARGE_MIRACL = 66.5

# --- long context (Figure 5) ------------------------------------------------------------------------------------------

# The document lengths of Figure 5, in tokens.
PAPER_FIGURE5_LENGTHS: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# Figure 5, personalized passkey retrieval, top-1 accuracy in %, as docs/paper.md section 6 states it. Only the points the paper gives
# are here; for RoPE base 10^5 it gives "at least 88% at every length" (kept as a band) and 92% at 32k; for 10^6 a band
# of 36 to 88%. Labels are PasskeySetting labels (window, base).
PAPER_FIGURE5: dict[str, dict] = {
    "window 4k, base 1e4": {
        "rope_theta": 1e4, "sliding_window": 4096,
        "points": {256: 100.0, 512: 100.0, 1024: 100.0, 2048: 100.0, 4096: 100.0, 8192: 70.0, 16384: 30.0, 32768: 26.0},
    },
    "window 32k, base 1e4": {"rope_theta": 1e4, "sliding_window": 32768, "points": {16384: 0.0, 32768: 0.0}},
    "window 32k, base 1e5": {"rope_theta": 1e5, "sliding_window": 32768, "points": {32768: 92.0}, "band": (88.0, 100.0)},
    "window 32k, base 1e6": {"rope_theta": 1e6, "sliding_window": 32768, "points": {}, "band": (36.0, 88.0)},
}  # fmt: skip
