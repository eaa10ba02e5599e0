"""The study runner on throwaway notebooks: parameters checked before anything runs, failures named, results merged."""

from __future__ import annotations

import json

import nbformat
import pytest

from synthembed.errors import SynthembedError
from synthembed.study import record_results, run_study


def _notebook(path, body: str, params: str = "run_dir = ''\nprofile = ''\nseed = 0\nsize = 1\n"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def layout(tmp_path):
    nbs, params = tmp_path / "notebooks", tmp_path / "params"
    nbs.mkdir()
    params.mkdir()
    record = "from synthembed.study import record_results\nrecord_results(run_dir, '{stem}', size=size * 2, seed=seed)"
    _notebook(nbs / "01_first.ipynb", record.format(stem="01_first"))
    _notebook(nbs / "02_second.ipynb", record.format(stem="02_second"))
    (params / "smoke.yaml").write_text("common:\n  seed: 3\n01_first:\n  size: 5\n")
    return nbs, params, tmp_path / "run"


def test_runs_in_order_and_merges_results(layout):
    nbs, params, out = layout
    run_dir = run_study("smoke", out=out, notebooks=nbs, params=params, progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert results == {"01_first": {"size": 10, "seed": 3}, "02_second": {"size": 2, "seed": 3}}
    assert (run_dir / "01_first.ipynb").is_file() and (run_dir / "02_second.ipynb").is_file()


def test_only_selects_notebooks(layout):
    nbs, params, out = layout
    run_dir = run_study("smoke", only="2", out=out, notebooks=nbs, params=params, progress=False)
    assert json.loads((run_dir / "results.json").read_text()).keys() == {"02_second"}
    with pytest.raises(SynthembedError, match="07"):
        run_study("smoke", only="07", out=out, notebooks=nbs, params=params, progress=False)


def test_unknown_parameter_is_an_error_before_anything_runs(layout):
    nbs, params, out = layout
    (params / "smoke.yaml").write_text("02_second:\n  sise: 5\n")
    with pytest.raises(SynthembedError, match="02_second.ipynb does not declare parameter.*sise"):
        run_study("smoke", out=out, notebooks=nbs, params=params, progress=False)
    assert not (out / "01_first.ipynb").exists(), "nothing runs when any notebook's parameters are wrong"


def test_section_for_missing_notebook_is_an_error(layout):
    nbs, params, out = layout
    (params / "smoke.yaml").write_text("03_third:\n  size: 5\n")
    with pytest.raises(SynthembedError, match="03_third"):
        run_study("smoke", out=out, notebooks=nbs, params=params, progress=False)


def test_secret_parameters_are_refused(layout):
    nbs, params, out = layout
    _notebook(nbs / "01_first.ipynb", "pass", params="run_dir = ''\nprofile = ''\nseed = 0\napi_key = ''\n")
    (params / "smoke.yaml").write_text("01_first:\n  api_key: sk-123\n")
    with pytest.raises(SynthembedError, match="secrets"):
        run_study("smoke", only="01", out=out, notebooks=nbs, params=params, progress=False)


def test_failing_cell_names_notebook_and_cell(layout):
    nbs, params, out = layout
    _notebook(nbs / "02_second.ipynb", "raise ValueError('broken on purpose')")
    with pytest.raises(SynthembedError, match=r"02_second.ipynb failed in cell \d+.*ValueError: broken on purpose"):
        run_study("smoke", out=out, notebooks=nbs, params=params, progress=False)


def test_unknown_profile(layout):
    nbs, params, out = layout
    with pytest.raises(SynthembedError, match="unknown profile 'nope'"):
        run_study("nope", out=out, notebooks=nbs, params=params, progress=False)


def test_record_results_merges(tmp_path):
    record_results(tmp_path, "05_x", a=1)
    path = record_results(tmp_path, "05_x", b=2.5)
    assert json.loads(path.read_text()) == {"a": 1, "b": 2.5}
