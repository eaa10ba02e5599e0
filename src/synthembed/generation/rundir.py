"""The run directory of a generation run: the only code that reads or writes its files (docs/design.md, "Data formats").

    from synthembed.generation import rundir
    examples = rundir.read_examples("runs/gen")            # accepted examples, as dicts
    rejects = rundir.read_rejects("runs/gen", "generate")  # rejected replies of the generation stage, with reasons
    rundir.run_languages("runs/gen"), rundir.is_stand_in("runs/gen")

A run directory holds:
- config.json: {"plan": the GenerateConfig, "runtime": backend, endpoint (no credentials), budget, ...};
- tasks.jsonl: the brainstormed task definitions, rewritten whole after each brainstorm;
- examples.jsonl and rejects.jsonl: appended one flushed line at a time, in plan order, so a killed run keeps every
  whole line (a half-written last line is dropped when the run resumes);
- stats.json: written at the end of each session; cache.sqlite: every response (generation/cache.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ..data import iter_jsonl
from ..errors import SynthembedError
from ..files import folder_entries, replace_atomic, write_json_atomic

CONFIG_FILE = "config.json"
TASKS_FILE = "tasks.jsonl"
EXAMPLES_FILE = "examples.jsonl"
REJECTS_FILE = "rejects.jsonl"
STATS_FILE = "stats.json"
CACHE_FILE = "cache.sqlite"


# --- config.json -------------------------------------------------------------------------------------------------------


def read_config(out: str | Path) -> dict[str, Any] | None:
    """config.json of a run ({"plan": ..., "runtime": ...}), None where there is none."""
    path = Path(out) / CONFIG_FILE
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the run; one that is not UTF-8, not JSON or not an object is a SynthembedError naming it."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SynthembedError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                              "the file is damaged") from None  # fmt: skip
    except json.JSONDecodeError as err:
        raise SynthembedError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); the file is damaged") from None
    if not isinstance(obj, dict):
        raise SynthembedError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def write_config(out: str | Path, plan: dict[str, Any], runtime: dict[str, Any]) -> None:
    write_json_atomic(Path(out) / CONFIG_FILE, {"plan": plan, "runtime": runtime})


def check_out_dir(out: Path, plan: dict[str, Any]) -> bool:
    """True when `out` already holds a run of this plan (resume). A different plan, or a folder that holds something
    else, is an error and nothing in it is touched."""
    existing = read_config(out)
    if existing is not None:
        stored = existing.get("plan", {})
        differs = sorted(k for k in set(stored) | set(plan) if stored.get(k) != plan.get(k))
        if differs:
            details = "; ".join(f"{k}: run has {stored.get(k)!r}, asked for {plan.get(k)!r}" for k in differs)
            raise SynthembedError(
                f"{out} holds a generation run with a different config ({details}). Resume it with the same settings "
                "(or none: they are read from its config.json), or choose another --out."
            )
        return True
    if out.exists() and (not out.is_dir() or folder_entries(out)):
        raise SynthembedError(f"{out} exists and is not a generation run (no {CONFIG_FILE}); choose an empty or new --out")
    return False


def safe_url(url: str | None) -> str | None:
    """A base URL without any user:password part, for config.json and stats.json.

    >>> safe_url("https://user:pw@example.org/v1")
    'https://example.org/v1'
    """
    if not url:
        return None
    return re.sub(r"//[^/@]*@", "//", url)


def cache_path(out: str | Path, cache: str | Path | None = None) -> Path:
    """The response cache of a run: `cache` when given (replay reads another run's), else OUT/cache.sqlite."""
    return Path(cache) if cache else Path(out) / CACHE_FILE


# --- the JSONL files ---------------------------------------------------------------------------------------------------


def truncate_partial_line(path: Path) -> None:
    """Drop a last line that a killed process left half written (no newline): it was never part of the run."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        content = handle.read()
        handle.truncate(content.rfind(b"\n") + 1)


def _records(path: Path, repair: bool) -> list[dict[str, Any]]:
    if repair:
        truncate_partial_line(path)
    return [obj for _, obj in iter_jsonl(path)] if path.is_file() else []


def iter_records(run_dir: str | Path, name: str, *, repair: bool = False) -> Iterator[dict[str, Any]]:
    """The records of one of the run's JSONL files (EXAMPLES_FILE, REJECTS_FILE) a line at a time, none where it is
    missing: how a resumed run reads 500k examples without holding them. `repair` as for read_examples."""
    path = Path(run_dir) / name
    if repair:
        truncate_partial_line(path)
    if path.is_file():
        for _, obj in iter_jsonl(path):
            yield obj


def read_examples(run_dir: str | Path, *, missing_ok: bool = False, repair: bool = False) -> list[dict[str, Any]]:
    """examples.jsonl as dicts. Without it a folder is not a generation run (an error unless `missing_ok`).

    `repair` drops a half-written last line first: only the run's own session does that, before it appends.
    """
    path = Path(run_dir) / EXAMPLES_FILE
    if not path.is_file() and not missing_ok:
        raise SynthembedError(f"{run_dir} is not a generation run: {EXAMPLES_FILE} is missing")
    return _records(path, repair)


def read_rejects(run_dir: str | Path, stage: str | None = None, *, repair: bool = False) -> list[dict[str, Any]]:
    """rejects.jsonl as dicts, of one stage ("brainstorm" or "generate") or all; [] where nothing was rejected."""
    rejects = _records(Path(run_dir) / REJECTS_FILE, repair)
    return rejects if stage is None else [r for r in rejects if r.get("stage", "generate") == stage]


def read_tasks(run_dir: str | Path) -> list[dict[str, Any]]:
    """tasks.jsonl: {"task_type", "task", "request_id"} per brainstormed task definition."""
    return _records(Path(run_dir) / TASKS_FILE, repair=False)


def write_tasks(out: str | Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    replace_atomic(Path(out) / TASKS_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class Appender:
    """examples.jsonl and rejects.jsonl of a session, opened for appending; every record is one flushed line."""

    def __init__(self, out: str | Path):
        self._examples: TextIO = (Path(out) / EXAMPLES_FILE).open("a", encoding="utf-8")
        self._rejects: TextIO = (Path(out) / REJECTS_FILE).open("a", encoding="utf-8")

    @staticmethod
    def _append(handle: TextIO, record: dict[str, Any]) -> None:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()  # a killed run keeps every whole line it wrote

    def example(self, record: dict[str, Any]) -> None:
        self._append(self._examples, record)

    def reject(self, record: dict[str, Any]) -> None:
        self._append(self._rejects, record)

    def close(self) -> None:
        self._examples.close()
        self._rejects.close()


# --- stats.json --------------------------------------------------------------------------------------------------------


def read_stats(run_dir: str | Path, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """stats.json of a run; without it an error ("not a generation run"), or None when `missing_ok`."""
    path = Path(run_dir) / STATS_FILE
    if not path.is_file():
        if missing_ok:
            return None
        raise SynthembedError(f"{run_dir} is not a generation run: no {STATS_FILE}")
    return _read_json(path)


def write_stats(out: str | Path, stats: dict[str, Any]) -> None:
    write_json_atomic(Path(out) / STATS_FILE, stats)


# --- what other stages ask of a run ------------------------------------------------------------------------------------


def run_languages(run_dir: str | Path) -> tuple[str, ...] | None:
    """The languages a run sampled from (its config.json), or None where the run has no config."""
    languages = (read_config(run_dir) or {}).get("plan", {}).get("languages")
    return tuple(languages) if languages else None


def is_stand_in(run_dir: str | Path) -> bool | None:
    """Whether the run's LLM was the loopback stand-in (its stats.json says so), None where the run has no stats."""
    stats = read_stats(run_dir, missing_ok=True)
    return None if stats is None else bool(stats.get("llm", {}).get("stand_in"))


# --- batches.json and batches/: the openai-batch backend's record (generation/batch.py; the files: batch_files.py) ---

BATCHES_FILE = "batches.json"
BATCH_INPUTS_DIR = "batches"


def read_batches(out: str | Path) -> dict[str, Any]:
    """batches.json: {"batches": [one entry per batch file: its file, upload, batch id, status, ...]}."""
    path = Path(out) / BATCHES_FILE
    return _read_json(path) if path.is_file() else {"batches": []}


def write_batches(out: str | Path, state: dict[str, Any]) -> None:
    write_json_atomic(Path(out) / BATCHES_FILE, state)


def batch_input_path(out: str | Path, name: str) -> Path:
    return Path(out) / name
