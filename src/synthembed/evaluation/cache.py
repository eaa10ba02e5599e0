"""The embedding cache of `synthembed evaluate`: embeddings on disk, keyed by a fingerprint of the model and the exact
texts encoded, so a re-run is answered without the model and a changed model is never answered from an old one.

    from synthembed.evaluation.cache import EmbeddingCache, model_fingerprint
    cache = EmbeddingCache(default_cache_dir(), model_fingerprint("runs/train/synthetic/merged", load_settings={...}))
    cache.get(texts)  # (N, D) or None

The fingerprint covers the model's files (the base model's too, for an adapter) and the settings it encodes with
(pooling, max length, EOS, dtype, config overrides), not synthembed's own source: a change to how synthembed embeds
that keeps the same model and settings must clear the cache (`--no-cache`, or delete $SYNTHEMBED_CACHE).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SynthembedError
from ..files import check_writable, replace_atomic, write_json_atomic
from ..model_config import read_model_config
from ..paths import resolve_model_path

CACHE_ENV = "SYNTHEMBED_CACHE"
FILE_HASHES = "file_hashes.json"  # the remembered sha256 of model files, beside embeddings/


def default_cache_dir() -> Path:
    """$SYNTHEMBED_CACHE, else ~/.cache/synthembed: embeddings under embeddings/<model hash>/."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "synthembed").expanduser()


def cache_writable(root: str | Path) -> bool:
    """Whether embeddings can be cached under `root`; where not (a read-only home, a full disk), says so, and the
    caller evaluates without the cache."""
    try:
        check_writable(Path(root) / "embeddings", "embedding cache")
    except SynthembedError as err:
        print(f"[evaluate] {err}; evaluating without the embedding cache", file=sys.stderr)
        return False
    return True


# --- model identity ---------------------------------------------------------------------------------------------------


# Hashing every byte of a model on every evaluation costs 0.25 s for all-mpnet-base-v2 (439 MB at ~1.7 GB/s, measured
# from the page cache on 2 cores), so ~8 s for a 14 GB 7B model and far more from a cold disk; and an evaluation
# answered wholly from the embedding cache does nothing else. So a file's hash is remembered, under a key that no
# rewrite of the file keeps: path, size, mtime, ctime, inode and device. A program can set mtime back (os.utime) but not
# ctime: every write, and the utime call itself, sets ctime to the kernel's clock; a file replaced by another has another
# inode. One gap remains: timestamps are coarse (a clock tick), so a file rewritten within the tick in which it was last
# written could keep its ctime. A file changed less than RACY_NS before it was hashed is therefore not remembered (git's
# "racily clean" rule), and is hashed again next time.
RACY_NS = 2_000_000_000


