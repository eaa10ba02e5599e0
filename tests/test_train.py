"""Training: only LoRA weights train; SIGKILL then --resume gives the losses of an uninterrupted run; the exported
merged model loads in sentence-transformers and embeds exactly like our Embedder; bad input fails clearly."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

from synthembed.cli import main
from synthembed.data import Example, write_jsonl
from synthembed.errors import SynthembedError
from synthembed.training.args import TrainArguments, check_batch_sizes
from synthembed.training.data import BatchPlan, TrainingPair, load_pairs
from synthembed.training.log import TrainLog, log_summary, read_train_log, training_summary
from synthembed.training.loop import train

WORDS = "apple river protein gene planet ocean forest music city virus star cell drug mountain".split()


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """48 synthetic examples over three task groups (one without hard negatives)."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(48):
        task_type = ("short-long", "sts", "short-short")[i % 3]
        query = " ".join(rng.choice(WORDS) for _ in range(3))
        rows.append(
            Example(
                id=str(i), task_type=task_type, task="Retrieve relevant passages", language="English", query=query,
                positive=query + " " + " ".join(rng.choice(WORDS) for _ in range(6)),
                negative=None if task_type == "short-short" else " ".join(rng.choice(WORDS) for _ in range(6)),
            )
        )
    path = tmp_path_factory.mktemp("data") / "examples.jsonl"
    write_jsonl(path, rows)
    return path


def _args(examples, base, out, **overrides):
    settings = dict(
        data=[str(examples)], base_model=str(base), out=str(out), batch_size=8, mini_batch_size=4, max_steps=6,
        warmup_steps=2, max_len=32, save_every=2, seed=3, progress=False, gradient_checkpointing=False,
    )
    settings.update(overrides)
    return TrainArguments(**settings)


def _losses(out):
    with (out / "train_log.csv").open() as handle:
        return [(int(r["step"]), float(r["loss"]), float(r["lr"])) for r in csv.DictReader(handle)]


def test_batch_sizes_must_divide():
    assert check_batch_sizes(2048, 64, 32) == (64, 64)
    assert check_batch_sizes(16, None, 1) == (16, 16)
    with pytest.raises(SynthembedError, match="number of processes"):
        check_batch_sizes(10, None, 4)
    with pytest.raises(SynthembedError, match="--mini-batch-size 3 does not divide"):
        check_batch_sizes(16, 3, 1)


def test_switches_have_one_field_and_every_spelling():
    """One field per setting: gradient_checkpointing is on by default and both spellings reach it; --quiet turns
    `progress` off; the flags users type stay as they were."""
    from synthembed.cli import build_parser

    parser = build_parser("train")
    required = ["train", "--data", "a.jsonl,b", "--base-model", "m", "--out", "o"]
    defaults = parser.parse_args(required)
    assert defaults.gradient_checkpointing and defaults.progress and not defaults.no_lora and not defaults.resume
    assert not parser.parse_args([*required, "--no-gradient-checkpointing"]).gradient_checkpointing
    assert parser.parse_args([*required, "--gradient-checkpointing"]).gradient_checkpointing
    flags = parser.parse_args([*required, "--quiet", "--no-lora", "--no-export", "--resume", "--mix", "1,0.5"])
    assert (flags.progress, flags.no_lora, flags.no_export, flags.resume, flags.mix) == (False, True, True, True, [1, 0.5])
    assert defaults.data == ["a.jsonl", "b"]
    assert not any(f.name.startswith("no_gradient") for f in dataclasses.fields(TrainArguments))


def test_train_log_resumes_and_summarises(tmp_path):
    log = TrainLog(tmp_path, keep_until=0, enabled=True)
    for step, loss in enumerate([3.0, 2.0, 1.0, 0.5, 0.25], start=1):
        log.write(step=step, epoch=0, loss=loss, lr=0.1, grad_norm=1, pairs_per_s=1, tokens_per_s=10 * step, elapsed_s=step)
    TrainLog(tmp_path, keep_until=4, enabled=True)  # resumed from step 4: step 5, never checkpointed, goes
    assert [row["step"] for row in read_train_log(tmp_path)] == [1, 2, 3, 4]
    assert log_summary(tmp_path) == {"steps": 4, "first loss": 2.0, "last loss": 3.5 / 3, "tokens/s (median)": 25.0}
    numbers = training_summary(tmp_path.parent, pairs=9, synthetic_used=False,
                               similarities={tmp_path.name: {"top1 after": 0.5}}, st_max_abs_diff={tmp_path.name: 0.0})
    assert numbers["pairs"] == 9 and numbers["synthetic_used"] is False
    assert numbers[tmp_path.name] == {**log_summary(tmp_path), "top1 after": 0.5, "st_max_abs_diff": 0.0,
                                      "merged": str(tmp_path / "merged"), "adapter": str(tmp_path / "adapter")}


