"""Our exports as mteb models: the ModelMeta of an export (name, revision = content hash, training datasets, size,
embedding dimension, max tokens, ...), registered so that mteb's own entry points load it.

    import mteb
    from synthembed.training.mteb_meta import register
    meta = register("runs/train/synthetic/merged")        # mteb.get_model_meta / mteb.get_model now know it
    model = mteb.get_model("runs/train/synthetic/merged")  # mteb's SentenceTransformerEncoderWrapper, our prompts
    mteb.evaluate(model, mteb.get_tasks(["STSBenchmark"]))  # results kept under meta.name and meta.revision

mteb finds a model by name in its registry of ModelMeta (the models it implements), or else on the Hub
(ModelMeta.from_hub reads the repository's config files and model card). A local folder is neither, so
`mteb.get_model(path)` makes an empty ModelMeta without a loader and raises NotImplementedError. `register` adds the
export's ModelMeta to that registry for the running process; a model pushed with `synthembed export --push-to-hub`
needs no registering: mteb's Hub path finds sentence-transformers files and the card's base model and languages.

The revision is a hash of the export's files (not the card, which is rewritten as evaluations come in), so that mteb's
result cache, keyed by name and revision, never serves one model's scores for another.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from ..model_config import read_model_config

CARD = "README.md"
_BYTES_PER_PARAMETER = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


def content_hash(directory: str | Path) -> str:
    """A sha256 over the export's files (relative path and bytes), the model card left out; the first 40 hex digits,
    the length of the git revisions mteb otherwise records."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != CARD):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:40]


def default_name(directory: str | Path) -> str:
    """The mteb name of a local export: its path as given (mteb wants `org/name`; a bare folder gets `local/`).

    >>> default_name("runs/train/synthetic/merged/"), default_name("merged")
    ('runs/train/synthetic/merged', 'local/merged')
    """
    name = str(directory).rstrip("/")
    return name if "/" in name else f"local/{name}"


def mteb_training_datasets(data: list[str]) -> list[str]:
    """The mteb tasks among a run's --data entries: a labeled folder whose name is an mteb task's (scifact -> SciFact,
    nfcorpus -> NFCorpus). mteb uses the list to tell zero-shot scores from scores on data the model trained on."""
    import mteb

    by_lower = {task.metadata.name.lower(): task.metadata.name for task in mteb.get_tasks()}
    names = {by_lower.get(Path(entry).name.lower()) for entry in data if not str(entry).endswith(".jsonl")}
    return sorted(name for name in names if name)


def load_export(model_name: str, revision: str | None = None, device: str | None = None, *, path: str, **kwargs):
    """mteb's loader call (name, revision, loader_kwargs) -> mteb's SentenceTransformerEncoderWrapper around the export
    at `path`, which brings the named prompts along."""
    from mteb.models import SentenceTransformerEncoderWrapper

    return SentenceTransformerEncoderWrapper(path, device=device, **kwargs)


def model_meta(directory: str | Path, name: str | None = None):
    """The mteb ModelMeta of one of our sentence-transformers exports (`merged/`); `name` default: default_name."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    directory = Path(directory)
    settings = read_model_config(directory)
    if settings is None or not (directory / "modules.json").is_file():
        raise SynthembedError(f"{directory}: not a synthembed sentence-transformers export (no synthembed_config.json "
                              "and modules.json); use the merged/ folder of a training run")  # fmt: skip
    config = json.loads((directory / "config.json").read_text())
    trained_on = settings.get("training_datasets")
    if trained_on is None and (directory.parent / "train_args.json").is_file():  # an export written before it was kept
        trained_on = mteb_training_datasets(
            json.loads((directory.parent / "train_args.json").read_text()).get("data") or []
        )
    n_parameters, memory_mb = _parameters(directory)
    card = _card_data(directory)
    weights = directory / "model.safetensors"
    meta = {
        "loader": load_export,
        "loader_kwargs": {"path": str(directory.resolve())},
        "name": name or default_name(directory),
        "revision": content_hash(directory),
        "release_date": datetime.date.fromtimestamp(
            (weights if weights.is_file() else directory).stat().st_mtime
        ).isoformat(),
        "languages": _mteb_languages(card.get("language")),
        "n_parameters": n_parameters,
        "n_embedding_parameters": int(config["vocab_size"] * config["hidden_size"]) if "vocab_size" in config else None,
        "memory_usage_mb": memory_mb,
        "max_tokens": int(settings["max_len"]),
        "embed_dim": int(config["hidden_size"]),
        "license": card.get("license"),
        "open_weights": True,
        "public_training_code": None,
        "public_training_data": None,
        "framework": ["Sentence Transformers", "PyTorch"],
        "similarity_fn_name": ScoringFunction.COSINE,  # the export ends in Normalize
        "use_instructions": bool(settings.get("instructions", True)),
        # possibly empty (synthetic data only: zero-shot everywhere); None where unknown
        "training_datasets": None if trained_on is None else set(trained_on),
        "adapted_from": settings.get("base_model"),
        "modalities": ["text"],
    }
    try:
        return ModelMeta(**meta)
    except ValueError:  # a license mteb does not list, say: keep the rest
        return ModelMeta(**{**meta, "license": None})


def register(directory: str | Path, name: str | None = None):
    """Add the export's ModelMeta to mteb's model registry (this process), so mteb.get_model_meta(name) and
    mteb.get_model(name) resolve it; returns the ModelMeta. Registering again replaces the entry (a new revision)."""
    from mteb.models.model_implementations import MODEL_REGISTRY

    meta = model_meta(directory, name)
    MODEL_REGISTRY[meta.name] = meta
    return meta


def _parameters(directory: Path) -> tuple[int | None, float | None]:
    """(parameters, MB of weights) from the safetensors headers, without loading a tensor."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None, None
    from safetensors import safe_open

    count, size = 0, 0
    for file in files:
        with safe_open(file, framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 -- safe_open has no __iter__
                view = handle.get_slice(key)
                n = 1
                for dim in view.get_shape():
                    n *= dim
                count += n
                size += n * _BYTES_PER_PARAMETER.get(view.get_dtype(), 4)
    return count, round(size / 2**20, 1)


def _card_data(directory: Path) -> dict[str, Any]:
    """The model card's metadata (language, license, ...), {} where there is no card."""
    if not (directory / CARD).is_file():
        return {}
    from huggingface_hub import metadata_load

    return metadata_load(directory / CARD) or {}


def _mteb_languages(codes) -> list[str] | None:
    """The card's language codes (ISO 639-1 or -3) as mteb's `eng-Latn`, the conversion mteb applies to Hub cards."""
    if not codes:
        return None
    from mteb.languages.iso_mappings import _hf_langs_to_iso_lang_scripts

    return _hf_langs_to_iso_lang_scripts([codes] if isinstance(codes, str) else list(codes)) or None
