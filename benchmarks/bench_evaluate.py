"""`synthembed evaluate` against plain `mteb.evaluate` on a SentenceTransformer: SciFact, all-MiniLM-L6-v2, CPU.

    .venv/bin/python benchmarks/bench_evaluate.py                  # whole SciFact (5,183 docs, 300 queries)
    .venv/bin/python benchmarks/bench_evaluate.py --limit 50       # a quick look on a subset

Both sides read the same local copy of SciFact through the same mteb task (our loader) and score with mteb's evaluator;
both load their model inside the timed region. The peer is mteb's documented way to run a sentence-transformers model,
with mteb's result cache off (`cache=None`): with it on, a re-run would return a stored score without looking at the
model at all, which is exactly the staleness our embedding cache avoids by keying on the model's content.

"first run": our embedding cache empty. "re-run": the same model again, its embeddings on disk. Prints each side's median
wall time, the two scores (they must agree) and the ratios plain / ours (targets: >= 1.0 first, >= 10 re-run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def plain_mteb(model_path: str, task_dir: Path, limit: int | None, batch_size: int) -> tuple[float, float]:
    import mteb
    from sentence_transformers import SentenceTransformer

    from synthembed.evaluation.tasks import local_task

    start = time.perf_counter()
    model = SentenceTransformer(model_path, device="cpu")
    result = mteb.evaluate(
        model,
        local_task(task_dir, limit=limit),
        cache=None,
        encode_kwargs={"batch_size": batch_size},
        show_progress_bar=False,
        co2_tracker=False,
    )
    return time.perf_counter() - start, result.task_results[0].get_score()


def ours(model_path: str, task_dir: Path, limit: int | None, batch_size: int, cache_dir: Path) -> tuple[float, float]:
    from synthembed.evaluation.run import evaluate_model

    start = time.perf_counter()
    results = evaluate_model(
        model_path,
        [str(task_dir)],
        limit=limit,
        batch_size=batch_size,
        cache_dir=cache_dir,
        device="cpu",
        show_progress=False,
    )
    return time.perf_counter() - start, results["tasks"][0]["main_score"]


def main() -> None:
    from synthembed.paths import minilm_path, shared_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="SciFact subset: first N queries (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (medians printed)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    model_path = str(minilm_path())
    task_dir = shared_data("beir", "scifact")
    import mteb  # noqa: F401 -- imported once, outside the timed regions, for both sides

    plain_times, first_times, rerun_times, scores = [], [], [], {}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
            seconds, scores["plain mteb"] = plain_mteb(model_path, task_dir, args.limit, args.batch_size)
            plain_times.append(seconds)
            seconds, scores["synthembed first"] = ours(model_path, task_dir, args.limit, args.batch_size, Path(tmp))
            first_times.append(seconds)
            seconds, scores["synthembed re-run"] = ours(model_path, task_dir, args.limit, args.batch_size, Path(tmp))
            rerun_times.append(seconds)
        print(
            f"repeat {repeat + 1}: plain mteb {plain_times[-1]:.1f} s, synthembed first {first_times[-1]:.1f} s, "
            f"re-run {rerun_times[-1]:.1f} s",
            flush=True,
        )
    plain, first, rerun = (statistics.median(t) for t in (plain_times, first_times, rerun_times))
    subset = f"first {args.limit} queries" if args.limit else "all 300 test queries, 5,183 documents"
    print(f"\nSciFact ({subset}), all-MiniLM-L6-v2, CPU threads {os.cpu_count()}, {args.repeats} repeats, medians:")
    for name, score in scores.items():
        print(f"  nDCG@10 {name:<18} {100 * score:.2f}")
    print(f"  plain mteb.evaluate (SentenceTransformer, cache=None)  {plain:8.2f} s")
    print(f"  synthembed evaluate, first run (empty cache)          {first:8.2f} s   ratio {plain / first:6.2f}")
    print(f"  synthembed evaluate, re-run (embeddings on disk)      {rerun:8.2f} s   ratio {plain / rerun:6.2f}")


if __name__ == "__main__":
    main()
