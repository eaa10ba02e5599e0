"""Which models notebook 04 compares, and how each one is embedded: baselines as published, our trained models as
trained, and a base decoder without training embedded exactly as the models trained from it are.

    from synthembed.evaluation.specs import evaluate_lineup, lineup
    models = lineup(["all-MiniLM-L6-v2", {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "as_trained": True}],
                    find_trained_models("runs/x/train"))
    runs = evaluate_lineup(models, ["STSBenchmark"], "runs/x/eval", data_dir="../shared/data", limit=40)

A baseline entry is a hub id or a directory, embedded with its own settings (a sentence-transformers model as
published; a decoder with EOS appended, last-token pooling, max_len 512), or a mapping with the settings named:

    {"model": ..., "label": ..., "pooling": "last", "max_len": 128, "instructions": "on", "as_trained": true}

`as_trained: true` makes an untrained decoder a fair baseline for ours: pooling, max_len and the instruction mode
come from the synthembed_config.json of the trained models whose base it is, so the weights are the only difference
left between the rows. A setting given beside it that disagrees with theirs is an error (the comparison would not be
fair), and so are trained models from one base that embed differently. EOS needs no setting: load_embedder appends it
to a decoder's inputs and our exports' tokenizers append it themselves, the same token sequence either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SynthembedError
from ..model_config import read_model_config
from ..paths import resolve_model_path
from ..pooling import POOLING_MODES
from .run import INSTRUCTION_MODES, evaluate_model, find_trained_models

# the settings `as_trained` copies from a trained model, and the evaluate_model arguments they become
EMBEDDING_SETTINGS = ("pooling", "max_len", "instructions")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate and how: its label in the tables, and settings (None: the model's own, or for
    `instructions` the notebook's mode)."""

    model: str  # hub id or directory
    label: str
    pooling: str | None = None
    max_len: int | None = None
    instructions: str | None = None  # "auto", "on" or "off"
    as_trained: bool = False  # embedded as the models trained from it (their synthembed_config.json)
    trained: bool = False  # one of ours, exported by notebook 03

    def evaluate_kwargs(self, instructions: str = "auto") -> dict[str, Any]:
        """evaluate_model's pooling, max_len and instructions for this model (`instructions` where it names none)."""
        return {"pooling": self.pooling, "max_len": self.max_len, "instructions": self.instructions or instructions}

    def describe(self) -> str:
        """One line: what is evaluated, with which settings."""
        settings = [f"{key} {getattr(self, key)}" for key in EMBEDDING_SETTINGS if getattr(self, key) is not None]
        how = ", ".join(settings) or ("as trained (its synthembed_config.json)" if self.trained else "its own settings")
        if self.as_trained:
            how += " (as the models trained from it)"
        return f"{self.label}: {self.model}, {how}"


def short_name(model: str) -> str:
    """A model's label: a directory's name, a hub id's last part.

    >>> short_name("sentence-transformers/all-mpnet-base-v2")
    'all-mpnet-base-v2'
    """
    return Path(model).name if Path(model).expanduser().exists() else str(model).rstrip("/").split("/")[-1]


