"""Run the numbered notebooks headless, in order, with a parameter profile.

    synthembed study --profile smoke            # every notebook, offline, CPU, minutes
    synthembed study --profile default --only 02,03
    synthembed study --profile cpu --out runs/cpu-study --only 04,05,06    # continue a study: the notebooks not yet run
    synthembed study --profile cpu --out runs/cpu-study --only 04 --overwrite    # run a finished notebook again

Profiles are params/<profile>.yaml: a `common` section given to every notebook, and one section per notebook stem
(`02_generate:`). Papermill only warns about a parameter that a notebook does not declare; here it is an error, found
before anything runs. Executed notebooks go to runs/<timestamp>/, and each notebook's key numbers, recorded with
`record_results`, are merged into runs/<timestamp>/results.json for tests to read back.

One study at a time works in a run directory (files.folder_lock). A notebook that already finished there (papermill
recorded its end and no error) is not run again, and so not overwritten, without `overwrite=True` (`--overwrite`):
running the ones not yet run, or run again one that failed or was killed, needs no flag.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import SynthembedError
from .files import folder_lock
from .paths import repo_root

PROFILES = ("smoke", "cpu", "default", "paper")
# Parameters the study itself supplies to every notebook; each notebook's parameters cell must declare them.
INJECTED = ("run_dir", "profile")
# papermill records parameters inside the executed notebook, so nothing secret may ever be one.
# Parameter names that look like secrets: key (not passkey, the long-context task's), auth (not author), bearer, secret,
# password, credential anywhere, and token as a word of its own (hf_token, not max_tokens or tokenizer).
_SECRET = re.compile(r"(?<!pass)key|auth(?!ors?(_|$))|bearer|secret|passw|credential|(^|_)token($|_)", re.IGNORECASE)


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def params_dir() -> Path:
    return repo_root() / "params"


def list_notebooks(directory: Path | None = None) -> list[Path]:
    """The study's notebooks, `NN_name.ipynb`, in order."""
    directory = directory or notebooks_dir()
    return sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def load_profile(profile: str, directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """params/<profile>.yaml as {section: {name: value}}; `common` is the section every notebook gets."""
    path = (directory or params_dir()) / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (directory or params_dir()).glob("*.yaml"))
        raise SynthembedError(f"unknown profile {profile!r}: no {path} (profiles: {', '.join(known)})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict | type(None)) for v in data.values()):
        raise SynthembedError(f"{path}: expected sections of name: value pairs")
    return {section: dict(values or {}) for section, values in data.items()}


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The names declared in a notebook's `parameters` cell, as papermill reads them."""
    import papermill

    return dict(papermill.inspect_notebook(str(notebook)))


def notebook_parameters(notebook: Path, profile: dict[str, dict[str, Any]], injected: dict[str, Any]) -> dict[str, Any]:
    """The parameters for one notebook, checked against what it declares."""
    declared = declared_parameters(notebook)
    if not declared:
        raise SynthembedError(f"{notebook.name} has no cell tagged 'parameters'")
    missing = [name for name in INJECTED if name not in declared]
    if missing:
        raise SynthembedError(f"{notebook.name} must declare {', '.join(missing)} in its parameters cell")
    params = {**profile.get("common", {}), **profile.get(notebook.stem, {}), **injected}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise SynthembedError(
            f"{notebook.name} does not declare parameter(s) {', '.join(unknown)} "
            f"(it declares: {', '.join(sorted(declared))})"
        )
    secret = sorted(name for name in params if _SECRET.search(name))
    if secret:
        raise SynthembedError(
            f"parameter(s) {', '.join(secret)} look like secrets; pass keys through the environment (OPENAI_API_KEY), "
            "never as notebook parameters, which papermill writes into the executed notebook"
        )
    return params


def _select(notebooks: list[Path], only: str | None) -> list[Path]:
    if not only:
        return notebooks
    wanted = {item.strip().zfill(2) for item in str(only).split(",") if item.strip()}
    chosen = [nb for nb in notebooks if nb.name[:2] in wanted]
    absent = wanted - {nb.name[:2] for nb in chosen}
    if absent:
        raise SynthembedError(f"--only names notebook(s) that do not exist: {', '.join(sorted(absent))}")
    return chosen


def finished_at(executed: Path) -> str | None:
    """When papermill finished executing `executed` without an error (its recorded end time), or None: no such file, or
    a run that failed or was killed part way (no end time, or an exception recorded)."""
    try:
        papermill_meta = json.loads(executed.read_text(encoding="utf-8")).get("metadata", {}).get("papermill", {})
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(papermill_meta, dict) or papermill_meta.get("exception") or not papermill_meta.get("end_time"):
        return None
    return str(papermill_meta["end_time"])


def _refuse_finished(run_dir: Path, chosen: list[Path], all_notebooks: list[Path]) -> None:
    """A SynthembedError naming the chosen notebooks that already finished in `run_dir` (running one again would
    overwrite it), and how to go on; nothing where there are none."""
    finished = {nb.name[:2]: finished_at(run_dir / nb.name) for nb in chosen}
    finished = {number: when for number, when in finished.items() if when}
    if not finished:
        return
    rest = [nb.name[:2] for nb in all_notebooks if not finished_at(run_dir / nb.name)]
    go_on = (f"--only {','.join(rest)} runs those not finished yet" if rest else "every notebook has finished there")
    raise SynthembedError(
        f"--out {run_dir} already holds finished notebook(s) "
        + ", ".join(f"{number} (finished {when[:19].replace('T', ' ')})" for number, when in sorted(finished.items()))
        + f"; running them again would overwrite them and their results. {go_on}; --overwrite runs them again; or "
        "choose another --out"
    )


def run_study(
    profile: str = "smoke",
    only: str | None = None,
    out: str | Path | None = None,
    notebooks: Path | None = None,
    params: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Execute the notebooks for `profile`; returns the run directory (executed notebooks + results.json).

    Every notebook's parameters are checked before the first one runs, so a typo in a profile costs nothing. A
    notebook that already finished in `out` is refused unless `overwrite` (see the module's docstring).
    """
    settings = load_profile(profile, params)
    chosen = _select(list_notebooks(notebooks), only)
    if not chosen:
        raise SynthembedError(f"no notebooks found in {notebooks or notebooks_dir()}")
    # A non-empty section for a notebook that does not exist is a typo that would otherwise pass silently.
    existing = {nb.stem for nb in list_notebooks(notebooks)}
    unknown_sections = sorted(s for s, values in settings.items() if s != "common" and s not in existing and values)
    if unknown_sections:
        raise SynthembedError(f"params/{profile}.yaml has sections for notebooks that do not exist: {unknown_sections}")
    run_dir = Path(out) if out else repo_root() / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir.resolve()
    injected = {"run_dir": str(run_dir), "profile": profile}
    plan = [(nb, notebook_parameters(nb, settings, injected)) for nb in chosen]
    with folder_lock(run_dir, "synthembed study"):
        if not overwrite:
            _refuse_finished(run_dir, chosen, list_notebooks(notebooks))
        _execute(plan, run_dir, profile, progress)
        merge_results(run_dir)
    return run_dir


def _execute(plan: list[tuple[Path, dict[str, Any]]], run_dir: Path, profile: str, progress: bool) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    for nb, nb_params in plan:
        target = run_dir / nb.name
        started = time.perf_counter()
        print(f"[study] {nb.name} ({profile}) -> {target}", flush=True)
        try:
            papermill.execute_notebook(
                str(nb),
                str(target),
                parameters=nb_params,
                kernel_name="python3",
                cwd=str(repo_root()),
                progress_bar=progress,
                report_mode=False,
            )
        except PapermillExecutionError as err:
            raise SynthembedError(
                f"{nb.name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
                f"{err.ename}: {err.evalue}; the partly executed notebook is {target}"
            ) from None
        print(f"[study] {nb.name} done in {time.perf_counter() - started:.1f} s", flush=True)


def record_results(run_dir: str | Path, notebook: str, **numbers: Any) -> Path:
    """Record a notebook's key numbers (plain JSON values) to <run_dir>/results/<notebook>.json, merging with any earlier.

    >>> record_results("runs/interactive", "02_generate", accepted=120)  # doctest: +SKIP
    """
    path = Path(run_dir) / "results" / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(numbers)
    path.write_text(json.dumps(current, indent=2, sort_keys=True, default=_jsonable))
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def merge_results(run_dir: str | Path) -> dict[str, Any]:
    """Merge results/*.json into results.json: {notebook: {name: value}}."""
    run_dir = Path(run_dir)
    merged = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "results").glob("*.json"))}
    (run_dir / "results.json").write_text(json.dumps(merged, indent=2, sort_keys=True))
    return merged


def configure_study_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="smoke", help=f"parameter profile, params/<profile>.yaml ({', '.join(PROFILES)})")
    parser.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,02")
    parser.add_argument("--out", default=None, help="run directory (default runs/<timestamp>); on an existing one, runs "
                        "the notebooks not finished there yet")
    parser.add_argument("--overwrite", action="store_true",
                        help="run notebooks that already finished in --out again, overwriting them and their results")


def run_study_command(args: argparse.Namespace) -> int:
    run_dir = run_study(profile=args.profile, only=args.only, out=args.out, overwrite=args.overwrite)
    print(f"[study] executed notebooks and results.json in {run_dir}")
    return 0
