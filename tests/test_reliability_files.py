"""Broken files and broken storage (issue 11): the embedding cache cannot be fooled by a model rewritten in place and
`--no-cache` writes nothing; a damaged response cache, run files that are not UTF-8, a folder that is not a model, a
full disk and a read-only file system each end in a message that names the file and what is wrong, never a traceback,
and a generation run stopped by a full disk resumes without losing or repeating an example."""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from synthembed.cli import main
from synthembed.errors import StorageError, SynthembedError, storage_error, writing
from synthembed.evaluation import cache as evaluation_cache
from synthembed.evaluation.cache import model_fingerprint, read_file_hashes
from synthembed.evaluation.run import evaluate_model
from synthembed.generation import rundir
from synthembed.generation.cache import ResponseCache
from synthembed.generation.llm import ChatRequest, ChatResponse
from synthembed.generation.pipeline import generate
from synthembed.generation.plan import GenerateConfig
from synthembed.testing.loopback import Faults, LoopbackServer

STS_PAIRS = [("A cat sleeps on the sofa.", "A cat naps on a couch.", 4.6), ("Rain falls in the city.", "Stocks rose today.", 0.2),
             ("He runs every morning.", "He jogs each day.", 4.0), ("The soup is hot.", "The train is late.", 0.4),
             ("She plays the violin.", "A woman plays music.", 3.2), ("Dogs bark at night.", "Dogs are loud.", 2.9)]  # fmt: skip
CONFIG = GenerateConfig(model="loopback", tasks_per_type=1, examples_per_task=2, languages=("English", "German"))


@pytest.fixture(autouse=True)
def _no_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def sts_task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sts")
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}" for i, (a, b, s) in enumerate(STS_PAIRS)]
    (root / "sts-test.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A small generation run with rejects (malformed replies), to copy and break."""
    out = tmp_path_factory.mktemp("gen") / "run"
    with LoopbackServer(faults=Faults(malformed=0.3, brainstorm=False)) as server:
        generate(out, CONFIG, base_url=server.base_url, backoff=0.01, progress=False)
    assert len((out / rundir.REJECTS_FILE).read_text().splitlines()) >= 2  # a second line to break
    return out


def _unfinished(run: Path, tmp_path: Path) -> Path:
    """A copy of `run` that a rerun resumes (no stats.json: the session that would have written it was killed)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / rundir.STATS_FILE).unlink()
    return copy


def _resume(run: Path, server: LoopbackServer) -> int:
    return main(["generate", "--out", str(run), "--base-url", server.base_url, "--quiet"])


# --- 1. the embedding cache ---------------------------------------------------------------------------------------


def _rewrite_in_place(path: Path) -> None:
    """New weights in the same bytes' length, written into the same file, with its old mtime put back."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    before = path.stat()
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata()
    weights = load_file(path)
    generator = torch.Generator().manual_seed(7)
    weights = {k: v + 0.5 * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in weights.items()}
    data = save(weights, metadata=metadata)
    assert len(data) == before.st_size
    with path.open("r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_a_model_rewritten_in_place_with_the_same_size_and_mtime_is_embedded_again(tiny_mistral, sts_task, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_mistral, model)
    cache_dir = tmp_path / "cache"

    def run():
        return evaluate_model(str(model), [str(sts_task)], cache_dir=cache_dir, instructions="off", show_progress=False)

    first = run()
    assert first["embedding_cache"]["misses"] > 0 and not first["embedding_cache"]["hits"]
    assert run()["embedding_cache"]["misses"] == 0  # unchanged: answered from the cache, the model not loaded
    _rewrite_in_place(model / "model.safetensors")
    again = run()
    assert again["model_hash"] != first["model_hash"]
    assert (
        again["embedding_cache"] == {"hits": 0, "misses": first["embedding_cache"]["misses"]} and again["model_loaded"]
    )
    old, new = (
        sorted((cache_dir / "embeddings" / h[:32]).glob("*.npy")) for h in (first["model_hash"], again["model_hash"])
    )
    assert [p.name for p in old] == [p.name for p in new]  # the same texts ...
    assert not np.allclose(np.load(old[0]), np.load(new[0]))  # ... embedded anew by the new weights


def test_the_hash_memo_is_used_but_not_fooled_by_a_rewrite_or_a_replacement(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 4096)
    later = time.time_ns() + 10 * evaluation_cache.RACY_NS
    monkeypatch.setattr(evaluation_cache.time, "time_ns", lambda: later)  # as if hashed long after it was written
    memo: dict = {}
    first = evaluation_cache._file_sha256(path, memo)
    assert memo[str(path.resolve())]["sha256"] == first
    reads = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: reads.append(self) or real_open(self, *a, **k))
    assert evaluation_cache._file_sha256(path, memo) == first and reads == []  # remembered: not read again
    time.sleep(0.05)  # past the file system's timestamp granularity
    stat = path.stat()
    with real_open(path, "r+b") as handle:  # same size, new bytes, old mtime
        handle.write(b"b" * 4096)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rewritten = evaluation_cache._file_sha256(path, memo)
    assert rewritten != first and reads == [path]
    replacement = tmp_path / "new.bin"  # another file renamed over it, mtime set back: another inode
    replacement.write_bytes(b"c" * 4096)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, path)
    assert evaluation_cache._file_sha256(path, memo) not in (first, rewritten)


