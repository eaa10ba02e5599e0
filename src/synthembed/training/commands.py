"""The `synthembed train` command: one option per TrainArguments field, with its help text, and the run.

    synthembed train --data runs/gen/examples.jsonl,../shared/data/beir/scifact --base-model mistralai/Mistral-7B-v0.1 \\
        --out runs/model --batch-size 2048 --mini-batch-size 64
    accelerate launch --config_file configs/ddp.yaml -m synthembed.cli train ...      # many GPUs
    torchrun --standalone --nproc_per_node 2 -m synthembed.cli train ...              # many CPU processes (gloo)

Nothing here imports torch: `synthembed train --help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses

from .args import TrainArguments
from .loop import train

_LIST_FIELDS = {"data": str, "mix": float, "no_in_batch_negatives_for": str}


def _csv_list(kind):
    def parse(text: str):
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def configure_train_parser(parser: argparse.ArgumentParser) -> None:
    """Add every TrainArguments field as an option (`--batch-size`), with its help text. A switch that is off by
    default is a flag (`--resume`); one that is on has both spellings (`--gradient-checkpointing`,
    `--no-gradient-checkpointing`); `progress` is switched off by `--quiet`."""
    for f in dataclasses.fields(TrainArguments):
        if f.name == "progress":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.type == "bool" and f.default:
            on = f"{help_text} (default: on)"
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=True, help=on)
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name in _LIST_FIELDS:
            parser.add_argument(flag, type=_csv_list(_LIST_FIELDS[f.name]), required=required, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            parser.add_argument(
                flag, type=kind, default=None if required else f.default, required=required,
                help=f"{help_text} (default: {f.default})" if not required else help_text,
            )
    parser.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")


def train_arguments(args: argparse.Namespace) -> TrainArguments:
    """The parsed options as TrainArguments (one per field)."""
    return TrainArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainArguments)})


def run_train_command(args: argparse.Namespace) -> int:
    out = train(train_arguments(args))
    print(f"[train] finished: {out}")
    return 0
