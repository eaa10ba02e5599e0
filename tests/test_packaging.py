"""The project's own conventions: environment.yml mirrors pyproject.toml, notebooks carry no outputs, every notebook
declares the parameters the study injects, and each profile only names parameters that notebooks declare."""

from __future__ import annotations

import json
import re

import pytest
import tomllib
import yaml

from synthembed.paths import repo_root
from synthembed.study import INJECTED, PROFILES, declared_parameters, list_notebooks, load_profile, notebook_parameters

ROOT = repo_root()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(requirement: str) -> str:
    return requirement.replace(" ", "").lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for extra in ("dev", "lab") for r in project["optional-dependencies"][extra]]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    listed = {_name(r): _spec(r) for r in pip_section if not r.startswith("-e")}
    for requirement in wanted:
        name = _name(requirement)
        assert name in listed, f"environment.yml lacks {name}"
        if name == "torch":
            assert listed[name] == "torch==2.13.0"  # the pin the Makefile installs first
        else:
            assert listed[name] == _spec(requirement), f"{name}: pyproject says {requirement}, environment.yml {listed[name]}"
    extra = set(listed) - {_name(r) for r in wanted}
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {sorted(extra)}"


def test_torch_installed_first_and_pinned():
    makefile = (ROOT / "Makefile").read_text()
    torch_at = makefile.index('install --quiet "$(TORCH)"')
    assert torch_at < makefile.index('install --quiet -e ".[dev]"')
    assert "TORCH  ?= torch==2.13.0" in makefile


@pytest.mark.parametrize("notebook", list_notebooks(), ids=lambda p: p.name)
def test_notebook_committed_without_outputs(notebook):
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{notebook.name} carries outputs"
            assert cell.get("execution_count") is None, f"{notebook.name} carries execution counts"


@pytest.mark.parametrize("notebook", list_notebooks(), ids=lambda p: p.name)
def test_notebook_shape(notebook):
    nb = json.loads(notebook.read_text())
    assert nb["cells"][0]["cell_type"] == "markdown", "first cell says purpose, inputs, outputs"
    declared = declared_parameters(notebook)
    for name in INJECTED:
        assert name in declared


def test_every_profile_file_is_listed():
    assert sorted(PROFILES) == sorted(p.stem for p in (ROOT / "params").glob("*.yaml"))


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_name_only_declared_parameters(profile):
    settings = load_profile(profile)
    for notebook in list_notebooks():
        notebook_parameters(notebook, settings, {"run_dir": "/tmp/x", "profile": profile})  # raises on unknown names


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_name_tasks_that_exist(profile):
    """A misspelt MTEB task in a profile would fail hours into a study; mteb knows every name offline."""
    from synthembed.evaluation.run import resolve_tasks
    from synthembed.paths import shared_data_dir

    section = load_profile(profile)["04_evaluate"]
    limit = section.get("limit")
    if limit is not None and not shared_data_dir().is_dir():
        pytest.skip("a profile with a limit reads local task copies, and the shared data is absent")
    tasks = resolve_tasks(section["tasks"], data_dir=shared_data_dir() if limit is not None else None, limit=limit)
    assert len(tasks) >= len(section["tasks"])


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make study" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
