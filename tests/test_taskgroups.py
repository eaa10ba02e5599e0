"""The task groups' records: the paper's six groups in its order, each record consistent with itself, and the one table
that the data schema, the prompts and the stand-in read."""

from __future__ import annotations

from importlib import resources

import pytest

from synthembed import data
from synthembed.reference import PAPER_EXAMPLES_BY_GROUP
from synthembed.taskgroups import (
    ASYMMETRIC_TASK_TYPES,
    SYMMETRIC_TASK_TYPES,
    TASK_GROUP,
    TASK_GROUPS,
    TASK_TYPES,
    word_range,
)


def test_six_groups_in_the_papers_order():
    assert TASK_TYPES == ("short-long", "long-short", "short-short", "long-long", "sts", "bitext")
    assert ASYMMETRIC_TASK_TYPES == TASK_TYPES[:4] and SYMMETRIC_TASK_TYPES == ("sts", "bitext")
    # the example schema's type lists the same groups in the same order (one table: taskgroups.py)
    assert data.Example.model_fields["task_type"].annotation.__args__ == TASK_TYPES


def test_paper_shares_come_from_reference():
    for group in TASK_GROUPS:
        assert group.paper_examples_k == PAPER_EXAMPLES_BY_GROUP[group.name]
    assert sum(group.paper_share for group in TASK_GROUPS) == pytest.approx(1.0)
    assert max(TASK_GROUPS, key=lambda g: g.paper_share).name == "short-long"


@pytest.mark.parametrize("group", TASK_GROUPS, ids=lambda g: g.name)
def test_each_record_is_consistent(group):
    fields = set(group.fields)
    assert len(group.fields) in (2, 3) and len(fields) == len(group.fields)
    assert {name for name, _ in group.language_fields} <= fields
    assert {placeholder for _, placeholder in group.language_fields} <= set(group.language_placeholders)
    assert {name for pair in group.distinct_fields for name in pair} <= fields
    assert {name for name, _ in group.length_placeholders} <= fields
    assert {placeholder for _, placeholder in group.length_placeholders} <= set(group.placeholders)
    assert {name for name, _ in group.min_words} <= fields
    assert (group.instruction is None) == (not group.symmetric) == (group.brainstorm_template is not None)
    assert (len(group.brainstorm_examples) >= 2) == (not group.symmetric)
    assert sorted(group.schema().model_fields) == sorted(group.fields)
    templates = resources.files("synthembed.generation").joinpath("templates")
    for stem in (group.brainstorm_template, group.generation_template):
        if stem is not None:
            assert templates.joinpath(f"{stem}.txt").is_file(), stem


def test_length_rules():
    assert word_range("less than 10") == (None, 10)
    assert word_range("at least 10 words") == (10, None)
    assert word_range("5 to 15 words") == (5, 15)
    assert word_range("unknown") == (None, None)
    assert TASK_GROUP["long-long"].length_rules({}) == [("input", 300, None), ("positive_document", 300, None)]
    assert TASK_GROUP["long-short"].length_rules({"num_words": "less than 10"}) == [("input_text", None, 10)]
    assert TASK_GROUP["sts"].length_rules({"unit": "passage"}) == []
