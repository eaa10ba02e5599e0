"""Shared fixtures: the shared benchmark data (skipped with a reason where absent), the packaged MiniLM, a tiny Mistral,
and one smoke run of the whole study that every notebook test reads back."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tests (and the notebooks the smoke study runs in kernels that inherit this environment) never read embeddings cached
# in the user's home by an earlier run: a fresh cache per test session, so every figure is computed afresh.
os.environ["SYNTHEMBED_CACHE"] = tempfile.mkdtemp(prefix="synthembed-test-cache-")

from synthembed.paths import minilm_path, shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $SYNTHEMBED_DATA); tests that need it skip where it is absent. CI has it."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path} (set SYNTHEMBED_DATA)")
    return path


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    """A tiny random-weight Mistral with a locally trained tokenizer (adds BOS, not EOS, like Mistral's)."""
    from synthembed.testing.tiny import build_tiny_mistral

    return build_tiny_mistral(tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """Run every notebook once with the smoke profile; returns (run_dir, results) for the notebook tests to read back."""
    import json

    from synthembed.study import run_study

    run_dir = run_study(profile="smoke", out=tmp_path_factory.mktemp("study"), progress=False)
    return run_dir, json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def recorded_sleeps(monkeypatch) -> list[float]:
    """asyncio.sleep made instant; the seconds each call asked for are recorded in the returned list."""
    import asyncio

    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds, *args, **kwargs):
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return slept
