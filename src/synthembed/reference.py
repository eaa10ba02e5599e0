"""Every published number that synthembed puts beside its own, in one place: nothing else hard-codes a figure.

Sources are named per constant (the paper: Wang et al. 2024, arXiv 2401.00368 v3, section, table or figure; MTEB's
published leaderboard scores). Scores are x100, as the paper and MTEB print them.

    from synthembed.reference import PAPER_EXAMPLES_BY_GROUP
    PAPER_EXAMPLES_BY_GROUP["short-long"]  # 167 (thousand examples)
"""

from __future__ import annotations

# The paper's synthetic data by task group, in thousands of examples (section 3.1, Figure 2): 500k in all.
PAPER_EXAMPLES_BY_GROUP: dict[str, int] = {
    "short-long": 167, "long-short": 122, "sts": 99, "bitext": 89, "long-long": 17, "short-short": 13,
}  # fmt: skip
