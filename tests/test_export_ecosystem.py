"""Exports in the ecosystem: the named prompts give sentence-transformers and plain mteb the scores `synthembed evaluate`
gives; mteb's own get_model loads an export with its ModelMeta; the model card parses as Hub metadata, counts what the
run trained on, carries the scores in model-index form and its usage snippets embed as the model does; --push-to-hub
uploads that folder (HfApi faked: no network) and refuses without a token.

One real run serves most tests: a generation run through the loopback stand-in LLM, then `synthembed train` of the
tiny Mistral for two steps on its examples and a small labeled folder named scifact. The score comparisons use
all-MiniLM-L6-v2 written as an export trained with instructions: a random tiny model scores zero on retrieval, where
equal scores would prove nothing.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from synthembed.cli import main
from synthembed.data import format_query, write_jsonl
from synthembed.errors import SynthembedError
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.testing.loopback import LoopbackServer
from synthembed.training.args import TrainArguments
from synthembed.training.loop import train

SCIFACT_TASK = "Given a scientific claim, retrieve documents that support or refute the claim"
TOPICS = ["vitamin d colds", "statins muscle pain", "coffee heart rhythm", "sleep memory recall",
          "aspirin stroke risk", "exercise blood pressure", "sugar tooth decay", "smoking lung cancer"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_mistral):
    """(training run directory, generation run directory): a real generation run and two steps of real training."""
    root = tmp_path_factory.mktemp("ecosystem")
    config = GenerateConfig(model="loopback", tasks_per_type=1, examples_per_task=3, languages="English,German", seed=0)
    with LoopbackServer() as server:
        generate(root / "gen", config, base_url=server.base_url, concurrency=4, backoff=0.01, progress=False)
    beir = root / "labeled" / "scifact"  # named like the mteb task, so the export lists SciFact among its training data
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(
        beir / "corpus.jsonl", [{"_id": f"d{i}", "title": t, "text": f"{t} in a trial"} for i, t in enumerate(TOPICS)]
    )
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": f"{t} claim"} for i, t in enumerate(TOPICS)])
    (beir / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(8))
    )
    out = train(TrainArguments(
        data=[str(root / "gen" / "examples.jsonl"), str(beir)], mix=[1.0, 0.5], base_model=str(tiny_mistral),
        out=str(root / "train"), batch_size=4, max_steps=2, max_len=48, lr=1e-3, save_every=0, seed=1, progress=False,
        gradient_checkpointing=False,
    ))  # fmt: skip
    return out, root / "gen"


def _st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def test_the_prompts_pick_the_instruction_synthembed_evaluate_uses_for_every_mteb_task(run):
    """For every text task mteb knows and each side (query, symmetric, document), the prompt mteb's sentence-transformers
    wrapper picks from the export's prompts is the one synthembed's own encoder prepends."""
    import mteb
    from mteb.models.abs_encoder import get_prompt_name
    from mteb.types import PromptType

    from synthembed.evaluation.encoder import MtebEncoder
    from synthembed.model import LazyEmbedder

    prompts = json.loads((run[0] / "merged" / "config_sentence_transformers.json").read_text())["prompts"]
    ours = MtebEncoder(LazyEmbedder(str(run[0] / "merged"), {}), name="m", instructions=True)
    unnamed = {PromptType.query: prompts["query"], PromptType.document: prompts["document"], None: ""}  # ST's fallbacks
    checked = 0
    for task in mteb.get_tasks():
        metadata = task.metadata
        if list(metadata.modalities) != ["text"] or task.is_aggregate:
            continue
        for side in (PromptType.query, None, PromptType.document):
            if side is None and isinstance(metadata.prompt, dict):
                continue  # a per-side prompt asked for no side: mteb hands back the mapping itself (not an instruction)
            name = get_prompt_name(prompts, metadata, side)
            picked = prompts[name] if name else unnamed[side]
            instruction = ours.instruction(metadata, side)
            assert picked == (format_query(instruction, "") if instruction else ""), (metadata.name, side, name)
            checked += 1
    assert checked > 2500
    assert prompts["SciFact"] == format_query(SCIFACT_TASK, "") and prompts["SciFact-document"] == ""
    assert prompts["STS"] == "Instruct: Retrieve semantically similar text.\nQuery: "


def test_prompt_names_embed_as_synthembed_does(run):
    from synthembed.model import load_embedder

    merged = run[0] / "merged"
    st, ours = _st(merged), load_embedder(str(merged), device="cpu")
    texts = ["vitamin d prevents colds", "statins " * 40]  # the long one is cut: EOS must still be the pooled token
    for prompt_name, task in [
        ("SciFact", SCIFACT_TASK),
        ("STS", "Retrieve semantically similar text."),
        ("query", json.loads((merged / "synthembed_config.json").read_text())["query_task"]),
    ]:
        np.testing.assert_allclose(st.encode(texts, prompt_name=prompt_name),
                                   ours.encode_queries(texts, task=task, show_progress=False), atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(st.encode_document(texts), ours.encode_documents(texts, show_progress=False), atol=1e-5)


def _local_tasks(shared_data, unknown, limit=30):
    """Local tasks, one of each prompt path: SICK-R (symmetric, its type's instruction), SciFact (queries with the
    task's own instruction, documents plain) and an STS folder mteb does not know (the kind's instruction)."""
    from synthembed.evaluation.tasks import local_task

    return [local_task(shared_data / "sts" / "sick-r", limit=limit), local_task(shared_data / "beir" / "scifact", limit=3),
            local_task(unknown, name="my-sts", limit=limit)]  # fmt: skip


@pytest.fixture(scope="module")
def minilm_export(minilm, tmp_path_factory):
    """all-MiniLM-L6-v2 written as an export trained with instructions (mean pooling, an encoder): a real model whose
    scores on a few queries are far from zero, so that equal scores mean equal embeddings."""
    from synthembed.model import load_embedder
    from synthembed.training.args import DEFAULT_QUERY_TASK
    from synthembed.training.export import write_sentence_transformers

    emb = load_embedder(str(minilm), device="cpu", max_len=64)
    settings = {**emb.settings(), "base_model": "sentence-transformers/all-MiniLM-L6-v2", "instructions": True,
                "query_task": DEFAULT_QUERY_TASK, "lora_rank": None, "training_datasets": []}  # fmt: skip
    return write_sentence_transformers(emb.model, emb.tokenizer, tmp_path_factory.mktemp("minilm") / "merged", settings)


@pytest.fixture(scope="module")
def unknown_task(shared_data, tmp_path_factory):
    """An STS folder mteb does not know (SICK-R's file under another name)."""
    unknown = tmp_path_factory.mktemp("local") / "my-sts"
    unknown.mkdir()
    shutil.copy(shared_data / "sts" / "sick-r" / "SICK.txt", unknown / "SICK.txt")
    return unknown


@pytest.mark.slow
@pytest.mark.realdata
def test_plain_mteb_and_mteb_get_model_score_as_synthembed_evaluate(minilm_export, shared_data, unknown_task):
    import mteb
    from mteb.models.model_implementations import MODEL_REGISTRY

    from synthembed.evaluation.run import evaluate_model
    from synthembed.training.mteb_meta import content_hash, register

    def tasks():
        return _local_tasks(shared_data, unknown_task)

    ours = evaluate_model(str(minilm_export), tasks(), use_cache=False, show_progress=False)
    expected = {e["name"]: e["main_score"] for e in ours["tasks"]}
    assert ours["instructions"] and set(expected) == {"SICK-R", "SciFact", "my-sts"} and expected["SciFact"] > 0.3
    plain = mteb.evaluate(_st(minilm_export), tasks(), cache=None, show_progress_bar=False)
    assert {r.task_name: r.get_score() for r in plain.task_results} == pytest.approx(expected, abs=1e-6)

    meta = register(str(minilm_export))
    try:
        assert mteb.get_model_meta(str(minilm_export)) is meta and meta.revision == content_hash(minilm_export)
        model = mteb.get_model(str(minilm_export))  # mteb's own entry point (NotImplementedError before registering)
        assert model.mteb_model_meta.revision == meta.revision and meta.training_datasets == set()
        again = mteb.evaluate(model, tasks()[2:], cache=None, show_progress_bar=False)
        assert again.task_results[0].get_score() == pytest.approx(expected["my-sts"], abs=1e-6)
    finally:
        MODEL_REGISTRY.pop(meta.name, None)
    # the instructions change the scores, so the equalities above could fail
    plain_queries = evaluate_model(str(minilm_export), tasks()[:1], use_cache=False, show_progress=False,
                                   instructions="off")  # fmt: skip
    assert plain_queries["tasks"][0]["main_score"] != pytest.approx(expected["SICK-R"], abs=1e-4)


@pytest.fixture(scope="module")
def run_results(run, shared_data):
    """`synthembed evaluate`'s results for the run's export, where `synthembed export` finds them (RUN/eval/)."""
    from synthembed.evaluation.run import evaluate_model
    from synthembed.evaluation.tasks import local_task

    tasks = [local_task(shared_data / "sts" / "sick-r", limit=30)]
    return evaluate_model(str(run[0] / "merged"), tasks, use_cache=False, show_progress=False,
                          out=run[0] / "eval" / "ours.json")  # fmt: skip


def test_model_meta_reads_the_export(run, tmp_path):
    from safetensors.numpy import load_file

    from synthembed.training.mteb_meta import content_hash, model_meta

    merged = run[0] / "merged"
    meta = model_meta(merged)
    settings = json.loads((merged / "synthembed_config.json").read_text())
    assert meta.name == str(merged) and meta.loader_kwargs == {"path": str(merged.resolve())}
    assert meta.training_datasets == {"SciFact"} and meta.use_instructions is True
    assert meta.embed_dim == 64 and meta.max_tokens == settings["max_len"] == 48
    assert meta.n_parameters == sum(a.size for a in load_file(merged / "model.safetensors").values())
    assert meta.adapted_from == settings["base_model"] and set(meta.languages) == {"deu-Latn", "eng-Latn"}
    # the revision follows the weights and configuration, not the card
    copy = tmp_path / "copy"
    shutil.copytree(merged, copy)
    (copy / "README.md").write_text("---\nlicense: mit\n---\nanother card\n")
    assert content_hash(copy) == meta.revision and model_meta(copy).license == "mit"
    (copy / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 47, "do_lower_case": False}))
    assert content_hash(copy) != meta.revision
    with pytest.raises(SynthembedError, match="not a synthembed sentence-transformers export"):
        model_meta(run[1])