def test_a_file_changed_just_before_it_was_hashed_is_not_remembered(tmp_path):
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"x" * 100)
    memo: dict = {}
    evaluation_cache._file_sha256(path, memo)
    assert memo == {}  # its ctime is within RACY_NS of now: a rewrite in the same clock tick could keep it


def test_models_under_a_dot_cache_folder_are_hashed_by_their_files(tmp_path):
    """Models in ~/.cache/synthembed/models had every file skipped (the check looked at the whole path for .cache), so
    all of them shared one fingerprint and one model's cached embeddings answered for another."""
    settings = {"pooling": None, "max_len": None, "device": "cpu"}
    prints = []
    for name, weights in (("a", b"1" * 64), ("b", b"2" * 64)):
        model = tmp_path / ".cache" / "models" / name
        (model / ".cache" / "huggingface").mkdir(parents=True)
        (model / "config.json").write_text('{"model_type": "bert"}')
        (model / "model.safetensors").write_bytes(weights)
        (model / ".cache" / "huggingface" / "download.lock").write_text(name)  # download metadata: not the model
        prints.append(model_fingerprint(str(model), load_settings=settings))
    assert prints[0] != prints[1]
    (tmp_path / ".cache" / "models" / "a" / ".cache" / "huggingface" / "download.lock").write_text("changed")
    assert model_fingerprint(str(tmp_path / ".cache" / "models" / "a"), load_settings=settings) == prints[0]


def test_no_cache_writes_nothing_to_the_cache(tiny_mistral, sts_task, tmp_path, monkeypatch, capsys):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv(evaluation_cache.CACHE_ENV, str(cache_dir))
    out = tmp_path / "results.json"
    args = ["evaluate", "--model", str(tiny_mistral), "--tasks", str(sts_task), "--instructions", "off"]
    assert main([*args, "--out", str(out), "--no-cache"]) == 0
    assert out.is_file() and not cache_dir.exists()  # file_hashes.json was written there before
    results = evaluate_model(str(tiny_mistral), [str(sts_task)], cache_dir=cache_dir, use_cache=False,
                             instructions="off", show_progress=False)  # fmt: skip
    assert results["embedding_cache"] is None and not cache_dir.exists()


def test_a_damaged_hash_memo_is_ignored(tmp_path):
    (tmp_path / evaluation_cache.FILE_HASHES).write_bytes(b'{"x": "\xff\xfe"}')
    assert read_file_hashes(tmp_path) == {}
    (tmp_path / evaluation_cache.FILE_HASHES).write_text('{"/m|1|2": "abc", "/n": {"stat": [1], "sha256": "d"}}')
    assert read_file_hashes(tmp_path) == {"/n": {"stat": [1], "sha256": "d"}}  # the old format's entries dropped


