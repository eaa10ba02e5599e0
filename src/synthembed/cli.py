"""The `synthembed` command.

    synthembed generate --out runs/gen --backend openai --model gpt-4o-mini --tasks-per-type 2
    synthembed stats runs/gen --plots runs/gen/plots
    synthembed batches runs/gen --cancel
    synthembed curate --run runs/gen --out runs/curated --embedder all-MiniLM-L6-v2 --decontaminate ../shared/data
    synthembed train --data runs/gen/examples.jsonl --base-model mistralai/Mistral-7B-v0.1 --out runs/model
    synthembed export runs/model --eval runs/eval.json --push-to-hub my-org/my-model
    synthembed evaluate --model runs/model --tasks STSBenchmark --out runs/eval.json
    synthembed passkey --model runs/model --lengths 256,512 --rope-bases 10000,100000 --out runs/passkey
    synthembed study --profile smoke

Each subcommand lives beside the stage it drives: the module named in COMMANDS defines
`configure_<name>_parser(parser)` and `run_<name>_command(args) -> int | None`. Only that module is imported, so
`synthembed stats` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SynthembedError, storage_error

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("synthembed.generation.commands", "brainstorm tasks and generate synthetic examples with an LLM (resumable)"),
    "stats": ("synthembed.generation.commands", "summarise a generation run: counts by group, language, rejection reason; plots"),
    "batches": ("synthembed.generation.batch_commands", "a Batch API run's batches: status at the provider, cancelling them"),
    "curate": ("synthembed.curation.commands", "filter a generation run: near-duplicates, evaluation overlap, false negatives, an LLM judge"),
    "train": ("synthembed.training.commands", "contrastive (InfoNCE) LoRA training of an embedding model"),
    "export": ("synthembed.training.export_commands", "write a trained model's card; push it to the Hub"),
    "evaluate": ("synthembed.evaluation.commands", "evaluate a model on MTEB tasks or local task directories"),
    "passkey": ("synthembed.evaluation.commands", "personalized passkey retrieval over lengths and RoPE bases"),
    "study": ("synthembed.study", "run the numbered notebooks headless with papermill for a profile"),
}


def _command_functions(name: str):
    module = importlib.import_module(COMMANDS[name][0])
    key = name.replace("-", "_")
    return getattr(module, f"configure_{key}_parser"), getattr(module, f"run_{key}_command")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with `command`, that subcommand's arguments are filled in (its module imported)."""
    parser = argparse.ArgumentParser(
        prog="synthembed",
        description="Synthetic data, contrastive training and MTEB evaluation of LLM text embeddings (E5-mistral, open).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"synthembed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            configure, _ = _command_functions(name)
            configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _, run = _command_functions(args.command)
    try:
        code = run(args)
    except SynthembedError as err:
        print(f"synthembed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthembed {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # A full disk or a read-only folder met by a write that no code of ours wraps (a library's, an appended line):
        # a message naming the file where the error names one, else the command's --out; any other error is a bug and
        # keeps its traceback.
        named = getattr(err, "filename", None)
        out = getattr(args, "out", None)
        converted = storage_error(err, named or out, "" if named or not out else "--out", write=False)
        if converted is None:
            raise
        print(f"synthembed {args.command}: error: {converted}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
