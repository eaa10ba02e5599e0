"""The `synthembed evaluate` and `synthembed passkey` commands: their arguments and what they run (cli.py's COMMANDS
names this module for both).

    synthembed evaluate --model runs/model --tasks SciFact,STSBenchmark --data-dir ../shared/data --out runs/eval.json
    synthembed passkey --model runs/model --lengths 256,4k,32k --rope-bases 1e4,1e5 --sliding-windows 32k --out runs/pk

`--help` answers without loading mteb or torch: they load only when a command runs (run.py, passkey_grid.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import SynthembedError
from ..files import check_writable
from ..paths import check_model_folder
from .cache import CACHE_ENV
from .run import INSTRUCTION_MODES

# --- synthembed evaluate ----------------------------------------------------------------------------------------------


def configure_evaluate_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="our export (merged or LoRA adapter), a hub id or a directory")
    parser.add_argument(
        "--tasks",
        required=True,
        action="append",
        help="mteb task or benchmark names, task directories, and NAME=DIR (a folder scored with mteb task NAME's "
        "protocol), comma separated (repeatable)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="a folder holding local copies (the shared data layout); named tasks found there are read from it",
    )
    parser.add_argument("--out", required=True, help="results JSON to write (atomically, once all tasks finished)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--instructions",
        choices=INSTRUCTION_MODES,
        default="auto",
        help="query-side task instructions: auto = for models trained with them (decoder-only, our exports)",
    )
    parser.add_argument(
        "--instruction",
        action="append",
        metavar="TASK=TEXT",
        help="override a task's instruction, by task name or task kind as mteb names it (e.g. STS=..., "
        "Retrieval=...); repeatable",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="local tasks only: a small subset (quick runs)")
    parser.add_argument("--languages", default=None, help="bitext tasks: languages to mine, comma separated")
    parser.add_argument("--pooling", default=None, help="override the model's pooling (last, mean, weighted-mean, cls)")
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--cache-dir", default=None, help=f"embedding cache (default ${CACHE_ENV} or ~/.cache/synthembed)"
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")


def _parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SynthembedError(f"--instruction takes TASK=TEXT (a task name or task kind), got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def run_evaluate_command(args: argparse.Namespace) -> int:
    from .run import evaluate_model, split_task_list

    results = evaluate_model(
        args.model,
        split_task_list(args.tasks),
        data_dir=args.data_dir,
        out=args.out,
        overwrite=args.overwrite,
        instructions=args.instructions,
        overrides=_parse_overrides(args.instruction),
        batch_size=args.batch_size,
        limit=args.limit,
        languages=[s.strip() for s in args.languages.split(",") if s.strip()] if args.languages else None,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        pooling=args.pooling,
        max_len=args.max_len,
        device=args.device,
    )
    width = max(len(e["name"]) for e in results["tasks"])
    for entry in results["tasks"]:
        print(
            f"{entry['name']:<{width}}  {entry['kind']:<15} {entry['main_score_name']:<16} {100 * entry['main_score']:6.2f}"
        )
    print(f"wrote {args.out} ({len(results['tasks'])} tasks, {results['seconds']:.1f} s)", file=sys.stderr)
    return 0


# --- synthembed passkey -----------------------------------------------------------------------------------------------

MODEL_OWN = ("model", "default")  # a list item that keeps the model's own setting


def _items(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split(",")]


def _int_list(text: str) -> list[int]:
    """'256,1k,32k' -> [256, 1024, 32768]."""
    out = []
    for item in _items(text):
        if not item:
            continue
        try:
            out.append(int(float(item[:-1]) * 1024) if item.endswith("k") else int(item))
        except ValueError:
            raise SynthembedError(f"not a token count: {item!r} (use e.g. 256,4096,32k)") from None
    if not out:
        raise SynthembedError("empty list of lengths")
    return out


def _rope_base(item: str) -> float | None:
    if item in MODEL_OWN:
        return None
    try:
        value = float(item)
    except ValueError:
        raise SynthembedError(f"not a RoPE base: {item!r} (use e.g. 1e4,1e5 or 'model')") from None
    if value <= 1:
        raise SynthembedError(f"a RoPE base must be greater than 1, got {item}")
    return value


def _base_list(text: str) -> list[float | None]:
    """'1e4,100000,model' -> [10000.0, 100000.0, None]."""
    return [_rope_base(item) for item in _items(text)]


def _window_list(text: str) -> list[int | None]:
    """'4096,32k,none,model' -> [4096, 32768, 0, None] (0 = no window, None = the model's own)."""
    return [None if item in MODEL_OWN else 0 if item in ("none", "off", "0") else _int_list(item)[0]
            for item in _items(text)]  # fmt: skip


def configure_passkey_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory or hub id (a Mistral-family decoder)")
    parser.add_argument("--lengths", required=True, help="document lengths in tokens, e.g. 256,1024,4k,32k")
    parser.add_argument("--rope-bases", default="model", help="RoPE bases, e.g. 1e4,1e5,1e6; 'model' keeps its own")
    parser.add_argument(
        "--sliding-windows", default="model", help="sliding windows, e.g. 4k,32k; 'none' = full attention"
    )
    parser.add_argument("--out", required=True, help="directory for grid.json, grid.csv and the plots")
    parser.add_argument("--queries", type=int, default=50, help="queries per length (default 50)")
    parser.add_argument("--candidates", type=int, default=100, help="candidate documents per length (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens-per-batch", type=int, default=32768, help="tokens per encoding batch")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 (default: bf16 on CUDA, float32 on CPU)")
    parser.add_argument(
        "--attn", default="sdpa", help="attention implementation: sdpa (default) or flash_attention_2 where installed"
    )


def run_passkey_command(args: argparse.Namespace) -> int:
    from .passkey_grid import grid_settings, run_passkey_grid

    out = Path(args.out)
    if (out / "grid.json").exists():
        raise SynthembedError(
            f"{out / 'grid.json'} exists: finished results are never overwritten; choose another --out"
        )
    settings = grid_settings(_base_list(args.rope_bases), _window_list(args.sliding_windows))
    check_model_folder(args.model, "--model")  # before building the data with its tokenizer
    check_writable(out, "--out")  # now, not after every length has run
    grid = run_passkey_grid(
        args.model,
        _int_list(args.lengths),
        settings,
        n_queries=args.queries,
        n_candidates=args.candidates,
        seed=args.seed,
        max_tokens_per_batch=args.max_tokens_per_batch,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
    )
    path = grid.save(out)
    from ..plots import plot_passkey_heatmap, plot_passkey_lines
    from ..reference import PAPER_FIGURE5

    plot_passkey_heatmap(grid.table(), out / "heatmap.png")
    plot_passkey_lines(grid.table(), PAPER_FIGURE5, out / "accuracy_by_length.png", chance=1 / args.candidates)
    print(grid.table().round(1).to_string())
    print(f"[passkey] wrote {path}, {out / 'grid.csv'}, heatmap.png and accuracy_by_length.png")
    return 0
