"""Curation: a second look at a generation run before training on it (near-duplicates, evaluation-set overlap, false
negatives, safer mined negatives, an optional LLM judge). `synthembed curate` and notebook 02 drive it; pipeline.py runs
the filters in order and writes a curated copy that `synthembed train --data` reads like any run."""
