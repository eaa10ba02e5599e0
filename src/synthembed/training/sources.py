"""What each model of notebook 03 trains on: a study's data sources (the generated run, the copy of it notebook 02
curated, labeled BEIR folders) and a model's `data` setting resolved to `--data` entries and `--mix` ratios.

    from synthembed.training.sources import study_sources
    sources = study_sources("runs/cpu-study", ["beir/scifact"], data_root=shared_data_dir())
    data, mix = sources.for_model("synthetic (curated)", "curated")       # -> TrainArguments(data=data, mix=mix, ...)

A model's `data` is one of DATA_CHOICES: "synthetic" ({run_dir}/generation, the run as generated), "curated"
({run_dir}/curated, what notebook 02's curation kept), "labeled" (the labeled folders' train split), "both" (synthetic
and labeled, the paper's mix) or "curated+labeled". Synthetic and curated examples are sampled at the synthetic ratio.
A source that is absent is left out of "both" with a note (the notebook still trains on what there is); a model that
asks for the curated copy and finds none, or finds one made from another state of the run, is an error: comparing
curated with unfiltered training is only meaningful on a curation of the very run the unfiltered model read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SynthembedError

DATA_CHOICES: dict[str, tuple[str, ...]] = {
    "synthetic": ("synthetic",),
    "curated": ("curated",),
    "labeled": ("labeled",),
    "both": ("synthetic", "labeled"),
    "curated+labeled": ("curated", "labeled"),
}
DEFAULT_DATA = "both"
GENERATION, CURATED = "generation", "curated"  # notebook 02's folders inside a study's run directory
EXAMPLES = "examples.jsonl"
# curation/pipeline.py writes curation.json after examples.jsonl: with it the curated copy is complete. The name is
# curation/report.py's CURATION_FILE, repeated here because training may not import curation (docs/design.md).
CURATION_FILE = "curation.json"


@dataclass(frozen=True)
class Source:
    """One training source: its kind (synthetic, curated or labeled), the path `--data` gets and its sampling ratio."""

    kind: str
    path: Path
    ratio: float


@dataclass
class StudySources:
    """The sources found for one run directory; `notes` say where each was found or why it is absent."""

    run_dir: Path
    found: list[Source] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curated_problem: str | None = None  # why the curated copy cannot be used (None: it can, or nobody asked)

    def for_model(self, name: str, data: str = DEFAULT_DATA) -> tuple[list[str], list[float]]:
        """(--data entries, --mix ratios) for the model `name` whose data setting is `data`."""
        if data not in DATA_CHOICES:
            raise SynthembedError(f"model {name!r}: data must be one of {', '.join(DATA_CHOICES)}, not {data!r}")
        kinds = DATA_CHOICES[data]
        if "curated" in kinds and self.curated_problem:
            raise SynthembedError(f"model {name!r} trains on data {data!r}, but {self.curated_problem}")
        chosen = [s for s in self.found if s.kind in kinds]
        if not chosen:
            raise SynthembedError(
                f"model {name!r} trains on data {data!r}, and there is none: " + "; ".join(self.notes)
            )
        return [str(s.path) for s in chosen], [s.ratio for s in chosen]

    def used(self, choices: Iterable[str]) -> list[Source]:
        """The sources that any of the data settings `choices` trains on, each once, in the order found."""
        kinds = {kind for choice in choices for kind in DATA_CHOICES.get(choice, ())}
        return [s for s in self.found if s.kind in kinds]


def study_sources(
    run_dir: str | Path,
    labeled: Iterable[str] = (),
    data_root: str | Path | None = None,
    synthetic_ratio: float = 1.0,
    labeled_ratio: float = 1.0,
) -> StudySources:
    """The sources of the study in `run_dir`: {run_dir}/generation/examples.jsonl, {run_dir}/curated (complete, and
    made from the run's present examples) and each labeled folder (relative to `data_root`, the shared data, unless
    absolute) with a train split."""
    run_dir = Path(run_dir)
    sources = StudySources(run_dir)
    examples = run_dir / GENERATION / EXAMPLES
    if examples.is_file():
        sources.found.append(Source("synthetic", examples, synthetic_ratio))
        sources.notes.append(f"synthetic examples: {examples}")
    else:
        sources.notes.append(f"no synthetic examples at {examples} (run notebook 02 first)")
    sources.curated_problem = _curated_problem(run_dir, examples)
    if sources.curated_problem is None:
        curated = run_dir / CURATED / EXAMPLES
        sources.found.append(Source("curated", curated, synthetic_ratio))
        sources.notes.append(f"curated examples: {curated}")
    for folder in labeled:
        path = Path(data_root or ".") / folder
        if (path / "qrels" / "train.tsv").is_file():
            sources.found.append(Source("labeled", path, labeled_ratio))
            sources.notes.append(f"labeled data: {path} (train split)")
        else:
            sources.notes.append(f"labeled data {folder}: no {path / 'qrels' / 'train.tsv'} (set SYNTHEMBED_DATA)")
    return sources


def _curated_problem(run_dir: Path, examples: Path) -> str | None:
    """Why {run_dir}/curated cannot be trained on, or None where it can."""
    curated = run_dir / CURATED
    how = (
        f"run notebook 02 with curate = True (params: `02_generate: curate: true`), or "
        f"`synthembed curate --run {run_dir / GENERATION} --out {curated}`"
    )
    if not (curated / CURATION_FILE).is_file() or not (curated / EXAMPLES).is_file():
        return f"{curated} holds no curated copy of the run (no {CURATION_FILE} and {EXAMPLES}): {how}"
    try:
        stats = json.loads((curated / CURATION_FILE).read_text(encoding="utf-8"))
        made_from, kept = int(stats["input"]), int(stats["kept"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{curated / CURATION_FILE} cannot be read ({type(err).__name__}: {err}): {how}"
    if kept == 0:
        return f"the curation in {curated} kept none of its {made_from} examples (loosen its filters): {how}"
    if examples.is_file():
        with examples.open(encoding="utf-8", errors="replace") as lines:  # a paper-sized run: not all in memory
            now = sum(1 for line in lines if line.strip())
        if now != made_from:
            return (
                f"{curated} was curated from {made_from} examples and {examples} now holds {now} (generation went on "
                f"after the curation): {how}"
            )
    return None


def source_name(source: str | Path) -> str:
    """A training pair's source as a short name: an examples file by its folder (generation, curated), a labeled
    folder by its own name (scifact).

    >>> source_name("runs/x/curated/examples.jsonl"), source_name("../shared/data/beir/scifact")
    ('curated', 'scifact')
    """
    path = Path(source)
    return path.parent.name if path.suffix == ".jsonl" else path.name
