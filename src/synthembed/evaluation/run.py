"""Evaluate one model on MTEB tasks or local task folders: what `synthembed evaluate` runs.

    synthembed evaluate --model runs/train/model --tasks SciFact,../shared/data/sts/sick-r --data-dir ../shared/data --out eval.json

    from synthembed.evaluation.run import evaluate_model
    results = evaluate_model("all-MiniLM-L6-v2", ["../shared/data/sts/stsbenchmark"])
    results["tasks"][0]["main_score"]   # mteb's main score, 0 to 1

Instructions (encoder.py) apply to models trained with them (decoder-only or our exports); `instructions="off"`
evaluates a model as published without them (how MTEB scores all-MiniLM-L6-v2). Scores come from mteb's evaluators
only. mteb's result cache is never used (`cache=None`), so a changed model can never get an old score; what is cached
is embeddings (cache.py). Tables of the results are tables.py; the command line, commands.py.

mteb, torch and the model load inside the functions that need them, so that `synthembed evaluate --help` stays quick.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SynthembedError
from ..files import check_writable, without_non_finite, write_json_atomic
from ..model_config import SYNTHEMBED_CONFIG, read_model_config, uses_instructions
from ..paths import check_model_folder, resolve_model_path
from .cache import (
    EmbeddingCache,
    cache_writable,
    default_cache_dir,
    model_dirs,
    model_fingerprint,
    read_file_hashes,
    write_file_hashes,
)
from .tables import averages
from .task_files import detect_kind, kind_of

if TYPE_CHECKING:
    from ..model import Embedder

INSTRUCTION_MODES = ("auto", "on", "off")
# Where each official task's local copy lives inside the shared data folder (../shared/data/README.md).
LOCAL_COPIES = {
    "SciFact": "beir/scifact",
    "STSBenchmark": "sts/stsbenchmark",
    "SICK-R": "sts/sick-r",
    "Banking77Classification": "classification/banking77",
    "Tatoeba": "multilingual/tatoeba",
    "FloresBitextMining": "multilingual/flores200/devtest",
}


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
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Evaluate one model on tasks (names, benchmark names, directories, or mteb task objects); what `synthembed evaluate` runs.

    Returns (and with `out`, writes atomically at the end) {"model", "model_hash", "instructions", "tasks": [one entry per
    task: name, kind, main_score (0 to 1), main_score_name, subsets / languages, mteb's full scores], "averages": per
    kind and overall, "embedding_cache": hits and misses, "seconds"}. `embedder`: a model.Embedder already made
    (default: `model` loaded with pooling, max_len and device, lazily where its embeddings may all be cached).

    Example:
        >>> r = evaluate_model("all-MiniLM-L6-v2", ["../shared/data/sts/sick-r"], instructions="off")  # doctest: +SKIP
        >>> round(100 * r["tasks"][0]["main_score"], 2)  # doctest: +SKIP
        77.58
    """
    import mteb

    from .encoder import MtebEncoder

    start = time.perf_counter()
    out = _check_arguments(instructions, out, overwrite, data_dir)
    if embedder is None:
        check_model_folder(model, "--model")  # before the tasks are read
    task_objects = [t for t in tasks if not isinstance(t, str | os.PathLike)]
    names = [str(t) for t in tasks if isinstance(t, str | os.PathLike)]
    resolved = task_objects + (resolve_tasks(names, data_dir, limit=limit, languages=languages) if names else [])

    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    use_cache = use_cache and cache_writable(cache_root)  # else says so: a cache is a speed-up, never a reason to fail
    load_kwargs = {"pooling": pooling, "max_len": max_len, "device": device}
    embedder, model_hash = _embedder_and_fingerprint(model, embedder, load_kwargs, use_cache, cache_root)
    with_instructions = instructions == "on" or (instructions == "auto" and uses_instructions(model, embedder))
    cache = EmbeddingCache(cache_root, model_hash) if use_cache else None
    encoder = MtebEncoder(embedder, name=model, instructions=with_instructions, overrides=overrides, cache=cache,
                          model_hash=model_hash, show_progress=show_progress)  # fmt: skip
    entries = [_evaluate_task(encoder, task, batch_size, show_progress) for task in resolved]

    results = {
        "model": str(model),
        "model_hash": model_hash,
        "instructions": with_instructions,
        "instruction_overrides": dict(overrides or {}),
        # as loaded; None where every embedding came from the cache and the model was never loaded
        "pooling": embedder.pooling,
        "max_len": embedder.max_len,
        "model_loaded": embedder.loaded,
        "mteb_version": mteb.__version__,
        "tasks": entries,
        "averages": averages(entries),
        "embedding_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    _note_non_finite(results)
    if out is not None:
        write_json_atomic(out, results)  # NaN written as null: bare NaN is not JSON
    return results


def _note_non_finite(results: dict[str, Any]) -> None:
    """Record (and say) which scores are NaN or infinite: the file writes them as null, and a reader should know why
    rather than see a score vanish. The returned results keep the floats, so arithmetic on them still works."""
    where = without_non_finite(results)[1]
    if not where:
        return
    results["non_finite_scores"] = {
        "where": where,
        "written_as": None,
        "why": "mteb returned NaN (or infinity): usually a correlation over identical similarities, i.e. a model that "
        "gives every text the same embedding; JSON has no NaN, so the results file holds null there",
    }
    print(f"[evaluate] warning: scores that are not numbers (NaN), written as null: {', '.join(where[:5])}"
          + (", ..." if len(where) > 5 else ""), file=sys.stderr)  # fmt: skip


def _check_arguments(instructions: str, out, overwrite: bool, data_dir) -> Path | None:
    """Refuse what would fail late (or overwrite finished results) before anything loads; returns `out` as a Path."""
    if instructions not in INSTRUCTION_MODES:
        raise SynthembedError(f"instructions must be one of {', '.join(INSTRUCTION_MODES)}, not {instructions!r}")
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite:
            raise SynthembedError(f"{out} exists; pass --overwrite to replace it")
        if out.exists() and out.is_dir():
            raise SynthembedError(f"{out} is a directory; --out names the JSON file to write")
        check_writable(out, "--out")  # now, not after every task has run
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SynthembedError(f"data directory {data_dir} does not exist")
    return out


def _embedder_and_fingerprint(
    model: str, embedder: Embedder | None, load_kwargs: dict[str, Any], use_cache: bool, cache_root: Path
) -> tuple[Embedder, str]:
    """The Embedder to evaluate and its fingerprint. A model with files on disk is fingerprinted from its files and load
    settings and loaded only if some text turns out not to be cached (LazyEmbedder); any other is loaded first."""
    memo = read_file_hashes(cache_root)
    if embedder is None:
        if _missing_directory(model):
            raise SynthembedError(f"model {model} does not exist")
        import torch

        from ..model import LazyEmbedder, default_device, load_embedder

        if use_cache and model_dirs(model):
            device = load_kwargs["device"]
            device_type = torch.device(device).type if device else default_device().type
            load_settings = {**load_kwargs, "device": device_type}
            model_hash = model_fingerprint(model, memo=memo, load_settings=load_settings)
            embedder = LazyEmbedder(model, load_kwargs)
        else:
            embedder = load_embedder(model, **load_kwargs)
            model_hash = model_fingerprint(model, embedder, memo)
    else:
        model_hash = model_fingerprint(model, embedder, memo)
    if use_cache:  # --no-cache (or an unwritable cache) writes nothing there
        write_file_hashes(cache_root, memo)
    return embedder, model_hash


def _missing_directory(model: str) -> bool:
    """A model named as a directory that is not there. A hub id (`org/name`, one slash) is no directory: it resolves to
    a local copy (paths.resolve_model_path) or is left to transformers, whose error names the fetch command.

    >>> _missing_directory("./no/such/model"), _missing_directory("HuggingFaceTB/SmolLM2-135M-Instruct")
    (True, False)
    """
    if Path(resolve_model_path(model)).expanduser().exists():
        return False
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def _evaluate_task(encoder, task, batch_size: int, show_progress: bool) -> dict[str, Any]:
    """Run mteb's evaluation of one task; its entry in the results. A failure names the task (and the hub, for one
    read from there)."""
    import mteb

    task_start = time.perf_counter()
    try:
        result = mteb.evaluate(
            encoder,
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
        local = getattr(task, "local_path", None) is not None
        where = f"local task {task.local_path}" if local else f"mteb task {task.metadata.name} (data from the hub)"
        raise SynthembedError(f"{where} failed: {type(err).__name__}: {err}".splitlines()[0]) from err
    if not result.task_results:
        problem = result.exceptions[0].exception if result.exceptions else "no result"
        raise SynthembedError(f"{task.metadata.name}: {problem}")
    return task_entry(task, result.task_results[0], time.perf_counter() - task_start)


def task_entry(task, result, seconds: float) -> dict[str, Any]:
    """One task's JSON entry: name, kind, main score (mteb's, 0 to 1), per-subset (per-language) main scores, full scores."""
    split = task.eval_splits[0]  # a local folder's first split (it may hold only some of the official ones)
    subsets = {s["hf_subset"]: float(s["main_score"]) for s in result.scores.get(split, [])}
    kind = kind_of(task)
    entry = {
        "name": task.metadata.name,
        "kind": kind,
        "main_score": float(result.get_score()),
        "main_score_name": task.metadata.main_score,
        "split": split,
        "source": f"local:{task.local_path}" if getattr(task, "local_path", None) else "mteb hub",
        "limit": getattr(task, "local_limit", None),
        # a limited run is a subset, and the tables say of what size (tables.subset_note); None: the whole task
        "data_subset": _data_subset(task),
        # which official protocol scored it (None: a folder scored by its kind's defaults) and its settings
        "protocol": _protocol(task),
        "evaluation_seconds": round(seconds, 2),
        "scores": result.to_dict(),
    }
    if len(subsets) > 1 or kind == "bitext":
        entry["subsets"] = subsets
    if len(task.eval_splits) > 1:  # main_score is mteb's mean over them; each split's, per subset
        entry["split_scores"] = {
            name: {s["hf_subset"]: float(s["main_score"]) for s in result.scores.get(name, [])}
            for name in task.eval_splits
        }
    if kind == "bitext":
        # per language, by the non-English side of each pair (Tatoeba `deu-eng` -> deu, FLORES `deu_Latn-eng_Latn` -> deu_Latn)
        entry["languages"] = {subset.split("-")[0]: score for subset, score in subsets.items()}
    return entry


def _protocol(task) -> dict[str, Any]:
    from .tasks import protocol_of

    return protocol_of(task)


def _data_subset(task) -> dict[str, Any] | None:
    """{"count", "unit"} of what a local task limited to a subset held when scored (40 queries, 40 pairs, ...)."""
    if getattr(task, "local_limit", None) is None:
        return None
    return {"count": task.local_size, "unit": task.size_unit}


# --- which tasks ------------------------------------------------------------------------------------------------------


def split_task_list(spec: str | Sequence[str]) -> list[str]:
    """`--tasks` text -> entries: commas separate, except inside parentheses (benchmark names like `MTEB(eng, v2)`).

    >>> split_task_list("MTEB(eng, v2),SciFact")
    ['MTEB(eng, v2)', 'SciFact']
    """
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
    or benchmark, read from its local copy in `data_dir` where one exists, else from the hub; `NAME=DIR` binds a folder
    to the official task NAME (as its English subset where it has several), `NAME:SUBSET=DIR` to one named subset.

    Every entry is checked before anything runs; an unknown one raises naming it (with close names mteb knows).
    """
    tasks = []
    for entry in split_task_list(entries):
        name, bound, folder = entry.partition("=")
        if bound:  # NAME=DIR or NAME:SUBSET=DIR: a local folder scored with the official task's protocol
            folder_path = Path(folder).expanduser()
            if not folder_path.is_dir():
                raise SynthembedError(f"{entry}: task directory {folder} does not exist")
            from .tasks import bound_task

            name, _, subset = name.strip().partition(":")
            tasks.append(bound_task(name, folder_path, languages=languages, limit=limit, subset=subset or None))
            continue
        path = Path(entry).expanduser()
        if data_dir is not None and not path.exists() and (Path(data_dir) / entry).exists():
            path = Path(data_dir) / entry
        if path.exists() or _looks_like_path(entry):
            if not path.exists():
                raise SynthembedError(f"task directory {entry} does not exist")
            detect_kind(path)  # a clear error for a folder in no known layout
            tasks.append(_local(path, languages=languages, limit=limit))
        else:
            tasks += _named_tasks(entry, data_dir, limit, languages)
    if not tasks:
        raise SynthembedError("no tasks given")
    unique = {}
    for task in tasks:  # a task named twice (BEIR inside MTEB(eng, v1), say) runs once
        unique.setdefault(task.metadata.name, task)
    return list(unique.values())


def _local(path: Path, **kwargs):
    from .tasks import local_task

    return local_task(path, **kwargs)


def _local_copy(name: str, data_dir) -> Path | None:
    """The folder holding a local copy of the official task `name` in `data_dir`, if there is one."""
    copy = LOCAL_COPIES.get(name)
    if data_dir is None or not copy or not (Path(data_dir) / copy).exists():
        return None
    return Path(data_dir) / copy


def _named_tasks(entry: str, data_dir, limit: int | None, languages: list[str] | None) -> list:
    """An mteb task or benchmark by name: [its task], or its member tasks; local copies where `data_dir` has them."""
    import mteb

    copy = _local_copy(entry, data_dir)
    if copy is not None:
        return [_local(copy, name=entry, languages=languages, limit=limit)]
    if limit is not None:
        raise SynthembedError(f"--limit works on local tasks only; {entry} would be read from the hub")
    try:
        return [mteb.get_task(entry)]
    except (KeyError, ValueError) as err:
        task_error = str(err).strip("'\"")
    try:
        benchmark = mteb.get_benchmark(entry)
    except (KeyError, ValueError):
        # mteb's own message carries its suggestion ("Did you mean: 'SciFact'?")
        hint = task_error.split("not found.", 1)[1].strip() if "not found." in task_error else ""
        raise SynthembedError(
            f"unknown task {entry!r}: neither a directory nor an mteb task or benchmark"
            + (f" ({hint})" if hint else "")
        ) from None
    members = []
    for task in benchmark.tasks:  # members with a local copy are read from it
        copy = _local_copy(task.metadata.name, data_dir)
        members.append(task if copy is None else _local(copy, name=task.metadata.name, languages=languages))
    return members


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


def find_trained_model(train_dir: str | Path) -> Path | None:
    """The model notebook 03 exported into `train_dir` (training's export: merged/, else adapter/), or None."""
    train_dir = Path(train_dir)
    for candidate in (train_dir / "merged", train_dir / "adapter", train_dir):
        if read_model_config(candidate) is not None:
            return candidate
    return None