# --- 2. damaged files ---------------------------------------------------------------------------------------------


def test_a_damaged_response_cache_is_named_with_what_to_do(finished_run, tmp_path, capsys):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all " * 200)
    with pytest.raises(SynthembedError, match=f"response cache {garbage} is damaged or not a response cache"):
        ResponseCache(garbage)
    other = tmp_path / "other.sqlite"  # a real SQLite file of something else
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(SynthembedError, match=r"not a response cache \(no such table: responses\)"):
        ResponseCache(other, readonly=True).get(ChatRequest("m", ({"role": "user", "content": "hi"},)))
    # through the command line: a replay of it, and the resume of a run whose cache was damaged
    assert main(["generate", "--out", str(tmp_path / "new"), "--backend", "replay", "--cache", str(garbage)]) == 2
    run = _unfinished(finished_run, tmp_path)
    (run / rundir.CACHE_FILE).write_bytes(b"\x00garbage" * 500)
    for leftover in run.glob(f"{rundir.CACHE_FILE}-*"):
        leftover.unlink()
    with LoopbackServer() as server:
        assert _resume(run, server) == 2
    err = capsys.readouterr().err
    assert (
        f"response cache {garbage} is damaged" in err and f"response cache {run / rundir.CACHE_FILE} is damaged" in err
    )
    assert "Traceback" not in err and "delete it" in err


@pytest.mark.parametrize("name", [rundir.CONFIG_FILE, rundir.STATS_FILE, rundir.EXAMPLES_FILE, rundir.REJECTS_FILE])
def test_run_files_that_are_not_utf8_are_named(name, finished_run, tmp_path, capsys):
    run = _unfinished(finished_run, tmp_path)
    if name == rundir.STATS_FILE:  # a stats.json that says the run is incomplete, so the rerun reads on
        stats = json.loads((finished_run / name).read_text())
        (run / name).write_text(json.dumps({**stats, "complete": False}))
    data = (run / name).read_bytes()
    cut = data.index(b"\n", 1) + 5 if name.endswith(".jsonl") else 20  # inside the second line
    (run / name).write_bytes(data[:cut] + b"\xff\xfe" + data[cut:])
    with LoopbackServer() as server:
        assert _resume(run, server) == 2
    err = capsys.readouterr().err
    assert f"{run / name}" in err and "not UTF-8" in err and "Traceback" not in err
    if name.endswith(".jsonl"):
        assert "line 2" in err


def test_training_data_that_is_not_utf8_is_named(finished_run, tmp_path, tiny_mistral, capsys):
    data = tmp_path / "examples.jsonl"
    lines = (finished_run / rundir.EXAMPLES_FILE).read_bytes().splitlines(keepends=True)
    data.write_bytes(b"".join(lines[:2]) + lines[2][:30] + b"\xc3\x28" + lines[2][30:])
    args = ["train", "--data", str(data), "--base-model", str(tiny_mistral), "--out", str(tmp_path / "t")]
    assert main(args) == 2
    assert f"{data}, line 3: not UTF-8 text (byte 0xc3 at offset 30" in capsys.readouterr().err


def test_task_data_that_is_not_utf8_is_named(tiny_mistral, tmp_path, capsys):
    from synthembed.data import read_beir, read_classification, read_tatoeba

    sts = tmp_path / "sts"
    sts.mkdir()
    rows = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}" for i, (a, b, s) in enumerate(STS_PAIRS)]
    (sts / "sts-test.csv").write_bytes("\n".join(rows).encode() + b"\n\t\t\t0004\t1.0\tLatin-1 caf\xe9\tx\n")
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(tiny_mistral), "--tasks", str(sts), "--out", str(out), "--no-cache"]) == 2
    assert f"{sts / 'sts-test.csv'}, line 7: not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    (beir / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq1\td\xff1\t1\n")
    with pytest.raises(SynthembedError, match=r"test.tsv, line 2: not UTF-8 text \(byte 0xff at offset 4 "):
        read_beir(beir)
    (tmp_path / "train.csv").write_bytes(b"text,category\nok,a\n\x80bad,b\n")
    with pytest.raises(SynthembedError, match=r"train.csv, line 3: not UTF-8"):
        read_classification(tmp_path / "train.csv")
    (tmp_path / "tatoeba.deu-eng.deu").write_bytes(b"Gr\xfc\xdfe\n")
    (tmp_path / "tatoeba.deu-eng.eng").write_text("Greetings\n")
    with pytest.raises(SynthembedError, match=r"tatoeba.deu-eng.deu, line 1: not UTF-8"):
        read_tatoeba(tmp_path)


