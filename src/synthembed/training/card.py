"""The model card of an export (merged/README.md), written from the run: base model, data (synthetic counts by task
group and language, labeled sets and their ratios), recipe, evaluation results in the Hub's model-index form, and how
to use the model from sentence-transformers, transformers and mteb.

    from synthembed.training.card import run_facts, write_model_card
    facts = run_facts("runs/train/synthetic", evaluations=[json.load(open("runs/eval/ours.json"))])
    write_model_card("runs/train/synthetic/merged", facts)

The metadata block is huggingface_hub's own (ModelCardData, EvalResult), so the Hub, huggingface_hub.metadata_load and
mteb's ModelMeta.from_hub read it as they read any card. Scores in model-index are mteb's main scores (0 to 1), one
entry per task and subset (language), as mteb writes them; a score on part of a task (`--limit`) says so in its
dataset name and arguments, never passing for the full task's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..data import format_query, iter_jsonl
from ..files import replace_atomic
from ..languages import iso_code
from ..model_config import read_model_config
from .log import LOG, read_train_log
from .mteb_meta import CARD, content_hash, default_name, mteb_training_datasets

# synthembed's task kinds as mteb names them and as the Hub's task categories do
_KIND_TYPES = {"retrieval": "Retrieval", "sts": "STS", "classification": "Classification", "bitext": "BitextMining"}
_HUB_TASKS = {"retrieval": "text-retrieval", "sts": "sentence-similarity", "classification": "text-classification",
              "bitext": "translation"}  # fmt: skip
_EXAMPLE_QUERY = "how do vaccines train the immune system"
_EXAMPLE_DOCUMENT = "A vaccine shows the immune system a harmless piece of a pathogen, so it learns to recognise it."


def run_facts(
    run_dir: str | Path,
    *,
    name: str | None = None,
    location: str | None = None,
    generation_stats: dict[str, dict[str, Any]] | None = None,
    evaluations: list[dict[str, Any]] | tuple = (),
    license: str | None = None,
) -> dict[str, Any]:
    """What the card says about a training run (`run_dir` holds train_args.json, train_log.csv and merged/).

    Args:
        name: the model's name (title, model-index); default: the merged folder's mteb name.
        location: what to load in the usage snippets (a Hub repo id); default: the merged folder's absolute path.
        generation_stats: stats.json of the generation run behind a --data examples file, by that file's path: the
            LLM that wrote it and the share of replies accepted.
        evaluations: results of `synthembed evaluate` on this model.
        license: a Hub license id for the metadata.
    """
    from .checkpoint import read_settings  # here: it imports torch, which `synthembed export --help` need not wait for

    run_dir = Path(run_dir)
    merged = run_dir / "merged"
    settings = read_settings(run_dir) or {}
    config = read_model_config(merged) or {}
    data = list(settings.get("data") or [])
    ratios = settings.get("mix") or [1.0] * len(data)
    synthetic, labeled = [], []
    for entry, ratio in zip(data, ratios, strict=False):
        if str(entry).endswith(".jsonl"):
            synthetic.append({**_synthetic_counts(entry, (generation_stats or {}).get(str(entry))), "ratio": ratio})
        else:
            split = settings.get("beir_split", "train")
            labeled.append({"source": str(entry), "name": Path(entry).name, "ratio": ratio, "split": split,
                            "pairs": _judged_pairs(Path(entry) / "qrels" / f"{split}.tsv"),
                            "mteb_task": next(iter(mteb_training_datasets([entry])), None)})  # fmt: skip
    rows = read_train_log(run_dir) if (run_dir / LOG).is_file() else []
    return {
        "name": name or default_name(merged),
        "location": location or str(merged.resolve()),
        "base_model": config.get("base_model") or settings.get("base_model"),
        "settings": settings,
        "config": config,
        "steps_done": int(rows[-1]["step"]) if rows else None,
        "last_loss": rows[-1]["loss"] if rows else None,
        "synthetic": synthetic,
        "labeled": labeled,
        "evaluations": list(evaluations),
        "revision": content_hash(merged) if merged.is_dir() else None,
        "license": license,
    }


def _judged_pairs(qrels: Path) -> int | None:
    """The relevant (query, document) rows of a BEIR qrels file (header line or not): the pairs training made of it
    before mixing. None where the file is not there (the folder moved since training)."""
    if not qrels.is_file():
        return None
    count = 0
    with qrels.open(encoding="utf-8") as handle:
        for line in handle:
            score = line.rstrip("\n").split("\t")[-1]
            count += score.lstrip("-").isdigit() and int(score) > 0
    return count


def _synthetic_counts(path: str, stats: dict[str, Any] | None) -> dict[str, Any]:
    """One examples file by task group and language, counted in the file training read (the accepted examples its
    generation run's stats.json counts, unless the file was changed since), and, from that stats.json where given,
    which LLM wrote them and the share of replies accepted."""
    rows = [row for _, row in iter_jsonl(path)] if Path(path).is_file() else []
    facts: dict[str, Any] = {
        "source": str(path),
        "examples": len(rows),
        "by_group": dict(Counter(row.get("task_type") for row in rows).most_common()),
        "by_language": dict(Counter(row.get("language") for row in rows).most_common()),
        "llm": None,
        "stand_in": False,
    }
    if stats:
        llm = stats.get("llm") or {}
        facts.update(llm=llm.get("model"), stand_in=bool(llm.get("stand_in")), note=stats.get("note"),
                     acceptance_rate=stats.get("acceptance_rate"))  # fmt: skip
    return facts


# --- the card -----------------------------------------------------------------------------------------------------------


def write_model_card(directory: str | Path, facts: dict[str, Any]) -> Path:
    """Write `directory`/README.md from `facts` (run_facts), atomically; returns its path."""
    text = model_card(facts)
    return replace_atomic(Path(directory) / CARD, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def model_card(facts: dict[str, Any]) -> str:
    """The card's text: huggingface_hub metadata (YAML between --- lines), then the sections in Markdown."""
    from huggingface_hub import ModelCard, ModelCardData

    results = eval_results(facts["evaluations"])
    base = facts["base_model"]
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,  # the Hub links (and validates) only repo ids
        language=_card_languages(facts) or None,
        library_name="sentence-transformers",
        license=facts.get("license"),
        pipeline_tag="sentence-similarity",
        tags=["sentence-transformers", "feature-extraction", "sentence-similarity", "mteb", "synthembed"],
        model_name=facts["name"],
        eval_results=results or None,
    )
    body = "\n".join([*_intro(facts), *_data_section(facts), *_recipe(facts), *_evaluation(facts), *_usage(facts)])
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def eval_results(evaluations) -> list:
    """huggingface_hub EvalResults (the model-index) of `synthembed evaluate` results: one per task and subset, mteb's
    main score; official tasks by their mteb dataset and revision, local folders as `local/<folder>`."""
    from huggingface_hub import EvalResult

    out = []
    for run in evaluations:
        for task in run.get("tasks", []):
            dataset, revision, mteb_type = _dataset_of(task)
            part = task.get("data_subset")
            subsets = task.get("subsets") or {"default": task["main_score"]}
            for subset, score in subsets.items():
                if score is None:  # NaN in the results file (written as null): nothing to report
                    continue
                label = f"MTEB {task['name']} ({subset})"
                if part:
                    label += f", subset of {part['count']} {part['unit']}"
                out.append(EvalResult(
                    task_type=_HUB_TASKS.get(task["kind"], "feature-extraction"), task_name=mteb_type,
                    dataset_type=dataset, dataset_name=label, dataset_config=subset, dataset_split=task.get("split"),
                    dataset_revision=revision, dataset_args={"limit": task.get("limit")} if part else None,
                    metric_type=task["main_score_name"], metric_name=task["main_score_name"],
                    metric_value=round(float(score), 6),
                ))  # fmt: skip
    return out


