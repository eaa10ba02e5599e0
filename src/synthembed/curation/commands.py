"""`synthembed curate`: a generation run through the curation filters into a curated copy (cli.py's COMMANDS convention).

    synthembed curate --run runs/gen --out runs/curated
    synthembed curate --run runs/gen --out runs/curated --embedder all-MiniLM-L6-v2 --margin 0.05 \\
        --decontaminate ../shared/data --mine fill --judge-llm gpt-4o-mini --plots runs/curated/plots
    synthembed train --data runs/curated ...
"""

from __future__ import annotations

import argparse

from ..errors import SynthembedError
from .pipeline import MINE_MODES, CurateConfig, curate
from .report import SCORES_FILE, format_curation, read_jsonl

_DEFAULTS = CurateConfig()


def _threshold(text: str) -> float | None:
    """A number, or 0 / off / none for a pass switched off."""
    if text.strip().lower() in ("0", "off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def _margin(text: str) -> float | None:
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def _window(text: str) -> tuple[int, int]:
    try:
        skip, depth = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SKIP:DEPTH such as 0:10, got {text!r}") from None
    return skip, depth


def configure_curate_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Curate a generation run: drop near-duplicates (MinHash, optionally embeddings), examples that overlap an "
        "evaluation set, and false negatives an embedder sees; optionally mine safer negatives from the run itself and "
        "let an LLM judge grade, drop or relabel. Writes OUT/examples.jsonl (what `synthembed train --data OUT` reads), "
        "dropped.jsonl, scores.jsonl and curation.json (counts per filter and reason)."
    )
    parser.add_argument("--run", required=True, help="a generation run directory, or an examples.jsonl file")
    parser.add_argument("--out", required=True, help="the curated folder (new, or an earlier curation: rewritten)")
    parser.add_argument(
        "--near-dup-threshold",
        type=_threshold,
        default=_DEFAULTS.near_dup_threshold,
        help="MinHash-LSH: Jaccard similarity of word-shingle sets (query + positive) at which a later "
        "example of the same task group is a near-duplicate (default 0.8; off: no MinHash pass)",
    )
    parser.add_argument(
        "--shingle-size", type=int, default=_DEFAULTS.shingle_size, help="words per shingle (default 3)"
    )
    parser.add_argument("--num-perm", type=int, default=_DEFAULTS.num_perm, help="MinHash permutations (default 128)")
    parser.add_argument(
        "--embedder",
        default=None,
        help="an embedding model (hub id, local path, all-MiniLM-L6-v2 offline) for the false-negative "
        "filter, embedding dedup and mining",
    )
    parser.add_argument(
        "--margin",
        type=_margin,
        default=_DEFAULTS.margin,
        help="with --embedder: drop an example whose negative's cosine exceeds its positive's by more "
        "than this (default 0; off: no false-negative filter)",
    )
    parser.add_argument(
        "--embedding-dup-threshold",
        type=_threshold,
        default=None,
        help="with --embedder: cosine of (query + positive) embeddings at which a later example is a "
        "near-duplicate, e.g. 0.95 (default off)",
    )
    parser.add_argument(
        "--instructions",
        choices=("auto", "yes", "no"),
        default="auto",
        help="embed queries with their task instruction (auto: as one of our models was trained; no for other models)",
    )
    parser.add_argument(
        "--decontaminate",
        action="extend",
        nargs="+",
        default=[],
        metavar="DIR",
        help="evaluation task folders, or folders holding them (e.g. ../shared/data): examples sharing "
        "an n-gram with them are dropped",
    )
    parser.add_argument("--ngram", type=int, default=_DEFAULTS.ngram, help="words per overlapping n-gram (default 13)")
    parser.add_argument(
        "--ngram-min-words",
        type=int,
        default=_DEFAULTS.ngram_min_words,
        help="evaluation texts shorter than this are ignored; those shorter than --ngram match whole (default 8)",
    )
    parser.add_argument(
        "--mine",
        choices=MINE_MODES,
        default="none",
        help="with --embedder: mine negatives from the run's own documents for examples without one "
        "(fill) or for every example (replace)",
    )
    parser.add_argument(
        "--mine-ratio",
        type=_threshold,
        default=_DEFAULTS.mine_ratio,
        help="a mined negative scores at most this fraction of its positive's cosine (NV-Retriever's "
        "TopK-PercPos; default 0.95; off: no ceiling)",
    )
    parser.add_argument(
        "--mine-window",
        type=_window,
        default=(_DEFAULTS.mine_skip, _DEFAULTS.mine_depth),
        metavar="SKIP:DEPTH",
        help="draw mined negatives from these ranks (default 0:10)",
    )
    parser.add_argument(
        "--judge-llm",
        default=None,
        metavar="MODEL",
        help="an LLM that grades every remaining example (drops or relabels); default: no judge pass",
    )
    parser.add_argument(
        "--judge-backend",
        choices=("openai", "transformers", "replay"),
        default="openai",
        help="where the judge's requests go (openai: any OpenAI-compatible server; OPENAI_API_KEY)",
    )
    parser.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint (default OPENAI_BASE_URL)")
    parser.add_argument(
        "--judge-cache", default=None, help="the judge's response cache (default OUT/judge_cache.sqlite)"
    )
    parser.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight at once")
    parser.add_argument(
        "--judge-min-relevance",
        type=int,
        default=_DEFAULTS.judge_min_relevance,
        help="the grade (0-3) a positive needs to stay (default 2)",
    )
    parser.add_argument("--judge-max-cost", type=float, default=None, help="stop sending judge requests at this USD")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a judge request is retried")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="texts per embedding batch")
    parser.add_argument("--max-len", type=int, default=_DEFAULTS.max_len, help="tokens per text for the embedder")
    parser.add_argument("--plots", default=None, help="write the score-margin plot (PNG) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> CurateConfig:
    skip, depth = args.mine_window
    return CurateConfig(
        near_dup_threshold=args.near_dup_threshold,
        shingle_size=args.shingle_size,
        num_perm=args.num_perm,
        embedder=args.embedder,
        embedding_dup_threshold=args.embedding_dup_threshold,
        margin=args.margin if args.embedder else None,
        instructions={"auto": None, "yes": True, "no": False}[args.instructions],
        decontaminate=tuple(args.decontaminate),
        ngram=args.ngram,
        ngram_min_words=args.ngram_min_words,
        mine=args.mine,
        mine_ratio=args.mine_ratio,
        mine_skip=skip,
        mine_depth=depth,
        judge_model=args.judge_llm,
        judge_min_relevance=args.judge_min_relevance,
        judge_max_cost=args.judge_max_cost,
        seed=args.seed,
        batch_size=args.batch_size,
        max_len=args.max_len,
    )


def run_curate_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    config.check()
    backend = None
    if args.judge_llm:
        from ..generation.backends import make_backend

        if args.judge_backend == "replay" and not args.judge_cache:
            raise SynthembedError("--judge-backend replay needs --judge-cache FILE (an earlier judge's cache)")
        backend = make_backend(
            args.judge_backend,
            model=args.judge_llm,
            base_url=args.judge_base_url,
            concurrency=args.judge_concurrency,
            timeout=args.timeout,
        )
    stats = curate(
        args.run, args.out, config, judge_backend=backend, judge_cache=args.judge_cache, progress=not args.quiet
    )
    print(format_curation(stats))
    print(f"wrote {args.out} (examples.jsonl: train on it with `synthembed train --data {args.out}`)")
    if args.plots and stats["filters"]["false_negative"].get("ran"):
        from pathlib import Path

        from .. import plots

        path = Path(args.plots) / "score_margins.png"
        plots.plot_score_margins(read_jsonl(args.out, SCORES_FILE), config.margin, path=path)
        print(f"wrote {path}")
    return 0