@pytest.mark.parametrize("command", ["evaluate", "train", "passkey"])
def test_a_folder_that_is_not_a_model_is_named(command, finished_run, tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("weights are elsewhere")
    option, args = {
        "evaluate": ("--model", ["--tasks", "STSBenchmark", "--out", str(tmp_path / "r.json")]),
        "train": ("--base-model", ["--data", str(finished_run), "--out", str(tmp_path / "t")]),
        "passkey": ("--model", ["--lengths", "128", "--out", str(tmp_path / "pk")]),
    }[command]
    assert main([command, option, str(folder), *args]) == 2
    err = capsys.readouterr().err
    assert f"{option} {folder} is a folder but not a model: it has no config.json or adapter_config.json" in err
    assert "(it holds notes.txt)" in err and not (tmp_path / "t").exists()


def test_a_training_run_given_as_a_model_points_at_its_export(tmp_path):
    from synthembed.paths import check_model_folder

    (tmp_path / "run" / "merged").mkdir(parents=True)
    (tmp_path / "run" / "merged" / "config.json").write_text("{}")
    (tmp_path / "run" / "train_log.csv").write_text("step,loss\n")
    with pytest.raises(SynthembedError, match=r"did you mean .*run/merged"):
        check_model_folder(str(tmp_path / "run"), "--model")


def test_a_config_without_a_model_type_is_a_clear_error(tmp_path):
    from synthembed.model import load_embedder

    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(SynthembedError, match=f"cannot load model '{tmp_path}'.*model_type"):
        load_embedder(str(tmp_path), device="cpu")


# --- 2. a full disk, a read-only file system -------------------------------------------------------------------------


class _FullFile:
    """A file opened for writing on a full disk: opening works, every write fails as the kernel says."""

    def __init__(self, handle, code: int):
        self._handle, self._code = handle, code

    def write(self, data):
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _storage_fails(monkeypatch, folder: Path, code: int = errno.ENOSPC) -> None:
    """Every write of a file under `folder` through Path.open fails with `code` (ENOSPC: a full disk)."""
    real_open = Path.open

    def open_(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        writes = any(c in mode for c in "wax+")
        return _FullFile(handle, code) if writes and Path(self).absolute().is_relative_to(folder) else handle

    monkeypatch.setattr(Path, "open", open_)


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "no space left on the device; free some space"),
                                        (errno.EROFS, "the file system is read-only; write elsewhere")])  # fmt: skip