def _dataset_of(task: dict[str, Any]) -> tuple[str, str | None, str]:
    """(dataset id, revision, mteb task type) of a results entry: mteb's for an official task, else the folder's."""
    import mteb

    try:
        metadata = mteb.get_task(task["name"]).metadata
        return metadata.dataset["path"], metadata.dataset.get("revision"), metadata.type
    except (KeyError, ValueError):
        source = str(task.get("source", ""))
        folder = Path(source.split(":", 1)[1]).name if source.startswith("local:") else task["name"]
        return f"local/{folder}", None, _KIND_TYPES.get(task["kind"], task["kind"])


def _is_hub_id(name: str | None) -> bool:
    """`org/name` that is no local path: what the Hub's base_model field accepts.

    >>> _is_hub_id("google/gemma-3-270m"), _is_hub_id("/tmp/tiny-mistral"), _is_hub_id("runs/a/merged")
    (True, False, False)
    """
    return bool(name) and name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _card_languages(facts: dict[str, Any]) -> list[str]:
    """ISO codes of the synthetic data's languages, most examples first; English for labeled data alone."""
    codes: list[str] = []
    for source in facts["synthetic"]:
        for language in source["by_language"]:
            try:
                code = iso_code(language)
            except Exception:  # noqa: BLE001 -- a language the paper's list lacks: named in the text, not coded
                code = None
            if code and code not in codes:
                codes.append(code)
    return codes or (["en"] if facts["labeled"] else [])


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _intro(facts: dict[str, Any]) -> list[str]:
    config, settings = facts["config"], facts["settings"]
    lora = f"LoRA rank {config['lora_rank']}" if config.get("lora_rank") else "every weight trained"
    kinds = [k for k, present in (("LLM-generated synthetic data", facts["synthetic"]),
                                  ("labeled data", facts["labeled"])) if present]  # fmt: skip
    return [
        f"# {facts['name']}", "",
        "A text embedding model trained with synthembed, an open, runnable version of [*Improving Text Embeddings "
        "with Large Language Models*](https://arxiv.org/abs/2401.00368) (Wang et al., 2024; E5-mistral): "
        f"`{facts['base_model']}` fine-tuned ({lora}) with the InfoNCE loss (temperature "
        f"{settings.get('temperature', '?')}) on {' and '.join(kinds) or 'data not recorded here'}. The embedding is the "
        f"{config.get('pooling', '?')}-pooled last hidden state, L2-normalized; texts are cut at "
        f"{config.get('max_len', '?')} tokens.", "",
        f"Content hash of the weights and configuration (mteb's revision of it): `{facts['revision']}`.", "",
    ]  # fmt: skip