def test_batch_plan_covers_each_epoch_and_groups():
    pairs = [TrainingPair(query=str(i), positive="p", task_type=("sts", "short-long")[i % 2]) for i in range(20)]
    plan = BatchPlan(pairs, batch_size=4, seed=0)
    epoch = [p.query for s in range(plan.steps_per_epoch) for p in plan.batch(s)]
    assert len(epoch) == len(set(epoch)) == 20
    assert [p.query for p in plan.batch(5)] != [p.query for p in plan.batch(0)]  # a new permutation each epoch
    assert [p.query for p in BatchPlan(pairs, 4, seed=0).batch(7)] == [p.query for p in plan.batch(7)]
    grouped = BatchPlan(pairs, batch_size=4, seed=0, group_by_task_type=True)
    for s in range(grouped.steps_per_epoch * 2):
        assert len({p.task_type for p in grouped.batch(s)}) == 1
    with pytest.raises(SynthembedError, match="do not fill one batch"):
        BatchPlan(pairs[:3], batch_size=4)


@pytest.mark.slow
def test_only_lora_weights_train_and_schedule(examples, tiny_mistral, tmp_path):
    from safetensors.torch import load_file

    out = train(_args(examples, tiny_mistral, tmp_path / "run", max_steps=4, no_export=True))
    trained = load_file(out / "checkpoints" / "step-000004" / "model.safetensors")
    base = load_file(tiny_mistral / "model.safetensors")
    lora = {k: v for k, v in trained.items() if "lora_" in k}
    assert lora and any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())  # B starts at zero
    targets = {k.split(".lora_")[0].split("base_model.model.")[-1] for k in lora}
    assert {"layers.0.self_attn.q_proj", "layers.1.mlp.down_proj"} <= targets  # all linear layers
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in trained.items() if "lora_" not in k}
    assert set(frozen) == set(base)
    for name, value in base.items():
        assert (frozen[name] == value).all(), f"{name} changed but is not a LoRA weight"
    lrs = [lr for _, _, lr in _losses(out)]
    peak = 1e-4
    assert lrs == pytest.approx([peak / 3, peak * 2 / 3, peak, peak / 2])  # 2 warm-up steps, linear decay to 0 at 4


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(examples, tiny_mistral, tmp_path):
    full = train(_args(examples, tiny_mistral, tmp_path / "full", no_export=True))
    expected = _losses(full)
    assert len(expected) == 6 and len({loss for _, loss, _ in expected}) == 6

    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import json, os, signal
        from synthembed.training.args import TrainArguments
        from synthembed.training.loop import train
        args = TrainArguments(**json.loads({json.dumps(json.dumps(_args(examples, tiny_mistral, killed, no_export=True).__dict__))}))
        train(args, on_step=lambda step, loss: step == 5 and os.kill(os.getpid(), signal.SIGKILL))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [s for s, _, _ in _losses(killed)] == [1, 2, 3, 4, 5]  # step 5 was logged, its checkpoint never written
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-000002", "step-000004"]

    code = main(["train", "--data", str(examples), "--base-model", str(tiny_mistral), "--out", str(killed), "--resume",
                 "--batch-size", "8", "--mini-batch-size", "4", "--max-steps", "6", "--warmup-steps", "2",
                 "--max-len", "32", "--save-every", "2", "--seed", "3", "--no-export", "--quiet"])
    assert code == 0
    resumed = _losses(killed)
    assert [s for s, _, _ in resumed] == [1, 2, 3, 4, 5, 6]
    for (step, loss, lr), (_, want, want_lr) in zip(resumed, expected, strict=True):
        assert loss == pytest.approx(want, abs=1e-6), f"step {step}"
        assert lr == pytest.approx(want_lr)