def _card_blocks(text: str) -> dict[str, str]:
    """The fenced python blocks of a card, by the heading above each."""
    return dict(re.findall(r"### (\w[\w-]*)[^\n]*\n(?:[^`]*?\n)?```python\n(.*?)```", text, flags=re.S))


@pytest.mark.realdata
def test_model_card_parses_as_hub_metadata_and_says_what_the_run_did(run, run_results, capsys):
    from huggingface_hub import ModelCard, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    out, gen = run
    results = out / "eval" / "ours.json"  # found there: no --eval
    assert main(["export", str(out), "--license", "apache-2.0"]) == 0
    card_path = out / "merged" / "README.md"
    assert str(card_path) in capsys.readouterr().out
    metadata = metadata_load(card_path)
    card = ModelCard.load(card_path)
    assert card.data.library_name == "sentence-transformers" and card.data.license == "apache-2.0"
    assert card.data.base_model is None  # a local folder is no Hub repo: named in the text only
    assert set(card.data.language) == {"en", "de"}

    evaluation = json.loads(results.read_text())
    assert [t["main_score"] for t in evaluation["tasks"]] == [t["main_score"] for t in run_results["tasks"]]
    name, scores = model_index_to_eval_results(metadata["model-index"])
    assert name == card.data.model_name == str(out / "merged")
    assert {(r.dataset_name.split(" (")[0].removeprefix("MTEB "), r.metric_value) for r in scores} == {
        (t["name"], round(t["main_score"], 6)) for t in evaluation["tasks"]
    }
    assert all("subset of" in r.dataset_name for r in scores)  # every one ran on part of its task (--limit)

    stats = json.loads((gen / "stats.json").read_text())
    text = card_path.read_text()
    for group, row in stats["by_task_type"].items():
        if row["accepted"]:
            assert f"| {group} | {row['accepted']} |" in text
    for language, count in stats["by_language"].items():
        assert f"| {language} | {count} |" in text
    assert "generated by `loopback`" in text and "stand-in" in text
    for row in ("| learning rate | 0.001 |", "| batch size | 4 |", "| temperature | 0.02 |", "| max length (tokens) | 48 |",
                "| pooling | last |", "| optimizer steps | 2 done (max 2) |", "| LoRA rank / alpha / dropout | 16 / 32 / 0.1 |",
                "| `scifact` (mteb: SciFact) | labeled | 8 query-document pairs (train) | 0.5 |"):  # fmt: skip
        assert row in text, row