def _data_section(facts: dict[str, Any]) -> list[str]:
    lines = ["## Training data", ""]
    if not facts["synthetic"] and not facts["labeled"]:
        return [*lines, "Not recorded (no train_args.json beside the export).", ""]
    lines += ["| source | kind | examples | sampling ratio |", "| --- | --- | --- | --- |"]
    for s in facts["synthetic"]:
        lines.append(f"| `{s['source']}` | synthetic | {s['examples']} | {s['ratio']} |")
    for s in facts["labeled"]:
        official = f" (mteb: {s['mteb_task']})" if s["mteb_task"] else ""
        pairs = "?" if s["pairs"] is None else f"{s['pairs']} query-document pairs ({s['split']})"
        lines.append(f"| `{s['name']}`{official} | labeled | {pairs} | {s['ratio']} |")
    lines.append("")
    for s in facts["synthetic"]:
        made_by = f"generated by `{s['llm']}`" if s["llm"] else "generated by an LLM"
        if s.get("acceptance_rate") is not None:
            made_by += f" ({100 * s['acceptance_rate']:.0f}% of its replies accepted)"
        lines += [f"Synthetic examples in `{s['source']}`, {made_by}:", ""]
        if s.get("stand_in"):
            lines += [f"> {s.get('note') or 'written by a stand-in LLM, not a language model'}", ""]
        lines += ["| task group | examples |", "| --- | --- |", *(f"| {g} | {n} |" for g, n in s["by_group"].items())]
        lines += [
            "",
            "| language | examples |",
            "| --- | --- |",
            *(f"| {k} | {n} |" for k, n in s["by_language"].items()),
        ]
        lines.append("")
    return lines


def _recipe(facts: dict[str, Any]) -> list[str]:
    s, config = facts["settings"], facts["config"]
    rows = [
        ("base model", f"`{facts['base_model']}`"),
        ("learning rate", s.get("lr")), ("warm-up steps", s.get("warmup_steps")),
        ("optimizer steps", f"{facts['steps_done']} done" + (f" (max {s['max_steps']})" if s.get("max_steps") else "")),
        ("batch size", s.get("batch_size")), ("mini-batch (cached loss)", s.get("mini_batch_size") or "whole batch"),
        ("temperature", s.get("temperature")),
        ("LoRA rank / alpha / dropout", f"{s.get('lora_rank')} / {s.get('lora_alpha')} / {s.get('lora_dropout')}"
         if config.get("lora_rank") else "none: every weight trained"),
        ("pooling", config.get("pooling")), ("max length (tokens)", config.get("max_len")),
        ("query instructions", "yes: `Instruct: {task}\\nQuery: {query}`" if config.get("instructions") else "no"),
        ("hard negatives for labeled data", _mining(s)), ("seed", s.get("seed")),
        ("last logged loss", None if facts["last_loss"] is None else f"{facts['last_loss']:.4f}"),
    ]  # fmt: skip
    return ["## Training recipe", "", "| setting | value |", "| --- | --- |",
            *(f"| {k} | {v} |" for k, v in rows if v is not None), ""]  # fmt: skip


