"""Notebook 04's line-up: an untrained decoder embedded exactly as the models trained from it (same vectors as its
export after a training run that changes nothing; the same vectors as a last-token pool computed by hand for the real
SmolLM2), all-mpnet-base-v2 reproducing MTEB's published STSBenchmark, and the Table 1 shaped table that names every
subset it was computed on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthembed.errors import SynthembedError
from synthembed.evaluation.run import evaluate_model
from synthembed.evaluation.specs import ModelSpec, embed_as_trained, lineup, model_spec
from synthembed.evaluation.tables import averages, category_table, model_table, subset_note, task_table
from synthembed.model_config import write_model_config
from synthembed.paths import local_model
from synthembed.reference import PUBLISHED

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
LONG = "protein folding gene expression planet ocean forest music city virus star cell drug mountain " * 6
PAIRS = [
    ("A man is playing a guitar.", "A person plays the guitar.", 4.6),
    ("A woman is slicing an onion.", "Someone cuts an onion.", 4.2),
    ("A dog runs in the park.", "The stock market fell today.", 0.2),
    ("Kids are playing football.", "Children play soccer outside.", 4.0),
    ("The sun is shining. " + LONG, "A cat sleeps on the sofa. " + LONG, 0.4),  # longer than max_len: truncated
    ("He drives a red car.", "A man is driving a car.", 3.1),
    ("Rain fell all night. " + LONG, "It rained through the night.", 4.4),
    ("The train is late.", "Bananas are yellow.", 0.1),
]


def make_sts(root: Path) -> Path:
    root.mkdir(parents=True)
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}" for i, (a, b, s) in enumerate(PAIRS)]
    (root / "sts-test.csv").write_text("\n".join(lines) + "\n")
    return root


def make_beir(root: Path, n: int = 5) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [json.dumps({"_id": f"d{i}", "title": "", "text": f"{a} {b}"}) for i, (a, b, _) in enumerate(PAIRS)]
    (root / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    queries = [json.dumps({"_id": f"q{i}", "text": a}) for i, (a, _, _) in enumerate(PAIRS[:n])]
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(n)))
    return root


def real_model(name: str) -> Path:
    try:
        return local_model(name)
    except SynthembedError as err:
        pytest.skip(str(err))


def fake_export(directory: Path, base_model: str, **settings) -> Path:
    """An export folder as evaluation reads it: only its synthembed_config.json (the weights are never read here)."""
    config = {"pooling": "last", "max_len": 64, "append_eos": False, "eos_in_tokenizer": True,
              "base_model": base_model, "instructions": True, "query_task": "Retrieve passages", "lora_rank": 16}
    write_model_config(directory, {**config, **settings})  # fmt: skip
    return directory


# --- the line-up ------------------------------------------------------------------------------------------------------


def test_baseline_entries_name_a_model_and_only_known_settings():
    assert model_spec("sentence-transformers/all-mpnet-base-v2") == ModelSpec("sentence-transformers/all-mpnet-base-v2",
                                                                              "all-mpnet-base-v2")  # fmt: skip
    spec = model_spec({"model": SMOLLM2, "as_trained": True})
    assert spec.label == "SmolLM2-135M-Instruct (no training)" and spec.as_trained
    assert spec.evaluate_kwargs("auto") == {"pooling": None, "max_len": None, "instructions": "auto"}
    explicit = model_spec({"model": SMOLLM2, "label": "base", "pooling": "last", "max_len": 128, "instructions": "on"})
    assert explicit.evaluate_kwargs("off") == {"pooling": "last", "max_len": 128, "instructions": "on"}
    for bad, message in (({"model": SMOLLM2, "max_length": 3}, "unknown setting max_length"),
                         ({"model": SMOLLM2, "pooling": "first"}, "pooling must be one of"),
                         ({"model": SMOLLM2, "instructions": "yes"}, "instructions must be one of"),
                         ({"label": "x"}, "give a model name")):  # fmt: skip
        with pytest.raises(SynthembedError, match=message):
            model_spec(bad)


def test_as_trained_takes_the_trained_models_settings_and_refuses_unfair_ones(tmp_path, tiny_mistral):
    a = fake_export(tmp_path / "a" / "merged", str(tiny_mistral), max_len=48)
    b = fake_export(tmp_path / "b" / "merged", str(tiny_mistral), max_len=48)
    other = fake_export(tmp_path / "c" / "merged", "some/other-model", max_len=256, pooling="mean")
    base = model_spec({"model": str(tiny_mistral), "as_trained": True})
    spec = embed_as_trained(base, {"a": a, "b": b, "c": other})
    assert (spec.pooling, spec.max_len, spec.instructions) == ("last", 48, "on")  # c was trained from another base
    assert embed_as_trained(base, {"c": other}) == base  # nothing trained from it: its own settings
    with pytest.raises(SynthembedError, match="max_len 32, but a, b embed with max_len 48; the comparison would not"):
        embed_as_trained(model_spec({"model": str(tiny_mistral), "max_len": 32, "as_trained": True}), {"a": a, "b": b})
    plain = fake_export(tmp_path / "d" / "merged", str(tiny_mistral), max_len=48, instructions=False)
    with pytest.raises(SynthembedError, match="embed differently"):
        embed_as_trained(base, {"a": a, "d": plain})


def test_a_hub_id_and_its_local_copy_are_one_base(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHEMBED_MODELS", str(tmp_path / "models"))
    (tmp_path / "models" / "smollm2-135m-instruct").mkdir(parents=True)
    (tmp_path / "models" / "smollm2-135m-instruct" / "config.json").write_text("{}")
    trained = fake_export(tmp_path / "run" / "merged", SMOLLM2, max_len=128)  # exports record the hub id
    spec = embed_as_trained(model_spec({"model": str(tmp_path / "models" / "smollm2-135m-instruct"), "as_trained": True}),
                            {"synthetic": trained})  # fmt: skip
    assert spec.max_len == 128


def test_lineup_orders_untrained_then_ours_then_published_baselines(tmp_path, tiny_mistral):
    trained = {"synthetic": fake_export(tmp_path / "s" / "merged", str(tiny_mistral)),
               "synthetic+labeled": fake_export(tmp_path / "l" / "merged", str(tiny_mistral))}  # fmt: skip
    models = lineup(["all-MiniLM-L6-v2", "all-mpnet-base-v2", {"model": str(tiny_mistral), "as_trained": True}], trained)
    assert list(models) == [f"{tiny_mistral.name} (no training)", "ours: synthetic", "ours: synthetic+labeled",
                            "all-MiniLM-L6-v2", "all-mpnet-base-v2"]  # fmt: skip
    assert models[f"{tiny_mistral.name} (no training)"].max_len == 64 and models["ours: synthetic"].trained
    assert models["all-MiniLM-L6-v2"].evaluate_kwargs("auto")["instructions"] == "auto"  # scored as published
    with pytest.raises(SynthembedError, match="two models are labelled 'all-MiniLM-L6-v2'"):
        lineup(["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"], {})


def test_a_hub_id_is_loaded_not_taken_for_a_missing_directory(tmp_path):
    sts = make_sts(tmp_path / "sts")
    with pytest.raises(SynthembedError, match="does not exist"):
        evaluate_model(str(tmp_path / "no" / "model"), [str(sts)], cache_dir=tmp_path / "cache")
    # org/name is a hub id: resolved to a local copy where there is one, else transformers says it cannot load it
    with pytest.raises(SynthembedError, match="cannot load model 'no-such-org/no-such-model'"):
        evaluate_model("no-such-org/no-such-model", [str(sts)], cache_dir=tmp_path / "cache")


# --- the untrained decoder embeds as its trained models do --------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_lr_export(tiny_mistral, tmp_path_factory):
    """A real training run on the tiny Mistral whose optimizer cannot move a weight (lr 0, LoRA's B starts at zero):
    its merged export has the base model's weights and the settings training records (max_len 48, instructions)."""
    from synthembed.data import Example, write_jsonl
    from synthembed.training.args import TrainArguments
    from synthembed.training.loop import train

    root = tmp_path_factory.mktemp("zero-lr")
    rows = [Example(id=str(i), task_type="short-long", task="Retrieve passages about the topic", language="English",
                    query=a, positive=b, negative=PAIRS[(i + 3) % len(PAIRS)][1])
            for i, (a, b, _) in enumerate(PAIRS)]  # fmt: skip
    write_jsonl(root / "examples.jsonl", rows)
    out = train(TrainArguments(
        data=[str(root / "examples.jsonl")], base_model=str(tiny_mistral), out=str(root / "run"), batch_size=4,
        max_steps=1, max_len=48, lr=1e-12, warmup_steps=0,  # lr must be > 0; 1e-12 moves nothing in float32
        save_every=0, progress=False, gradient_checkpointing=False,
    ))  # fmt: skip
    return out / "merged"


def test_untrained_base_embeds_like_its_export_after_a_training_run_that_changes_nothing(
    tiny_mistral, zero_lr_export, tmp_path
):
    from synthembed.model import load_embedder

    models = lineup([{"model": str(tiny_mistral), "as_trained": True}], {"zero-lr": zero_lr_export})
    base = models[f"{tiny_mistral.name} (no training)"]
    assert (base.pooling, base.max_len, base.instructions) == ("last", 48, "on")

    texts = [a for a, _, _ in PAIRS]  # two are far longer than 48 tokens
    ours = load_embedder(str(zero_lr_export), device="cpu")
    untrained = load_embedder(base.model, pooling=base.pooling, max_len=base.max_len, device="cpu")
    task = "Retrieve passages about the topic"
    np.testing.assert_allclose(untrained.encode_queries(texts, task=task, show_progress=False),
                               ours.encode_queries(texts, task=task, show_progress=False), atol=1e-6)  # fmt: skip
    # the control: the base with its own settings (max_len 512) reads past the 48 tokens training embedded
    own = load_embedder(base.model, device="cpu").encode(texts, show_progress=False)
    assert np.abs(own - ours.encode(texts, show_progress=False)).max() > 1e-3

    # and through evaluate_model, instructions and all: the same score to the last digit
    sts = make_sts(tmp_path / "sts")
    kwargs = {"cache_dir": tmp_path / "cache", "show_progress": False, "device": "cpu"}
    r_base = evaluate_model(base.model, [str(sts)], **base.evaluate_kwargs("auto"), **kwargs)
    r_ours = evaluate_model(str(zero_lr_export), [str(sts)], **models["ours: zero-lr"].evaluate_kwargs("auto"), **kwargs)
    assert r_base["instructions"] is r_ours["instructions"] is True
    assert r_base["max_len"] == r_ours["max_len"] == 48 and r_base["pooling"] == r_ours["pooling"] == "last"
    score = r_base["tasks"][0]["main_score"]
    assert np.isfinite(score) and score == pytest.approx(r_ours["tasks"][0]["main_score"], abs=1e-9)


@pytest.mark.slow
def test_real_smollm2_untrained_is_a_last_token_pool_at_eos_with_the_instruction(tmp_path):
    """SmolLM2-135M-Instruct through notebook 04's path (as_trained, the mteb encoder) against the hidden state of its
    own EOS computed by hand with transformers: one text at a time, no padding."""
    import mteb
    import torch
    from mteb.types import PromptType
    from transformers import AutoModel, AutoTokenizer

    from synthembed.evaluation.encoder import MtebEncoder
    from synthembed.model import load_embedder

    path = real_model(SMOLLM2)
    trained = fake_export(tmp_path / "smollm2-run" / "merged", SMOLLM2, max_len=24)
    spec = lineup([{"model": SMOLLM2, "as_trained": True}], {"run": trained})["SmolLM2-135M-Instruct (no training)"]
    encoder = MtebEncoder(load_embedder(spec.model, pooling=spec.pooling, max_len=spec.max_len, device="cpu"),
                          name=spec.model, instructions=spec.instructions == "on", show_progress=False)  # fmt: skip
    metadata = mteb.get_task("STSBenchmark").metadata
    texts = [a for a, _, _ in PAIRS[:5]]  # the fifth is longer than 24 tokens
    got = encoder.encode([{"text": texts}], task_metadata=metadata, hf_split="test", hf_subset="default",
                         prompt_type=PromptType.query)  # fmt: skip
    instruction = encoder.instruction(metadata, PromptType.query)
    assert instruction  # STS queries carry the task's instruction

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    expected = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(f"Instruct: {instruction}\nQuery: {text}", truncation=True, max_length=23)["input_ids"]
            hidden = model(input_ids=torch.tensor([ids + [tokenizer.eos_token_id]])).last_hidden_state[0, -1]
            expected.append(torch.nn.functional.normalize(hidden, dim=-1).numpy())
    np.testing.assert_allclose(got, np.stack(expected), atol=2e-5)


# --- all-mpnet-base-v2 as MTEB published it -----------------------------------------------------------------------------


def test_mpnet_targets_are_mtebs_published_scores():
    """Pinned as MTEB's results repository holds them (reference.py cites the files)."""
    assert PUBLISHED["all-mpnet-base-v2"] == {"SciFact": 65.57, "STSBenchmark": 83.42, "SICK-R": 80.59,
                                              "Banking77Classification": 81.70}  # fmt: skip


@pytest.mark.slow
@pytest.mark.realdata
def test_mpnet_reproduces_published_stsbenchmark(shared_data, tmp_path):
    real_model("sentence-transformers/all-mpnet-base-v2")
    results = evaluate_model("all-mpnet-base-v2", [str(shared_data / "sts" / "stsbenchmark")], device="cpu",
                             cache_dir=tmp_path / "cache", batch_size=64, show_progress=False)  # fmt: skip
    (entry,) = results["tasks"]
    assert results["instructions"] is False and results["pooling"] == "mean" and results["max_len"] == 384
    assert entry["data_subset"] is None and subset_note(entry) is None  # the whole test split: 1,379 pairs
    score = 100 * entry["main_score"]
    assert score == pytest.approx(PUBLISHED["all-mpnet-base-v2"]["STSBenchmark"], abs=0.3), f"{score:.2f}"


# --- tables that say what data they are on ------------------------------------------------------------------------------


def test_limited_local_tasks_record_the_subset_they_ran_on(tmp_path, tiny_mistral):
    sts, beir = make_sts(tmp_path / "sts"), make_beir(tmp_path / "beir")
    kwargs = {"cache_dir": tmp_path / "cache", "show_progress": False, "device": "cpu"}
    limited = evaluate_model(str(tiny_mistral), [str(sts), str(beir)], limit=3, **kwargs)
    assert [t["data_subset"] for t in limited["tasks"]] == [{"count": 3, "unit": "pairs"}, {"count": 3, "unit": "queries"}]
    whole = evaluate_model(str(tiny_mistral), [str(sts)], **kwargs)
    assert whole["tasks"][0]["data_subset"] is None
    frame = task_table({"tiny": limited})
    assert list(frame.columns[-2:]) == ["data", "protocol"]  # the notes come last, after the scores
    assert list(frame["data"]) == ["subset: 3 pairs", "subset: 3 queries"]
    assert list(frame["protocol"]) == ["not an mteb task: min_score 0, max_score 5", "not an mteb task: ignore_identical_ids False"]


def _run(scores: dict[str, tuple[str, float]], note: dict | None = None) -> dict:
    tasks = [{"name": name, "kind": kind, "main_score": score, "main_score_name": "m", "limit": 40 if note else None,
              "data_subset": (note or {}).get(name)} for name, (kind, score) in scores.items()]  # fmt: skip
    return {"tasks": tasks, "averages": averages(tasks), "instructions": False}


def test_model_table_has_the_shape_of_table_1_and_marks_subsets():
    whole = {"SciFact": ("retrieval", 0.60), "STSBenchmark": ("sts", 0.80), "SICK-R": ("sts", 0.70)}
    runs = {"base (no training)": _run({k: (kind, v / 2) for k, (kind, v) in whole.items()}),
            "all-mpnet-base-v2": _run(whole)}  # fmt: skip
    table = model_table(runs).set_index("model")
    assert list(table.columns) == ["SciFact", "STSBenchmark", "SICK-R", "retrieval", "sts", "average"]
    assert list(table.index) == ["base (no training)", "all-mpnet-base-v2", "all-mpnet-base-v2 (MTEB, published)"]
    assert table.loc["all-mpnet-base-v2", "sts"] == 75.0 and table.loc["all-mpnet-base-v2", "average"] == 70.0
    mpnet = PUBLISHED["all-mpnet-base-v2"]
    assert table.loc["all-mpnet-base-v2 (MTEB, published)", "SICK-R"] == mpnet["SICK-R"]
    assert table.loc["all-mpnet-base-v2 (MTEB, published)", "average"] == pytest.approx(
        (mpnet["SciFact"] + mpnet["STSBenchmark"] + mpnet["SICK-R"]) / 3, abs=0.01)

    # on subsets every such column says so, and a published score (whole tasks) fills none of them
    notes = {"SciFact": {"count": 40, "unit": "queries"}, "STSBenchmark": {"count": 40, "unit": "pairs"},
             "SICK-R": {"count": 40, "unit": "pairs"}}  # fmt: skip
    subsets = model_table({"all-mpnet-base-v2": _run(whole, notes)})
    assert list(subsets.columns) == ["model", "SciFact (subset: 40 queries)", "STSBenchmark (subset: 40 pairs)",
                                     "SICK-R (subset: 40 pairs)", "retrieval (subsets)", "sts (subsets)",
                                     "average (subsets)"]  # fmt: skip
    assert list(subsets["model"]) == ["all-mpnet-base-v2"]
    assert subsets.attrs["bar_columns"] == list(subsets.columns[1:4]) + ["average (subsets)"]
    categories = category_table({"all-mpnet-base-v2": _run(whole, notes)})
    assert list(categories["category"]) == ["retrieval (subsets)", "sts (subsets)", "average (subsets)"]

    # a benchmark's worth of tasks: the bar plot shows the categories, not 20 task groups
    many = {f"STS{i}": ("sts", 0.5) for i in range(20)} | {"SciFact": ("retrieval", 0.6)}
    assert model_table({"m": _run(many)}).attrs["bar_columns"] == ["retrieval", "sts", "average"]


def test_model_scores_plot_draws_a_bar_per_model_and_column(tmp_path):
    from synthembed import plots

    runs = {"a": _run({"SciFact": ("retrieval", 0.5), "SICK-R": ("sts", 0.7)}),
            "all-MiniLM-L6-v2": _run({"SciFact": ("retrieval", 0.64), "SICK-R": ("sts", 0.77)})}  # fmt: skip
    table = model_table(runs)
    fig = plots.plot_model_scores(table, path=tmp_path / "models.png")
    assert (tmp_path / "models.png").stat().st_size > 0
    heights = sorted(p.get_height() for p in fig.axes[0].patches)  # 3 rows x (2 tasks + the average)
    minilm = PUBLISHED["all-MiniLM-L6-v2"]
    published_average = (minilm["SciFact"] + minilm["SICK-R"]) / 2
    expected = [50.0, 70.0, 60.0, 64.0, 77.0, 70.5, minilm["SciFact"], minilm["SICK-R"], published_average]
    assert heights == pytest.approx(sorted(expected), abs=0.01)