def _signature(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _file_sha256(path: Path, memo: dict[str, Any]) -> str:
    """sha256 of a file, remembered in `memo` (see RACY_NS) so a 14 GB checkpoint is read once, not every run."""
    name = str(path.resolve())
    before = _signature(path.stat())
    known = memo.get(name)
    if isinstance(known, dict) and known.get("stat") == before and isinstance(known.get("sha256"), str):
        return known["sha256"]
    started = time.time_ns()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    # Remembered only where the file was not changed while it was read, nor just before.
    if _signature(path.stat()) == before and started - before[2] > RACY_NS:
        memo[name] = {"stat": before, "sha256": digest.hexdigest()}
    else:
        memo.pop(name, None)
    return digest.hexdigest()


def read_file_hashes(cache_dir: str | Path) -> dict[str, Any]:
    """The file hashes remembered under `cache_dir` ({} where there are none yet or the file is damaged; entries of an
    older format are dropped)."""
    try:
        memo = json.loads((Path(cache_dir) / FILE_HASHES).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return {}
    return {k: v for k, v in memo.items() if isinstance(v, dict)} if isinstance(memo, dict) else {}


def write_file_hashes(cache_dir: str | Path, memo: dict[str, Any]) -> None:
    try:
        write_json_atomic(Path(cache_dir) / FILE_HASHES, memo)
    except OSError:  # a read-only cache folder only costs re-hashing next time
        pass


def model_dirs(name_or_path: str) -> list[Path]:
    """The folders whose files make the model: the model itself, plus the base model of an adapter or an export; []
    for a hub id not in the local hub cache."""
    resolved = Path(resolve_model_path(name_or_path))
    if not resolved.is_dir():
        try:  # a hub id already in the local hub cache
            from huggingface_hub import snapshot_download

            resolved = Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:  # noqa: BLE001 -- not cached locally: the caller hashes the loaded weights instead
            return []
    dirs = [resolved]
    adapter = resolved / "adapter_config.json"
    if adapter.is_file():  # a LoRA adapter: its base model's files are part of what it is
        ours = (read_model_config(resolved) or {}).get("base_model")
        for base in (ours, json.loads(adapter.read_text()).get("base_model_name_or_path")):
            if base:
                dirs += [d for d in model_dirs(base) if d not in dirs]
    return dirs


def model_fingerprint(
    name_or_path: str,
    embedder=None,
    memo: dict[str, Any] | None = None,
    load_settings: dict[str, Any] | None = None,
) -> str:
    """A content hash of a model as it encodes: its files' bytes (the base model's too, for an adapter), and either a
    loaded Embedder's effective settings (its settings(), config with overrides, dtype) or, before loading, the
    settings it will be loaded with. A model with no local files (a hub id not in the local cache) is hashed by its
    loaded weights.

    >>> model_fingerprint("all-MiniLM-L6-v2", load_settings={"pooling": None, "max_len": None})[:12]  # doctest: +SKIP
    '3f1c0d9e2b7a'
    """
    memo = {} if memo is None else memo
    digest = hashlib.sha256()
    dirs = model_dirs(name_or_path)
    if dirs:
        for directory in dirs:
            # .cache inside the folder (huggingface_hub's download metadata) is not the model; the folder itself may
            # well lie under ~/.cache, so only the parts below it are looked at
            files = (p for p in directory.rglob("*") if p.is_file() and ".cache" not in p.relative_to(directory).parts)
            for file in sorted(files):
                digest.update(f"{file.relative_to(directory)}\0{_file_sha256(file, memo)}\n".encode())
    elif embedder is not None:
        import torch

        for key, tensor in sorted(embedder.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
    else:
        raise SynthembedError(f"model {name_or_path}: no local files to hash; load it first")
    if embedder is not None:
        config = getattr(embedder.model, "config", None)  # a bare torch module (a test double) has none
        settings = {
            "settings": embedder.settings(),
            "config": json.loads(config.to_json_string()) if config is not None else {},
            "dtype": str(next(embedder.model.parameters()).dtype),
        }
    else:
        settings = {"load": load_settings or {}}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


# --- the cache --------------------------------------------------------------------------------------------------------

# Why not mteb's own (mteb 2.26, mteb.models.cache_wrappers): CachedEmbeddingWrapper(model, cache_path) serves a re-run
# without loading the model, and the fingerprint could be its cache_path; but its keys and its storage do not serve.
# - Keys: <cache_path>/<task name>/<prompt type>/ + sha256 of each item's text as mteb hands it over, i.e. before our
#   encoder adds the instruction; so --instructions, --instruction overrides and a local folder's kind (the fallback
#   instruction) are not in the key, and two local folders of one name share a folder.
# - Storage (NumpyCache): one preallocated float32 memmap per task and side (vectors.npy, 100,000 rows: 1.6 GB for a
#   4096-dim model), rows handed out as len(index), and index.json written in place (open("w") + json.dump).
#   Two evaluations of one model at once hand out the same rows, and the index written last wins: the other's rows are
#   lost or, where a writer dies between writing its rows and its index, another text's vector is served for a cached
#   text, silently (tried: the index said "alpha" -> row 0, row 0 held "beta"'s vector). An evaluation killed inside
#   the index write leaves truncated JSON, on which every later load raises JSONDecodeError (tried) instead of
#   encoding again.
# What is kept here is small: one .npy per (fingerprint, exact texts), written by replace_atomic, so a killed or a
# concurrent writer leaves either the old file or a whole new one, and a damaged file is encoded again.


class EmbeddingCache:
    """Embeddings on disk, one .npy per (model fingerprint, hash of the exact texts encoded, in order).

    The texts include any instruction, so one file holds one corpus as one model reads it; a changed model has another
    fingerprint and so another folder: a stale embedding cannot be served.

    >>> cache = EmbeddingCache("/tmp/cache", "ab" * 32); cache.get(["a"]) is None
    True
    """

    def __init__(self, root: str | Path, model_hash: str):
        self.dir = Path(root) / "embeddings" / model_hash[:32]
        self.hits = 0
        self.misses = 0
        self.read_only = False  # set when a write fails

    @staticmethod
    def key(texts: Sequence[str]) -> str:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\x1e")
        return f"{digest.hexdigest()}-{len(texts)}"

    def get(self, texts: Sequence[str]) -> np.ndarray | None:
        path = self.dir / f"{self.key(texts)}.npy"
        if path.is_file():
            try:
                array = np.load(path)
            except (OSError, ValueError):
                return None  # a damaged file: encode again and overwrite it
            if array.shape[0] == len(texts):
                self.hits += 1
                return array
        return None

    def put(self, texts: Sequence[str], array: np.ndarray) -> None:
        """Store `array` for `texts`; a failed write (the disk filled up mid-run) turns storing off, with a message,
        instead of failing an evaluation whose embeddings are already computed."""
        self.misses += 1
        if self.read_only:
            return
        path = self.dir / f"{self.key(texts)}.npy"

        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a handle, not a name: np.save would append ".npy" to the name
                np.save(handle, array)

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            replace_atomic(path, save)
        except OSError as err:
            self.read_only = True
            print(f"[evaluate] cannot write the embedding cache {self.dir} ({err}); not caching further", file=sys.stderr)
