"""The embedding miner asks its queries the way its model was trained: with the task instruction only where that model
takes instructions (model_config.uses_instructions, the rule evaluation's auto mode follows too)."""

from __future__ import annotations

import json

import numpy as np
import pytest

TASK = "Given a question, retrieve passages that answer it"
TOPICS = ["cats purr when content", "rivers flow to the sea", "stars shine at night", "genes code for proteins",
          "drugs bind to receptors", "cells divide by mitosis", "oceans rise as ice melts", "music plays in the hall"]  # fmt: skip
CORPUS = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(TOPICS)}
QUERIES = {f"q{i}": f"why do {t.split()[0]} {t.split()[1]}" for i, t in enumerate(TOPICS)}
QRELS = {f"q{i}": {f"d{i}": 1} for i in range(len(TOPICS))}


@pytest.fixture
def asked(monkeypatch) -> list[tuple[str, list[str]]]:
    """load_embedder as it is, except that each query the miner embeds is recorded as the text the model reads
    ((model name, [formatted query, ...]) per call)."""
    import synthembed.model as model
    from synthembed.data import format_query

    real = model.load_embedder
    calls: list[tuple[str, list[str]]] = []

    def load(name, **kwargs):
        embedder = real(name, **kwargs)
        encode_queries = embedder.encode_queries

        def recording(queries, task=None, **kw):
            calls.append((name, [format_query(task, q) for q in queries]))
            return encode_queries(queries, task=task, **kw)

        embedder.encode_queries = recording
        return embedder

    monkeypatch.setattr(model, "load_embedder", load)
    return calls


def _export_of(minilm, folder, instructions: bool):
    """MiniLM's files under `folder` with the synthembed_config.json one of our exports carries."""
    folder.mkdir()
    for item in minilm.iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "synthembed_config.json").write_text(json.dumps({"pooling": "mean", "instructions": instructions}))
    return folder


def test_miner_without_instructions_asks_plain_queries(minilm, asked):
    """MiniLM was trained on plain queries: given a task, the miner still embeds them plain, and mines exactly what
    mining with no task at all gives (vectors unchanged, so the same ranking)."""
    from synthembed.model import load_embedder
    from synthembed.training.mining import mine_embedding, mine_negatives

    mined = mine_negatives(f"embedding:{minilm}", CORPUS, QUERIES, QRELS, task=TASK, depth=3, show_progress=False)
    ((_, texts),) = asked
    assert texts == list(QUERIES.values())  # no "Instruct: ..." in front
    plain = mine_embedding(load_embedder(str(minilm)), CORPUS, QUERIES, QRELS, task=None, depth=3, show_progress=False)
    assert mined == plain


def test_miner_follows_the_export_config(minilm, tmp_path, asked):
    """One of our exports trained with instructions gets them when it mines; one trained without does not."""
    from synthembed.model import load_embedder
    from synthembed.training.mining import mine_negatives

    with_instructions = _export_of(minilm, tmp_path / "instructed", instructions=True)
    without = _export_of(minilm, tmp_path / "plain", instructions=False)
    mine_negatives(f"embedding:{with_instructions}", CORPUS, QUERIES, QRELS, task=TASK, depth=3, show_progress=False)
    mine_negatives(f"embedding:{without}", CORPUS, QUERIES, QRELS, task=TASK, depth=3, show_progress=False)
    (_, instructed), (_, plain) = asked
    assert instructed == [f"Instruct: {TASK}\nQuery: {q}" for q in QUERIES.values()]
    assert plain == list(QUERIES.values())
    # and the instruction reaches the vectors: the instructed model embeds a query differently from the plain one
    embedder = load_embedder(str(with_instructions))
    first = list(QUERIES.values())[:1]
    instructed_vector = embedder.encode_queries(first, task=TASK, show_progress=False)
    assert np.abs(instructed_vector - embedder.encode_queries(first, show_progress=False)).max() > 1e-3


def test_the_instruction_rule_lives_in_the_core(minilm, tiny_mistral):
    """Evaluation and training read one rule: no config of ours -> decoder-only models take instructions, encoders not."""
    from synthembed.evaluation import run
    from synthembed.model_config import uses_instructions

    assert run.uses_instructions is uses_instructions
    assert not uses_instructions(str(minilm)) and uses_instructions(str(tiny_mistral))