def test_a_generation_run_stopped_by_its_storage_says_so_and_resumes_losing_nothing(code, says, tmp_path, monkeypatch,
                                                                                  capsys, caplog):  # fmt: skip
    out = tmp_path / "run"
    args = ["generate", "--out", str(out), "--model", "loopback", "--tasks-per-type", "1", "--examples-per-task", "2",
            "--languages", "English,German", "--quiet"]  # fmt: skip
    real_append = rundir.Appender._append
    appended = []

    def append(handle, record):  # the disk fills up after three examples
        if len(appended) == 3:
            raise OSError(code, os.strerror(code))
        appended.append(record)
        real_append(handle, record)

    with LoopbackServer(latency=0.3) as server:  # requests still in flight when the disk fills
        with monkeypatch.context() as patch:
            patch.setattr(rundir.Appender, "_append", staticmethod(append))
            assert main([*args, "--base-url", server.base_url]) == 2
        gc.collect()  # where asyncio would report a worker error nobody retrieved
        err = capsys.readouterr().err
        assert f"--out {out}: cannot write there: {says}" in err and "Traceback" not in err
        # asyncio's "_GatheringFuture exception was never retrieved" came first before (on stderr, through logging)
        assert "never retrieved" not in err + caplog.text
        assert main([*args, "--base-url", server.base_url]) == 0  # space again: the rerun resumes
    ids = [json.loads(line)["id"] for line in (out / rundir.EXAMPLES_FILE).read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 12 and ids[:3] == [r["id"] for r in appended[:3]]


def test_an_evaluation_result_on_a_full_disk_is_named(tiny_mistral, sts_task, tmp_path, monkeypatch, capsys):
    _storage_fails(monkeypatch, tmp_path / "results")
    out = tmp_path / "results" / "r.json"
    args = ["evaluate", "--model", str(tiny_mistral), "--tasks", str(sts_task), "--out", str(out), "--no-cache"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write there: no space left on the device" in err and "Traceback" not in err
    assert list((tmp_path / "results").iterdir()) == []  # neither the file nor its temporary


def test_a_full_response_cache_is_a_storage_error(tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    pages = cache.conn.execute("PRAGMA page_count").fetchone()[0]
    cache.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    request = ChatRequest("m", ({"role": "user", "content": "x" * 20_000},))
    with pytest.raises(StorageError, match=f"response cache {tmp_path / 'cache.sqlite'}: cannot write there: no space"):
        cache.put(request, ChatResponse("y" * 20_000, "stop", None, 1, 1, "m"))


@pytest.mark.parametrize("error", ["safetensors", "torch"])
def test_a_checkpoint_on_a_full_disk_is_named_and_the_last_one_kept(error, tmp_path):
    """safetensors and torch.save report a full disk as their own exceptions (messages as seen on a full tmpfs)."""
    import safetensors

    from synthembed.training.checkpoint import CHECKPOINTS, STATE, latest_checkpoint, save_checkpoint

    class Accelerator:
        is_main_process = True

        def __init__(self):
            self.full = False

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            (Path(folder) / "model.safetensors").write_bytes(b"half a checkpoint")
            if self.full and error == "safetensors":
                raise safetensors.SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )
            if self.full:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    accelerator = Accelerator()
    save_checkpoint(accelerator, tmp_path, 2, (0, 2), 10, keep=2)
    accelerator.full = True
    with pytest.raises(StorageError, match=r"checkpoint .*step-000004: cannot write there: no space left") as err:
        save_checkpoint(accelerator, tmp_path, 4, (0, 4), 10, keep=2)
    assert "step-000002 is the latest complete checkpoint: --resume continues from it" in str(err.value)
    assert latest_checkpoint(tmp_path).name == "step-000002" and (latest_checkpoint(tmp_path) / STATE).is_file()
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["step-000002"]  # the half one is gone


def test_storage_errors_name_the_file_and_keep_other_errors():
    full = storage_error(OSError(errno.ENOSPC, "No space left on device"), "/runs/x.json", "--out")
    assert isinstance(full, SynthembedError) and isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert (
        str(full)
        == "--out /runs/x.json: cannot write there: no space left on the device; free some space, or write elsewhere"
    )
    denied = storage_error(PermissionError(errno.EACCES, "Permission denied", "/etc/x"), write=False)
    assert str(denied) == "/etc/x: permission denied"  # not known to be a write: not said to be one
    assert str(storage_error(OSError(errno.EROFS, "Read-only file system", "/ro/f"))).startswith("/ro/f: cannot write")
    assert (
        storage_error(sqlite3.OperationalError("attempt to write a readonly database"), "c.sqlite").errno == errno.EROFS
    )
    assert storage_error(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None
    assert storage_error(ValueError("no space for a bug")) is None
    assert storage_error(SynthembedError("--out x: cannot write there (Permission denied)")) is None  # already clear
    with pytest.raises(KeyError), writing("/x"):
        raise KeyError("a bug keeps its type")
    with pytest.raises(StorageError, match="cannot write there"), writing("/x", "checkpoint"):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
