"""The `synthembed export` command: (re)write a training run's model card from the run, its generation statistics and
its evaluation results, and optionally push the export to the Hugging Face Hub.

    synthembed export runs/train/synthetic --eval runs/eval/ours_synthetic.json
    HF_TOKEN=... synthembed export runs/train/synthetic --push-to-hub my-org/synthembed-gemma-270m --license apache-2.0

Training writes merged/ (with a first card) at its end; this command adds what training cannot know: the generation
run behind each examples file (its stats.json: counts, the LLM) and `synthembed evaluate` results. Results are taken
from --eval, or found beside the run (RUN/eval/*.json and, in the study's layout, RUN/../../eval/*.json); only results
for this run's merged/ or adapter/ are used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from ..generation.rundir import read_stats
from .card import run_facts, write_model_card
from .hub import hub_token, push_to_hub
from .mteb_meta import default_name


def configure_export_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a training output directory (--out of synthembed train), holding merged/")
    parser.add_argument("--eval", dest="evaluations", action="append", default=None, metavar="FILE",
                        help="results of `synthembed evaluate` on this model for the card (repeatable; default: found "
                             "beside the run)")  # fmt: skip
    parser.add_argument("--name", help="the model's name in the card and in mteb (default: the --push-to-hub repo, "
                                       "else the merged folder's path)")  # fmt: skip
    parser.add_argument("--license", help="a Hub license id for the card's metadata, e.g. apache-2.0")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload merged/ to this Hub model repository "
                                                               "(needs a token: HF_TOKEN or `hf auth login`)")  # fmt: skip
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")


def run_export_command(args: argparse.Namespace) -> int:
    run = Path(args.run)
    merged = run / "merged"
    if not (merged / "modules.json").is_file():
        raise SynthembedError(f"{run}: no merged/ export (train without --no-export, or wait for training to finish)")
    token = hub_token(args.push_to_hub) if args.push_to_hub else None  # before anything is written
    card = export_card(run, evaluations=args.evaluations, name=args.name or args.push_to_hub,
                       location=args.push_to_hub, license=args.license)  # fmt: skip
    print(f"[export] model card: {card}")
    if args.push_to_hub:
        url = push_to_hub(merged, args.push_to_hub, private=args.private, token=token)
        print(f"[export] pushed {merged} to {url}")
    return 0


def export_card(run: str | Path, *, evaluations: list[str] | None = None, name: str | None = None,
                location: str | None = None, license: str | None = None) -> Path:  # fmt: skip
    """Write RUN/merged/README.md from the run, the generation stats of its examples files and the evaluation results
    (`evaluations` files, else those found beside the run); returns the card's path."""
    run = Path(run)
    results = [_read_results(Path(f), run) for f in evaluations] if evaluations else found_results(run)
    facts = run_facts(run, name=name or default_name(run / "merged"), location=location,
                      generation_stats=_generation_stats(run), evaluations=results, license=license)  # fmt: skip
    return write_model_card(run / "merged", facts)


def _generation_stats(run: Path) -> dict[str, dict[str, Any]]:
    """stats.json of the generation run holding each examples file the run trained on, by the file's path."""
    from .checkpoint import read_settings

    settings = read_settings(run) or {}
    stats = {}
    for entry in settings.get("data") or []:
        if str(entry).endswith(".jsonl"):
            found = read_stats(Path(entry).parent, missing_ok=True)
            if found:
                stats[str(entry)] = found
    return stats


def _models_of(run: Path) -> set[Path]:
    return {p.resolve() for p in (run / "merged", run / "adapter", run)}


def _read_results(path: Path, run: Path, strict: bool = True) -> dict[str, Any] | None:
    """One results file of `synthembed evaluate`, if it evaluated this run's model; with `strict` anything else is an
    error naming the file."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        if not strict:
            return None
        raise SynthembedError(f"--eval {path}: cannot read it ({err})") from None
    if not isinstance(results, dict) or "tasks" not in results or "model" not in results:
        if not strict:
            return None
        raise SynthembedError(f"--eval {path}: not a results file of `synthembed evaluate` (no model and tasks)")
    if Path(results["model"]).expanduser().resolve() not in _models_of(run):
        if not strict:
            return None
        raise SynthembedError(f"--eval {path}: these results are for {results['model']}, not {run / 'merged'}")
    return results


def found_results(run: Path) -> list[dict[str, Any]]:
    """Results files beside the run that evaluated its merged/ or adapter/ (RUN/eval/, the study's RUN/../../eval/)."""
    files = sorted({*(run / "eval").glob("*.json"), *(run.parent.parent / "eval").glob("*.json")})
    return [r for r in (_read_results(f, run, strict=False) for f in files) if r is not None]