def _mining(s: dict[str, Any]) -> str | None:
    """How labeled data's negatives were mined, with the guards where they were on (an older run records none)."""
    how = s.get("hard_negatives")
    if how in (None, "none"):
        return how
    guards = [f"ranks {s['mine_skip']}-{s.get('mine_depth')}" if s.get("mine_skip") else None,
              f"at most {s['mine_ratio']} of the positive's score" if s.get("mine_ratio") else None]  # fmt: skip
    return ", ".join([how, *filter(None, guards)])


def _evaluation(facts: dict[str, Any]) -> list[str]:
    if not facts["evaluations"]:
        return ["## Evaluation", "", "No evaluation results were given (`synthembed export --eval FILE`).", ""]
    lines = ["## Evaluation", "", "mteb's main score (x 100) from `synthembed evaluate`.", "",
             "| task | kind | metric | score | data |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for run in facts["evaluations"]:
        for task in run.get("tasks", []):
            part = task.get("data_subset")
            where = f"subset: {part['count']} {part['unit']}" if part else "full test split"
            score = "n/a" if task.get("main_score") is None else _pct(task["main_score"])
            lines.append(f"| {task['name']} | {task['kind']} | {task['main_score_name']} | {score} | {where} |")
    return [*lines, ""]


def _usage(facts: dict[str, Any]) -> list[str]:
    """Snippets that embed exactly as the export does (tests run them against sentence-transformers)."""
    config, location = facts["config"], repr(facts["location"])
    instructed = bool(config.get("instructions"))
    query = format_query(config.get("query_task"), _EXAMPLE_QUERY) if instructed else _EXAMPLE_QUERY
    st_lines = [
        "from sentence_transformers import SentenceTransformer", "",
        f"model = SentenceTransformer({location})",
        f"queries = model.encode_query([{_EXAMPLE_QUERY!r}])" + ("  # with the `query` prompt" if instructed else ""),
        f"documents = model.encode_document([{_EXAMPLE_DOCUMENT!r}])",
        "print(model.similarity(queries, documents))",
    ]  # fmt: skip
    if instructed:
        st_lines += ["# the instruction of an MTEB task or task type, by name (config_sentence_transformers.json)",
                     'claims = model.encode(["Vitamin D prevents colds."], prompt_name="SciFact")']  # fmt: skip
    tf_lines = [
        "import torch", "import torch.nn.functional as F", "from transformers import AutoModel, AutoTokenizer", "",
        f"tokenizer = AutoTokenizer.from_pretrained({location})",
        f"model = AutoModel.from_pretrained({location}).eval()", "", "",
        "def embed(texts):",
        f"    batch = tokenizer(texts, max_length={config.get('max_len', 512)}, truncation=True, padding=True, "
        'return_tensors="pt")',
        "    with torch.no_grad():",
        "        hidden = model(**batch).last_hidden_state  # (B, T, D)",
        '    mask = batch["attention_mask"]  # (B, T)',
        *_pooling_lines(config.get("pooling", "mean")),
        "    return F.normalize(pooled.float(), dim=-1)", "", "",
        f"queries = embed([{query!r}])",
        f"documents = embed([{_EXAMPLE_DOCUMENT!r}])",
        "print(queries @ documents.T)",
    ]  # fmt: skip
    eos = " The tokenizer ends every text with EOS itself." if config.get("eos_in_tokenizer") else ""
    return [
        "## Usage", "", "### sentence-transformers", "", "```python", *st_lines, "```", "",
        f"### transformers{eos and ' (no sentence-transformers)'}", "",
        f"Queries carry their task's instruction, documents none.{eos}" if instructed else eos.strip(), "",
        "```python", *tf_lines, "```", "",
        "### mteb", "",
        "```python", "import mteb", "from synthembed.training.mteb_meta import register", "",
        f"meta = register({location})  # a local folder; a model on the Hub loads by its repo id alone",
        "model = mteb.get_model(meta.name)  # the instructions above, per task",
        'results = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]))', "```", "",
    ]  # fmt: skip


def _pooling_lines(pooling: str) -> list[str]:
    """The pooling step of the transformers snippet, as sentence-transformers' Pooling module computes it."""
    if pooling == "last":
        return ["    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real token (EOS), either padding",
                "    pooled = hidden[torch.arange(hidden.shape[0]), last]"]  # fmt: skip
    if pooling == "cls":
        return ["    pooled = hidden[:, 0]"]
    if pooling == "weighted-mean":
        return ["    weights = torch.arange(1, mask.shape[1] + 1)[None] * mask  # position-weighted",
                "    pooled = (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)"]  # fmt: skip
    return ["    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)"]