def model_spec(entry: str | Mapping[str, Any]) -> ModelSpec:
    """A baseline entry (a name, or a mapping as the module docstring shows) as a ModelSpec; a bad one raises."""
    if isinstance(entry, str):
        return ModelSpec(model=entry, label=short_name(entry))
    if not isinstance(entry, Mapping) or not entry.get("model"):
        raise SynthembedError(f"baseline {entry!r}: give a model name, or a mapping with 'model'")
    allowed = {"model", "label", *EMBEDDING_SETTINGS, "as_trained"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise SynthembedError(f"baseline {entry['model']}: unknown setting {', '.join(unknown)} (known: {known})")
    if entry.get("pooling") is not None and entry["pooling"] not in POOLING_MODES:
        raise SynthembedError(f"baseline {entry['model']}: pooling must be one of {', '.join(POOLING_MODES)}")
    if entry.get("instructions") is not None and entry["instructions"] not in INSTRUCTION_MODES:
        raise SynthembedError(f"baseline {entry['model']}: instructions must be one of {', '.join(INSTRUCTION_MODES)}")
    model, as_trained = str(entry["model"]), bool(entry.get("as_trained", False))
    label = entry.get("label") or short_name(model) + (" (no training)" if as_trained else "")
    max_len = None if entry.get("max_len") is None else int(entry["max_len"])
    return ModelSpec(model=model, label=str(label), pooling=entry.get("pooling"), max_len=max_len,
                     instructions=entry.get("instructions"), as_trained=as_trained)  # fmt: skip


def _same_model(a: str | None, b: str) -> bool:
    """Whether two names or paths are one model (a hub id and its local copy are)."""
    if not a:
        return False
    return Path(resolve_model_path(str(a))).expanduser().resolve() == Path(resolve_model_path(b)).expanduser().resolve()


def trained_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The embedding settings of one of our exports (its synthembed_config.json), as a ModelSpec names them."""
    return {
        "pooling": config["pooling"],
        "max_len": int(config["max_len"]),
        "instructions": "on" if config.get("instructions", True) else "off",
    }


def embed_as_trained(spec: ModelSpec, trained: Mapping[str, str | Path]) -> ModelSpec:
    """`spec` with the embedding settings of the trained models (label -> export folder) whose base model it is.

    Returns `spec` unchanged where none of them was trained from it (the caller says so); raises where they disagree
    among themselves or with a setting `spec` names.
    """
    found: dict[str, dict[str, Any]] = {}
    for label, path in trained.items():
        config = read_model_config(path)
        if config is not None and _same_model(config.get("base_model"), spec.model):
            found[label] = trained_settings(config)
    if not found:
        return spec
    distinct = {tuple(sorted(s.items())) for s in found.values()}
    if len(distinct) > 1:
        raise SynthembedError(
            f"baseline {spec.label}: the models trained from {spec.model} embed differently ({found}); "
            "one untrained baseline cannot stand for all of them"
        )
    settings = next(iter(found.values()))
    for key, value in settings.items():
        given = getattr(spec, key)
        if given is not None and given != value:
            raise SynthembedError(
                f"baseline {spec.label}: {key} {given!r}, but {', '.join(found)} embed with {key} {value!r}; "
                "the comparison would not be fair (leave the setting out to take theirs)"
            )
    return dataclasses.replace(spec, **settings)


def lineup(
    baseline_models: Sequence[str | Mapping[str, Any]], trained: Mapping[str, str | Path]
) -> dict[str, ModelSpec]:
    """Every model notebook 04 evaluates, by label, in the order of its table: untrained decoders (`as_trained`), then
    ours ("ours: <run>"), then the other baselines. Labels must be distinct."""
    specs = [model_spec(entry) for entry in baseline_models]
    untrained = [embed_as_trained(s, trained) for s in specs if s.as_trained]
    ours = [ModelSpec(model=str(path), label=f"ours: {label}", trained=True) for label, path in trained.items()]
    ordered = untrained + ours + [s for s in specs if not s.as_trained]
    models: dict[str, ModelSpec] = {}
    for spec in ordered:
        if spec.label in models:
            raise SynthembedError(f"two models are labelled {spec.label!r}; give one a 'label'")
        models[spec.label] = spec
    return models


def trained_labels(models: Mapping[str, ModelSpec]) -> dict[str, str]:
    """{training run: its label in the line-up} for our models (what tables.evaluation_summary takes).

    >>> trained_labels({"ours: synthetic": ModelSpec("runs/x/train/synthetic/merged", "ours: synthetic", trained=True)})
    {'synthetic': 'ours: synthetic'}
    """
    return {label.removeprefix("ours: "): label for label, spec in models.items() if spec.trained}


def result_file_name(label: str) -> str:
    """A model's results file in the evaluation folder: its label without characters a file name should not hold.

    >>> result_file_name("ours: synthetic")
    'ours_synthetic.json'
    """
    return label.replace(":", "").replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "") + ".json"


def evaluate_lineup(
    models: Mapping[str, ModelSpec], tasks: Sequence[str], out_dir: str | Path, instructions: str = "auto", **kwargs
) -> dict[str, dict[str, Any]]:
    """evaluate_model for each model with its settings, results written to `out_dir`/<label>.json (replacing an older
    one); `kwargs` go to every call (data_dir, limit, batch_size, ...). -> results by label, in `models`' order."""
    runs = {}
    for label, spec in models.items():
        out = Path(out_dir) / result_file_name(label)
        settings = spec.evaluate_kwargs(instructions)
        runs[label] = run = evaluate_model(spec.model, tasks, out=out, overwrite=True, **settings, **kwargs)
        cache = run["embedding_cache"] or {"hits": 0, "misses": 0}
        print(f"{label}: {len(run['tasks'])} tasks in {run['seconds']:.0f} s, instructions "
              f"{'on' if run['instructions'] else 'off'}, pooling {run['pooling']}, max_len {run['max_len']}, "
              f"embedding cache hits {cache['hits']} / misses {cache['misses']}")  # fmt: skip
    return runs


def pick_trained_model(train_dir: str | Path, run: str | None = None) -> Path | None:
    """The exported model of one training run under `train_dir` (notebook 03's <train_dir>/<run>/merged), for the
    notebooks that take one trained model (05, 06): `run` by name, or the first one found where `run` is None; None
    where nothing was exported. A named run that was not exported is an error that lists the runs that were.

    >>> pick_trained_model("runs/cpu-study/train", "synthetic")  # doctest: +SKIP
    PosixPath('runs/cpu-study/train/synthetic/merged')
    """
    exported = find_trained_models(train_dir)
    if run is None:
        return next(iter(exported.values()), None)
    if run not in exported:
        raise SynthembedError(f"trained_run {run!r} is not among the models exported in {train_dir}: "
                              f"{sorted(exported) or 'none (run notebook 03 first)'}")  # fmt: skip
    return exported[run]