@pytest.mark.parametrize("which", ["tiny-mistral run (last token, EOS)", "MiniLM (mean)"])
def test_card_snippets_embed_as_the_model_does(which, run, minilm_export):
    """The sentence-transformers and transformers snippets, run as written, give the same vectors."""
    from synthembed.training.card import run_facts, write_model_card

    folder = run[0] if which.startswith("tiny") else minilm_export.parent  # a run folder holding merged/
    card = write_model_card(folder / "merged", run_facts(folder))  # loads from the folder (a pushed card: the repo)
    blocks = _card_blocks(card.read_text())
    st_scope, tf_scope = {}, {}
    exec(blocks["sentence-transformers"], st_scope)  # noqa: S102 -- the card's own code, written by us
    exec(blocks["transformers"], tf_scope)  # noqa: S102
    np.testing.assert_allclose(tf_scope["queries"].numpy(), st_scope["queries"], atol=1e-5)
    np.testing.assert_allclose(tf_scope["documents"].numpy(), st_scope["documents"], atol=1e-5)
    assert "register(" in blocks["mteb"]


def test_push_to_hub_uploads_the_export_with_its_card(run, monkeypatch, capsys):
    from huggingface_hub import HfApi, ModelCard

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs, self.token)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = run[0] / "merged"
        assert folder_path == str(folder)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        calls["upload"] = (repo_id, files, (folder / "README.md").read_text(), kwargs)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    assert main(["export", str(run[0]), "--push-to-hub", "my-org/tiny-synthembed", "--private"]) == 0
    assert calls["create"] == ("my-org/tiny-synthembed", {"repo_type": "model", "private": True, "exist_ok": True},
                               "hf_test_token_not_real")  # fmt: skip
    repo, files, card_text, kwargs = calls["upload"]
    assert repo == "my-org/tiny-synthembed" and kwargs["repo_type"] == "model"
    assert {
        "README.md",
        "model.safetensors",
        "config.json",
        "modules.json",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "tokenizer.json",
        "1_Pooling/config.json",
        "synthembed_config.json",
    } <= set(files)
    card = ModelCard(card_text)
    assert card.data.model_name == "my-org/tiny-synthembed"
    assert "SentenceTransformer('my-org/tiny-synthembed')" in card_text
    assert "https://huggingface.co/my-org/tiny-synthembed" in capsys.readouterr().out


def test_push_to_hub_without_a_token_is_a_clear_error(run, monkeypatch, tmp_path, capsys):
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no token stored by `hf auth login` either
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("no call to the Hub without a token"))
    card = run[0] / "merged" / "README.md"
    before = card.stat().st_mtime_ns
    assert main(["export", str(run[0]), "--push-to-hub", "my-org/x"]) == 2
    err = capsys.readouterr().err
    assert "--push-to-hub my-org/x: no Hugging Face token; set HF_TOKEN" in err and "Traceback" not in err
    assert card.stat().st_mtime_ns == before  # refused before writing anything


def test_export_of_a_folder_without_a_run_is_refused(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "no merged/ export" in capsys.readouterr().err
