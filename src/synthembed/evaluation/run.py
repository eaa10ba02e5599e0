"""Evaluation on MTEB: a model wrapper for mteb 2.x around our encode(), local tasks for offline data, result tables.

    synthembed evaluate --model runs/train/model --tasks SciFact,../shared/data/sts/sick-r --data-dir ../shared/data --out eval.json

    from synthembed.evaluation.run import evaluate_model
    results = evaluate_model("all-MiniLM-L6-v2", ["../shared/data/sts/stsbenchmark"])
    results["tasks"][0]["main_score"]   # mteb's main score, 0 to 1

The wrapper follows the paper's protocol (section 4.1): on the query side each task's instruction, as
`Instruct: {task}\\nQuery: {text}` (the prompt mteb's task carries, else its abstract class's; overrides by task name or
type), documents without instruction; symmetric tasks (STS, classification, bitext) get the instruction on both sides,
as E5-mistral's evaluation does. Instructions apply to models trained with them (decoder-only or our exports);
`instructions="off"` evaluates a model as published without them (how MTEB scores all-MiniLM-L6-v2).

Scores come from mteb's evaluators only. mteb's result cache is never used (`cache=None`), so a changed model can never
get an old score; what is cached is embeddings, on disk, keyed by the model's content hash and the exact texts encoded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import format_query
from ..errors import SynthembedError
from ..files import replace_atomic, write_json_atomic
from ..model_config import SYNTHEMBED_CONFIG, read_model_config
from ..paths import resolve_model_path
from .tasks import MTEB_TYPE_TO_KIND, OFFICIAL_TASKS, content_hash, detect_kind, local_task

log = logging.getLogger(__name__)

INSTRUCTION_MODES = ("auto", "on", "off")
CACHE_ENV = "SYNTHEMBED_CACHE"
# Where each official task's local copy lives inside the shared data folder (../shared/data/README.md).
LOCAL_COPIES = {
    "SciFact": "beir/scifact",
    "STSBenchmark": "sts/stsbenchmark",
    "SICK-R": "sts/sick-r",
    "Banking77Classification": "classification/banking77",
    "Tatoeba": "multilingual/tatoeba",
    "FloresBitextMining": "multilingual/flores200/devtest",
}

# --- published numbers (x100) to put beside ours ------------------------------------------------------------------

# The paper's Table 1 (MTEB English, 56 datasets), by category; PAPER.md "Results to put beside ours".
PAPER_TABLE1 = {
    "E5-mistral full data": {
        "classification": 78.5,
        "clustering": 50.3,
        "pair-classification": 88.3,
        "reranking": 60.2,
        "retrieval": 56.9,
        "sts": 84.6,
        "summarization": 31.4,
        "average": 66.6,
    },
    "E5-mistral synthetic only": {
        "classification": 78.2,
        "clustering": 50.5,
        "pair-classification": 86.0,
        "reranking": 59.0,
        "retrieval": 46.9,
        "sts": 81.2,
        "summarization": 31.9,
        "average": 63.1,
    },
    "E5-mistral synthetic + MS MARCO": {
        "classification": 78.3,
        "clustering": 49.9,
        "pair-classification": 87.1,
        "reranking": 59.5,
        "retrieval": 52.2,
        "sts": 81.2,
        "summarization": 32.7,
        "average": 64.5,
    },
    "BGE-large-en-v1.5": {
        "classification": 76.0,
        "clustering": 46.1,
        "pair-classification": 87.1,
        "reranking": 60.0,
        "retrieval": 54.3,
        "sts": 83.1,
        "summarization": 31.6,
        "average": 64.2,
    },
}
# Per task, as MTEB reports them (../shared/data/README.md).
PUBLISHED = {
    "all-MiniLM-L6-v2": {
        "SciFact": 64.51,
        "STSBenchmark": 82.03,
        "SICK-R": 77.58,
        "Banking77Classification": 80.04,
        "Tatoeba": 3.88,
    },
    "e5-mistral-7b-instruct": {"SciFact": 76.41, "STSBenchmark": 88.60, "Tatoeba": 70.08},
    "e5-small-v2": {"SciFact": 68.85},
    "BM25": {"SciFact": 67.89},
}


# --- model identity -------------------------------------------------------------------------------------------------


def _file_sha256(path: Path, memo: dict[str, Any]) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a 14 GB checkpoint is read once, not every run."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        memo[key] = digest.hexdigest()
    return memo[key]


def _model_dirs(name_or_path: str) -> list[Path]:
    """The folders whose files make the model: the model itself, plus the base model of an adapter or an export."""
    resolved = Path(resolve_model_path(name_or_path))
    if not resolved.is_dir():
        try:  # a hub id already in the local hub cache
            from huggingface_hub import snapshot_download

            resolved = Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:  # noqa: BLE001 -- not cached locally: the caller hashes the loaded weights instead
            return []
    dirs = [resolved]
    for config_name, key in (
        (SYNTHEMBED_CONFIG, "base_model"),
        ("adapter_config.json", "base_model_name_or_path"),
    ):
        config = resolved / config_name
        if config.is_file() and (resolved / "adapter_config.json").is_file():
            base = json.loads(config.read_text()).get(key)
            if base:
                dirs += [d for d in _model_dirs(base) if d not in dirs]
    return dirs


def _code_hash() -> str:
    """sha256 of the code that turns text into embeddings (model.py, pooling.py, data.format_query): a change to it
    must not be answered from embeddings the old code made."""
    from .. import data, model, pooling

    digest = hashlib.sha256()
    for module in (model, pooling, data):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def model_fingerprint(
    name_or_path: str,
    embedder=None,
    memo: dict[str, Any] | None = None,
    load_settings: dict[str, Any] | None = None,
) -> str:
    """A content hash of a model as it encodes: its files' bytes (the base model's too, for an adapter), and either the
    loaded model's effective settings (config with overrides, pooling, max length, EOS handling, dtype) or, before
    loading, the settings it will be loaded with plus the hash of our loading and pooling code. A model with no local
    files (a hub id not in the local cache) is hashed by its loaded weights.

    >>> model_fingerprint("all-MiniLM-L6-v2", load_settings={"pooling": None, "max_len": None})[:12]  # doctest: +SKIP
    '3f1c0d9e2b7a'
    """
    memo = {} if memo is None else memo
    digest = hashlib.sha256()
    dirs = _model_dirs(name_or_path)
    if dirs:
        for directory in dirs:
            for file in sorted(p for p in directory.rglob("*") if p.is_file() and ".cache" not in p.parts):
                digest.update(f"{file.relative_to(directory)}\0{_file_sha256(file, memo)}\n".encode())
    elif embedder is not None:
        import torch

        for key, tensor in sorted(embedder.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
    else:
        raise SynthembedError(f"model {name_or_path}: no local files to hash; load it first")
    if embedder is not None:
        config = getattr(embedder.model, "config", None)
        settings = {
            "settings": embedder.settings() if hasattr(embedder, "settings") else {},
            "config": json.loads(config.to_json_string()) if config is not None else {},
            "dtype": str(next(embedder.model.parameters()).dtype),
        }
    else:
        settings = {"load": load_settings or {}, "code": _code_hash()}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class LazyEmbedder:
    """Loads the model on first use: a re-run whose embeddings are all cached never loads the weights at all.

    >>> emb = LazyEmbedder("all-MiniLM-L6-v2", {"device": "cpu"}); emb.loaded  # doctest: +SKIP
    False
    """

    def __init__(self, name_or_path: str, load_kwargs: dict[str, Any]):
        self.name_or_path = name_or_path
        self.load_kwargs = load_kwargs
        self._embedder = None

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    @property
    def embedder(self):
        if self._embedder is None:
            from ..model import load_embedder

            self._embedder = load_embedder(self.name_or_path, **self.load_kwargs)
        return self._embedder

    def encode(self, texts, **kwargs) -> np.ndarray:
        return self.embedder.encode(texts, **kwargs)

    def __getattr__(self, name: str):  # model, tokenizer, pooling, max_len, dimension, ...: load, then delegate
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.embedder, name)


# --- embedding cache ------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$SYNTHEMBED_CACHE, else ~/.cache/synthembed: embeddings under embeddings/<model hash>/."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "synthembed").expanduser()


class EmbeddingCache:
    """Embeddings on disk, one .npy per (model content hash, hash of the exact texts encoded, in order).

    The texts include any instruction, so one file holds one corpus as one model reads it; a changed model has another
    hash and so another folder: a stale embedding cannot be served.
    """

    def __init__(self, root: str | Path, model_hash: str):
        self.dir = Path(root) / "embeddings" / model_hash[:32]
        self.hits = 0
        self.misses = 0

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
        self.misses += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self.key(texts)}.npy"
        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a handle, not a name: np.save would append ".npy" to the name
                np.save(handle, array)

        replace_atomic(path, save)


# --- the mteb wrapper ---------------------------------------------------------------------------------------------


def _make_wrapper_class():
    """Defined lazily so that importing this module (e.g. for `synthembed evaluate --help`) does not import mteb."""
    from mteb.models.abs_encoder import AbsEncoder, PromptSource
    from mteb.types import PromptType

    class MtebEncoder(AbsEncoder):
        """mteb 2.x encoder around our Embedder: instructions on the query side, documents plain, cached embeddings.

        Example:
            >>> model = MtebEncoder(load_embedder("all-MiniLM-L6-v2"), name="all-MiniLM-L6-v2", instructions=False)  # doctest: +SKIP
            >>> mteb.evaluate(model, mteb.get_task("STSBenchmark"), cache=None)  # doctest: +SKIP
        """

        # an override by task name wins, then the task's own prompt, then one by task type, then the abstract class's
        prompt_priority = (PromptSource.CUSTOM_PROMPT, PromptSource.DEFAULT_TASK_PROMPT, PromptSource.TASK_TYPE_PROMPT)

        def __init__(
            self,
            embedder,
            name: str,
            instructions: bool,
            overrides: dict[str, str] | None = None,
            cache: EmbeddingCache | None = None,
            model_hash: str = "",
            show_progress: bool = True,
        ):
            from mteb.models.model_meta import ModelMeta, ScoringFunction

            self.model = embedder
            self.instructions = instructions
            self.prompts_dict = dict(overrides or {})
            self.cache = cache
            self.show_progress = show_progress
            self.encoded_texts = 0
            meta = {
                "name": _meta_name(name),
                # the revision is the content hash: anything mteb keys by (name, revision) follows the model's content
                "revision": model_hash[:40] or "unknown",
                "similarity_fn_name": ScoringFunction.COSINE,  # our embeddings are L2-normalized
                "use_instructions": instructions,
                "framework": ["PyTorch"],
            }
            if getattr(embedder, "loaded", True):  # sizes only where known without loading a lazy model
                meta["n_parameters"] = int(sum(p.numel() for p in embedder.model.parameters()))
                meta["embed_dim"] = int(embedder.dimension)
                meta["max_tokens"] = int(embedder.max_len)
            self.mteb_model_meta = ModelMeta.create_empty(meta)

        def instruction(self, task_metadata, prompt_type) -> str | None:
            """The instruction for this side of this task, or None (documents; models evaluated without)."""
            if not self.instructions or prompt_type == PromptType.document:
                return None
            return self.get_instruction(task_metadata, prompt_type) or None

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
            texts = [text for batch in inputs for text in batch["text"]]
            instruction = self.instruction(task_metadata, prompt_type)
            if instruction:
                texts = [format_query(instruction, text) for text in texts]
            if self.cache is not None:
                cached = self.cache.get(texts)
                if cached is not None:
                    return cached
            side = prompt_type.value if prompt_type is not None else "text"
            reps = self.model.encode(
                texts,
                batch_size=int(kwargs.get("batch_size") or 32),
                show_progress=self.show_progress and kwargs.get("show_progress_bar", True),
                desc=f"{task_metadata.name} {side}",
            )  # (N, D), L2-normalized
            self.encoded_texts += len(texts)
            if self.cache is not None:
                self.cache.put(texts, reps)
            return reps

    return MtebEncoder


_WRAPPER = None


def mteb_encoder(*args, **kwargs):
    """Build the mteb wrapper (see MtebEncoder); imports mteb on first use."""
    global _WRAPPER
    if _WRAPPER is None:
        _WRAPPER = _make_wrapper_class()
    return _WRAPPER(*args, **kwargs)


def _meta_name(name: str) -> str:
    """mteb wants `org/name`; a local path becomes `local/<folder>`."""
    name = str(name).rstrip("/")
    if Path(name).exists():
        return f"local/{Path(name).resolve().name}"
    return name if "/" in name else f"local/{name}"


def uses_instructions(name_or_path: str, embedder=None) -> bool:
    """The "auto" rule: our exports say whether they were trained with instructions (synthembed_config.json; trained
    by us means yes unless it says `"instructions": false`); otherwise decoder-only models (E5-mistral style) get them
    and encoder models (BERT-like, sentence-transformers) do not. Reads configs only, never the weights."""
    resolved = Path(resolve_model_path(name_or_path))
    config = read_model_config(resolved)
    if config is not None:
        return bool(config.get("instructions", True))
    if embedder is not None and getattr(embedder, "loaded", True):
        return bool(getattr(embedder, "append_eos", False))
    from transformers import AutoConfig

    from ..model import is_decoder_only

    source = str(resolved)
    adapter = resolved / "adapter_config.json"
    if adapter.is_file():
        source = resolve_model_path(json.loads(adapter.read_text()).get("base_model_name_or_path") or source)
    try:
        return is_decoder_only(AutoConfig.from_pretrained(source))
    except OSError as err:
        raise SynthembedError(f"cannot load model {name_or_path!r}: {str(err).splitlines()[0]}") from None


# --- tasks ------------------------------------------------------------------------------------------------------


def split_task_list(spec: str | Sequence[str]) -> list[str]:
    """`--tasks` text -> entries: commas separate, except inside parentheses (benchmark names like `MTEB(eng, v2)`)."""
    if not isinstance(spec, str):
        return [s for item in spec for s in split_task_list(item)]
    parts, depth, current = [], 0, ""
    for char in spec:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [p for p in parts if p]


def _looks_like_path(entry: str) -> bool:
    return entry.startswith((".", "/", "~")) or os.sep in entry


def resolve_tasks(
    entries: Sequence[str],
    data_dir: str | Path | None = None,
    limit: int | None = None,
    languages: list[str] | None = None,
) -> list:
    """mteb tasks for `--tasks` entries: a directory is a local task (kind read from its files); a name is an mteb task
    or benchmark, read from its local copy in `data_dir` where one exists, else from the hub.

    Every entry is checked before anything runs; an unknown one raises naming it (with close names mteb knows).
    """
    import mteb

    tasks = []
    for entry in split_task_list(entries):
        path = Path(entry).expanduser()
        if data_dir is not None and not path.exists() and (Path(data_dir) / entry).exists():
            path = Path(data_dir) / entry
        if path.exists() or _looks_like_path(entry):
            if not path.exists():
                raise SynthembedError(f"task directory {entry} does not exist")
            detect_kind(path)  # a clear error for a folder in no known layout
            tasks.append(local_task(path, languages=languages, limit=limit))
            continue
        copy = LOCAL_COPIES.get(entry)
        if data_dir is not None and copy and (Path(data_dir) / copy).exists():
            tasks.append(local_task(Path(data_dir) / copy, name=entry, languages=languages, limit=limit))
            continue
        if limit is not None:
            raise SynthembedError(f"--limit works on local tasks only; {entry} would be read from the hub")
        try:
            tasks.append(mteb.get_task(entry))
            continue
        except (KeyError, ValueError) as err:
            task_error = str(err).strip("'\"")
        try:
            for task in mteb.get_benchmark(entry).tasks:  # members with a local copy are read from it
                member = LOCAL_COPIES.get(task.metadata.name)
                if data_dir is not None and member and (Path(data_dir) / member).exists():
                    task = local_task(Path(data_dir) / member, name=task.metadata.name, languages=languages)
                tasks.append(task)
            continue
        except (KeyError, ValueError):
            pass
        # mteb's own message carries its suggestion ("Did you mean: 'SciFact'?")
        hint = task_error.split("not found.", 1)[1].strip() if "not found." in task_error else ""
        raise SynthembedError(
            f"unknown task {entry!r}: neither a directory nor an mteb task or benchmark"
            + (f" ({hint})" if hint else "")
        )
    if not tasks:
        raise SynthembedError("no tasks given")
    unique = {}
    for task in tasks:  # a task named twice (BEIR inside MTEB(eng, v1), say) runs once
        unique.setdefault(task.metadata.name, task)
    return list(unique.values())


def find_trained_models(train_dir: str | Path) -> dict[str, Path]:
    """Exported models under a training folder (what `synthembed train` writes: <run>/merged and <run>/adapter, each
    with synthembed_config.json), one per run, the merged one preferred; checkpoints are skipped. {label: path}

    >>> find_trained_models("runs/interactive/train")  # doctest: +SKIP
    {'synthetic': PosixPath('runs/interactive/train/synthetic/merged')}
    """
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        return {}
    found: dict[Path, Path] = {}
    for config in sorted(train_dir.rglob(SYNTHEMBED_CONFIG)):
        model_dir = config.parent
        if "checkpoints" in model_dir.relative_to(train_dir).parts:
            continue
        run = model_dir.parent if model_dir.name in ("merged", "adapter") else model_dir
        if run not in found or model_dir.name == "merged":
            found[run] = model_dir
    models = {}
    for run, model_dir in sorted(found.items()):
        label = str(run.relative_to(train_dir)) if run != train_dir else train_dir.name
        models[label] = model_dir
    return models


def task_kind(task) -> str:
    return MTEB_TYPE_TO_KIND.get(task.metadata.type, task.metadata.type.lower())


# --- evaluation -------------------------------------------------------------------------------------------------


def _task_entry(task, result, seconds: float) -> dict[str, Any]:
    """One task's JSON entry: name, kind, main score (mteb's, 0 to 1), per-subset (per-language) main scores, full scores."""
    split = task.metadata.eval_splits[0]
    subsets = {s["hf_subset"]: float(s["main_score"]) for s in result.scores.get(split, [])}
    entry = {
        "name": task.metadata.name,
        "kind": task_kind(task),
        "main_score": float(result.get_score()),
        "main_score_name": task.metadata.main_score,
        "split": split,
        "source": f"local:{task.local_path}" if getattr(task, "local_path", None) else "mteb hub",
        "limit": getattr(task, "local_limit", None),
        "evaluation_seconds": round(seconds, 2),
        "scores": result.to_dict(),
    }
    if len(subsets) > 1 or task_kind(task) == "bitext":
        entry["subsets"] = subsets
    if task_kind(task) == "bitext":
        # per language, by the non-English side of each pair (Tatoeba `deu-eng` -> deu, FLORES `deu_Latn-eng_Latn` -> deu_Latn)
        entry["languages"] = {subset.split("-")[0]: score for subset, score in subsets.items()}
    return entry


def evaluate_model(
    model: str,
    tasks: Sequence[str] | Sequence[Any],
    *,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    instructions: str = "auto",
    overrides: dict[str, str] | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    languages: list[str] | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    pooling: str | None = None,
    max_len: int | None = None,
    device: str | None = None,
    show_progress: bool = True,
    embedder=None,
) -> dict[str, Any]:
    """Evaluate one model on tasks (names, benchmark names, directories, or mteb task objects); what `synthembed evaluate` runs.

    Returns (and with `out`, writes atomically at the end) {"model", "model_hash", "instructions", "tasks": [one entry per
    task: name, kind, main_score (0 to 1), main_score_name, subsets / languages, mteb's full scores], "averages": per
    kind and overall, "embedding_cache": hits and misses, "seconds"}.

    Example:
        >>> r = evaluate_model("all-MiniLM-L6-v2", ["../shared/data/sts/sick-r"], instructions="off")  # doctest: +SKIP
        >>> round(100 * r["tasks"][0]["main_score"], 2)  # doctest: +SKIP
        77.58
    """
    import mteb

    start = time.perf_counter()
    if instructions not in INSTRUCTION_MODES:
        raise SynthembedError(f"instructions must be one of {', '.join(INSTRUCTION_MODES)}, not {instructions!r}")
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite:
            raise SynthembedError(f"{out} exists; pass --overwrite to replace it")
        if out.exists() and out.is_dir():
            raise SynthembedError(f"{out} is a directory; --out names the JSON file to write")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SynthembedError(f"data directory {data_dir} does not exist")
    task_objects = [t for t in tasks if not isinstance(t, str | os.PathLike)]
    names = [str(t) for t in tasks if isinstance(t, str | os.PathLike)]
    resolved = task_objects + (resolve_tasks(names, data_dir, limit=limit, languages=languages) if names else [])

    memo_path = (Path(cache_dir) if cache_dir else default_cache_dir()) / "file_hashes.json"
    memo = _read_memo(memo_path)
    if embedder is None:
        if _looks_like_path(model) and not Path(model).expanduser().exists():
            raise SynthembedError(f"model {model} does not exist")
        import torch

        from ..model import default_device, load_embedder

        device_type = torch.device(device).type if device else default_device().type
        load_kwargs = {"pooling": pooling, "max_len": max_len, "device": device}
        if use_cache and _model_dirs(model):
            # files on disk: hash them and the load settings, load the weights only if some text is not cached yet
            load_settings = {**load_kwargs, "device": device_type}
            model_hash = model_fingerprint(model, memo=memo, load_settings=load_settings)
            embedder = LazyEmbedder(model, load_kwargs)
        else:
            embedder = load_embedder(model, **load_kwargs)
            model_hash = model_fingerprint(model, embedder, memo)
    else:
        model_hash = model_fingerprint(model, embedder, memo)
    _write_memo(memo_path, memo)
    with_instructions = instructions == "on" or (instructions == "auto" and uses_instructions(model, embedder))
    cache = EmbeddingCache(cache_dir or default_cache_dir(), model_hash) if use_cache else None
    wrapper = mteb_encoder(
        embedder,
        name=model,
        instructions=with_instructions,
        overrides=overrides,
        cache=cache,
        model_hash=model_hash,
        show_progress=show_progress,
    )

    entries = []
    for task in resolved:
        local = getattr(task, "local_path", None) is not None
        task_start = time.perf_counter()
        try:
            result = mteb.evaluate(
                wrapper,
                task,
                cache=None,  # mteb's result cache is keyed by name and revision, not content: never trust it
                overwrite_strategy="always",
                encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress},
                show_progress_bar=False,
                co2_tracker=False,
                raise_error=True,
            )
        except SynthembedError:
            raise
        except Exception as err:  # the hub being unreachable is the usual reason; say which task
            where = f"local task {task.local_path}" if local else f"mteb task {task.metadata.name} (data from the hub)"
            raise SynthembedError(f"{where} failed: {type(err).__name__}: {err}".splitlines()[0]) from err
        if not result.task_results:
            problem = result.exceptions[0].exception if result.exceptions else "no result"
            raise SynthembedError(f"{task.metadata.name}: {problem}")
        entries.append(_task_entry(task, result.task_results[0], time.perf_counter() - task_start))

    results = {
        "model": str(model),
        "model_hash": model_hash,
        "instructions": with_instructions,
        "instruction_overrides": dict(overrides or {}),
        # as loaded; None where every embedding came from the cache and the model was never loaded
        "pooling": embedder.pooling if getattr(embedder, "loaded", True) else None,
        "max_len": embedder.max_len if getattr(embedder, "loaded", True) else None,
        "model_loaded": bool(getattr(embedder, "loaded", True)),
        "mteb_version": mteb.__version__,
        "tasks": entries,
        "averages": averages(entries),
        "embedding_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if out is not None:
        write_json_atomic(out, results)
    return results


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_memo(path: Path, memo: dict[str, Any]) -> None:
    try:
        write_json_atomic(path, memo)
    except OSError:  # a read-only cache folder only costs re-hashing next time
        pass


def averages(entries: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean main score per kind, and "average" over all tasks (as MTEB averages: over tasks, not over categories)."""
    entries = list(entries)
    by_kind: dict[str, list[float]] = {}
    for entry in entries:
        by_kind.setdefault(entry["kind"], []).append(entry["main_score"])
    out = {kind: float(np.mean(scores)) for kind, scores in sorted(by_kind.items())}
    if entries:
        out["average"] = float(np.mean([e["main_score"] for e in entries]))
    return out


# --- tables -------------------------------------------------------------------------------------------------------


def load_results(path: str | Path) -> dict[str, Any]:
    """A results JSON written by `evaluate_model` / `synthembed evaluate`."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SynthembedError(f"{path}: not a results file ({err})") from None
    if "tasks" not in results:
        raise SynthembedError(f"{path}: not a results file (no 'tasks')")
    return results


def task_table(runs: dict[str, dict[str, Any]], published: dict[str, dict[str, float]] | None = None):
    """Per task, main score x100 for each run (columns) beside published scores. -> DataFrame (task, kind, metric, ...)"""
    import pandas as pd

    published = PUBLISHED if published is None else published
    rows: dict[str, dict[str, Any]] = {}
    for label, results in runs.items():
        for entry in results["tasks"]:
            row = rows.setdefault(
                entry["name"], {"task": entry["name"], "kind": entry["kind"], "metric": entry["main_score_name"]}
            )
            row[label] = round(100 * entry["main_score"], 2)
    for label, scores in published.items():
        if any(name in rows for name in scores):
            for name, value in scores.items():
                if name in rows:
                    rows[name][f"{label} (published)"] = value
    return pd.DataFrame(list(rows.values()))


def category_table(runs: dict[str, dict[str, Any]], paper: dict[str, dict[str, float]] | None = None):
    """Per kind (MTEB category), mean main score x100 for each run beside the paper's Table 1. -> DataFrame

    The paper's columns average 56 MTEB datasets; ours average whatever tasks ran, so they compare only when the
    same tasks ran (MTEB(eng, v1) in the default profile).
    """
    import pandas as pd

    paper = PAPER_TABLE1 if paper is None else paper
    kinds = [
        "classification",
        "clustering",
        "pair-classification",
        "reranking",
        "retrieval",
        "sts",
        "summarization",
        "bitext",
        "average",
    ]
    table = {label: {k: round(100 * v, 2) for k, v in results["averages"].items()} for label, results in runs.items()}
    present = [k for k in kinds if any(k in t for t in table.values())] + sorted(
        {k for t in table.values() for k in t} - set(kinds)
    )
    frame = pd.DataFrame({label: [t.get(k) for k in present] for label, t in table.items()}, index=present)
    for label, column in paper.items():
        frame[f"{label} (paper)"] = [column.get(k) for k in present]
    frame.index.name = "category"
    return frame.reset_index()


def to_markdown(frame) -> str:
    """A DataFrame as a GitHub markdown table (no tabulate dependency); missing values shown as blanks."""
    columns = list(frame.columns)
    lines = ["| " + " | ".join(str(c) for c in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            value = row[c]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.2f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(runs: dict[str, dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """tasks.json / tasks.md and categories.json / categories.md in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    written = {}
    for stem, frame in (("tasks", task_table(runs)), ("categories", category_table(runs))):
        written[f"{stem}.json"] = write_json_atomic(
            out_dir / f"{stem}.json", json.loads(frame.to_json(orient="records"))
        )
        path = out_dir / f"{stem}.md"
        path.write_text(to_markdown(frame))
        written[f"{stem}.md"] = path
    return written


# --- command line ---------------------------------------------------------------------------------------------------


def _parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SynthembedError(f"--instruction takes TASK=TEXT (a task name or type), got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def configure_evaluate_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="our export (merged or LoRA adapter), a hub id or a directory")
    parser.add_argument(
        "--tasks",
        required=True,
        action="append",
        help="mteb task or benchmark names and/or task directories, comma separated (repeatable)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="a folder holding local copies (the shared data layout); named tasks found there are read from it",
    )
    parser.add_argument("--out", required=True, help="results JSON to write (atomically, once all tasks finished)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--instructions",
        choices=INSTRUCTION_MODES,
        default="auto",
        help="query-side task instructions: auto = for models trained with them (decoder-only, our exports)",
    )
    parser.add_argument(
        "--instruction",
        action="append",
        metavar="TASK=TEXT",
        help="override a task's instruction, by task name or type (e.g. STS=...); repeatable",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="local tasks only: a small subset (quick runs)")
    parser.add_argument("--languages", default=None, help="bitext tasks: languages to mine, comma separated")
    parser.add_argument("--pooling", default=None, help="override the model's pooling (last, mean, weighted-mean, cls)")
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--cache-dir", default=None, help=f"embedding cache (default ${CACHE_ENV} or ~/.cache/synthembed)"
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")


def run_evaluate_command(args: argparse.Namespace) -> int:
    results = evaluate_model(
        args.model,
        split_task_list(args.tasks),
        data_dir=args.data_dir,
        out=args.out,
        overwrite=args.overwrite,
        instructions=args.instructions,
        overrides=_parse_overrides(args.instruction),
        batch_size=args.batch_size,
        limit=args.limit,
        languages=[s.strip() for s in args.languages.split(",") if s.strip()] if args.languages else None,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        pooling=args.pooling,
        max_len=args.max_len,
        device=args.device,
    )
    width = max(len(e["name"]) for e in results["tasks"])
    for entry in results["tasks"]:
        print(
            f"{entry['name']:<{width}}  {entry['kind']:<15} {entry['main_score_name']:<16} {100 * entry['main_score']:6.2f}"
        )
    print(f"wrote {args.out} ({len(results['tasks'])} tasks, {results['seconds']:.1f} s)", file=sys.stderr)
    return 0


__all__ = [
    "LOCAL_COPIES",
    "OFFICIAL_TASKS",
    "PAPER_TABLE1",
    "PUBLISHED",
    "EmbeddingCache",
    "LazyEmbedder",
    "averages",
    "category_table",
    "content_hash",
    "evaluate_model",
    "find_trained_models",
    "load_results",
    "model_fingerprint",
    "mteb_encoder",
    "resolve_tasks",
    "split_task_list",
    "task_table",
    "to_markdown",
    "write_tables",
]