@pytest.mark.slow
def test_in_batch_negatives_switched_off_for_one_task_group(examples, tiny_mistral, tmp_path):
    """The first logged loss (before any update; LoRA starts as a no-op) equals info_nce on the base model's embeddings
    of the first batch, with in-batch negatives off for exactly the sts rows; and it differs from the default's."""
    import torch

    from synthembed.losses import info_nce
    from synthembed.model import load_embedder

    settings = dict(max_steps=1, save_every=0, no_export=True, lora_dropout=0.0)
    off = _args(examples, tiny_mistral, tmp_path / "off", no_in_batch_negatives_for=["sts"], **settings)
    train(off)
    train(_args(examples, tiny_mistral, tmp_path / "on", **settings))
    rows = BatchPlan(load_pairs(off.data, seed=off.seed), off.batch_size, seed=off.seed).batch(0)
    flags = [r.task_type != "sts" for r in rows]
    assert 0 < flags.count(False) < len(flags)  # the batch mixes groups
    emb = load_embedder(str(tiny_mistral), max_len=32, device="cpu")
    with torch.no_grad():
        embed = lambda texts: emb.embed(emb.tokenize(texts))  # noqa: E731
        q, p = embed([r.query for r in rows]), embed([r.positive for r in rows])
        present = [i for i, r in enumerate(rows) if r.negative is not None]
        n = q.new_zeros(q.shape).index_copy(0, torch.tensor(present), embed([rows[i].negative for i in present]))
        texts = dict(q_texts=[r.query for r in rows], p_texts=[r.positive for r in rows],
                     n_texts=[r.negative for r in rows])  # fmt: skip
        want_off = info_nce(q, p, n, in_batch_negatives=flags, **texts).item()
        want_on = info_nce(q, p, n, **texts).item()
    assert _losses(tmp_path / "off")[0][1] == pytest.approx(want_off, abs=1e-5)
    assert _losses(tmp_path / "on")[0][1] == pytest.approx(want_on, abs=1e-5)
    assert want_off != pytest.approx(want_on, abs=1e-3)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(examples, tiny_mistral, tmp_path):
    """torchrun with 2 CPU processes (gloo) and the global batch split between them: the gathered in-batch negatives
    make every step's loss, and the trained weights, those of one process holding the whole batch. No dropout, so
    both runs draw the same (no) random masks; the cached loss with mini-batch 2 runs on both sides."""
    import numpy as np

    from synthembed.model import load_embedder

    flags = ["--data", str(examples), "--base-model", str(tiny_mistral), "--batch-size", "8", "--mini-batch-size", "2",
             "--max-steps", "4", "--warmup-steps", "1", "--max-len", "32", "--save-every", "0", "--seed", "3",
             "--lora-dropout", "0", "--lr", "1e-3", "--quiet"]
    assert main(["train", "--out", str(tmp_path / "one"), *flags]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--module",
         "synthembed.cli", "train", "--out", str(tmp_path / "two"), *flags],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _, _ in two] == [1, 2, 3, 4]
    for (step, loss, _), (_, want, _) in zip(two, one, strict=True):
        assert loss == pytest.approx(want, abs=1e-5), f"step {step}"
    assert len({round(loss, 4) for _, loss, _ in one}) == 4  # the weights moved between steps
    texts = ["apple river", "protein gene planet star", "x"]
    a = load_embedder(str(tmp_path / "one" / "adapter"), device="cpu").encode(texts, show_progress=False)
    b = load_embedder(str(tmp_path / "two" / "adapter"), device="cpu").encode(texts, show_progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiny-mistral-lora", "minilm-full"])
def test_export_loads_in_sentence_transformers(kind, examples, tiny_mistral, minilm, tmp_path):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from synthembed.evaluation.run import uses_instructions
    from synthembed.model import load_embedder

    lora = kind.endswith("lora")
    base = tiny_mistral if kind.startswith("tiny") else minilm
    out = train(_args(examples, base, tmp_path / "run", max_steps=2, save_every=0, no_lora=not lora, lr=1e-3,
                      query_task="Retrieve relevant passages"))
    assert (out / "adapter" / "adapter_config.json").is_file() == lora
    config = json.loads((out / "merged" / "synthembed_config.json").read_text())
    assert config["pooling"] == ("last" if lora else "mean") and config["max_len"] == 32
    assert config["instructions"] is True and uses_instructions(str(out / "merged"))
    texts = ["apple river", "protein gene planet " * 20, "x"]  # the long one is truncated: EOS must survive
    st = SentenceTransformer(str(out / "merged"), device="cpu")
    ours = load_embedder(str(out / ("adapter" if lora else "merged")), device="cpu")
    np.testing.assert_allclose(st.encode(texts), ours.encode_documents(texts, show_progress=False), atol=1e-5)
    np.testing.assert_allclose(
        st.encode(texts, prompt_name="query"),
        ours.encode_queries(texts, task="Retrieve relevant passages", show_progress=False),
        atol=1e-5,
    )
    before = load_embedder(str(base), max_len=32, device="cpu").encode(texts, show_progress=False)
    assert np.abs(before - st.encode(texts)).max() > 1e-4  # training changed the model
    if lora:
        batch = st.tokenize(texts)  # right padding: the last real token sits at mask.sum() - 1
        last = [int(row[int(mask.sum()) - 1]) for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
        assert last == [st.tokenizer.eos_token_id] * 3  # the merged tokenizer ends every text with EOS itself


def test_export_without_instructions_says_so(minilm, tmp_path):
    """BEIR data with --beir-instruction none trains plain queries: the export records that, evaluation's auto mode
    then leaves queries plain, and the sentence-transformers query prompt is empty."""
    from sentence_transformers import SentenceTransformer

    from synthembed.evaluation.run import uses_instructions

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    topics = ["cats purr", "rivers flow", "stars shine", "genes code", "drugs bind", "cells divide", "oceans rise", "music plays"]
    write_jsonl(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": f"{t} every day"} for i, t in enumerate(topics)])
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": f"why {t}"} for i, t in enumerate(topics)])
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(8)))
    out = train(TrainArguments(
        data=[str(beir)], base_model=str(minilm), out=str(tmp_path / "run"), batch_size=8, max_steps=1, max_len=32,
        no_lora=True, beir_instruction="none", hard_negatives="none", save_every=0, progress=False,
        gradient_checkpointing=False,
    ))
    config = json.loads((out / "merged" / "synthembed_config.json").read_text())
    assert config["instructions"] is False and config["query_task"] is None
    assert not uses_instructions(str(out / "merged"))
    st = SentenceTransformer(str(out / "merged"), device="cpu")
    assert st.prompts["query"] == ""


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "1"\n', "line 1: not valid JSON"),
        (json.dumps({"id": "1", "task_type": "sts", "task": "t", "language": "en", "query": "q"}) + "\n", "line 1: positive"),
        ("", "no examples"),
    ],
    ids=["malformed", "missing-field", "empty"],
)
def test_bad_examples_file(content, message, tmp_path, capsys):
    path = tmp_path / "examples.jsonl"
    path.write_text(content)
    code = main(["train", "--data", str(path), "--base-model", "nowhere", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not (tmp_path / "o").exists()


def test_bad_settings(examples, tmp_path, capsys):
    base = ["train", "--data", str(examples), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(base + ["--base-model", str(tmp_path / "no-such-model")]) == 2
    assert "cannot load model" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(base + ["--base-model", "x", "--batch-size", "8", "--mini-batch-size", "3"]) == 2
    assert "--mini-batch-size 3 does not divide" in capsys.readouterr().err
    assert main(base + ["--base-model", "x", "--no-in-batch-negatives-for", "long-short,classification"]) == 2
    assert "unknown task group classification" in capsys.readouterr().err
    assert main(base + ["--base-model", "x", "--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    # a finished run is never overwritten: a non-empty --out without --resume is refused and left as it was
    (tmp_path / "o" / "checkpoints" / "step-000002").mkdir(parents=True)
    marker = tmp_path / "o" / "checkpoints" / "step-000002" / "trainer_state.json"
    marker.write_text('{"step": 2}')
    assert main(base + ["--base-model", "x"]) == 2
    assert "not empty; pass --resume" in capsys.readouterr().err and marker.read_text() == '{"step": 2}'


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_launch_without_gpu_is_a_clear_error(variable, examples, tiny_mistral, tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only message")
    monkeypatch.setenv(variable, "true")  # what `accelerate launch --config_file configs/fsdp.yaml` sets
    code = main(["train", "--data", str(examples), "--base-model", str(tiny_mistral), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "needs CUDA devices" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_launch_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    from synthembed.paths import repo_root

    configs = repo_root() / "configs"
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type.value for p in configs.glob("*.yaml")}
    assert kinds == {"cpu": "NO", "single_gpu": "NO", "ddp": "MULTI_GPU", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}
    ds = load_config_from_file(str(configs / "deepspeed_zero3.yaml")).deepspeed_config
    zero = json.loads((repo_root() / ds["deepspeed_config_file"]).read_text())["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]


def test_a_warm_up_longer_than_the_run_is_named_with_the_peak_it_reaches():
    from synthembed.training.loop import _lr_factor, warmup_warning

    message = warmup_warning(100, 10, 2e-4)
    # 10 steps of a 100-step warm-up: the last step runs at 10/101 of --lr
    assert "1.98e-05" in message and "--warmup-steps 100" in message and "about 1)" in message
    assert _lr_factor(9, 100, 10) == pytest.approx(10 / 101)
    assert warmup_warning(100, 1000, 1e-4) is None and warmup_warning(3, 24, 1e-3) is None
