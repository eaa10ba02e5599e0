"""CPU training: our loop (synthembed.training.loop with the cached InfoNCE) against sentence-transformers' trainer with
CachedMultipleNegativesRankingLoss, and the peak memory of a 2048 batch with and without the cache.

    .venv/bin/python benchmarks/bench_train_cpu.py                          # both parts, default sizes
    .venv/bin/python benchmarks/bench_train_cpu.py --part speed --batch-size 32 --mini-batch-size 8 --steps 5
    .venv/bin/python benchmarks/bench_train_cpu.py --part loss --batch-size 16 --mini-batch-size 4 --steps 4
    .venv/bin/python benchmarks/bench_train_cpu.py --part memory --memory-batch 2048 --memory-mini-batch 32
    .venv/bin/python benchmarks/bench_train_cpu.py --part sorting --batch-size 32 --mini-batch-size 8 --max-len 256 --rounds 5

Speed: the same model (the packaged all-MiniLM-L6-v2, every weight trained, no LoRA, no gradient checkpointing), the same
pairs (BEIR SciFact train split from the shared data, plain queries, one BM25-mined hard negative each), the same batch,
mini-batch, max length, temperature (ST's scale = 1 / temperature = 50) and optimizer settings. Each step is timed from
the end of the previous one; the first step (warm-up) is dropped and the median of the rest gives examples per second.

Memory: each variant runs one optimizer step in its own subprocess (so peaks do not mix) and reports its peak RSS
(getrusage ru_maxrss) and the RSS right before the step. "plain" embeds the whole batch with one graph; "cached" is
CachedInfoNCE with the given mini-batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEMPERATURE = 0.02
LR = 2e-5


def scifact_args(out: str, batch_size: int, mini_batch_size: int, steps: int, max_len: int):
    from synthembed.paths import minilm_path, shared_data
    from synthembed.training.args import TrainArguments

    return TrainArguments(
        data=[str(shared_data("beir", "scifact"))],
        base_model=str(minilm_path()),
        out=out,
        batch_size=batch_size,
        mini_batch_size=mini_batch_size,
        max_steps=steps,
        max_len=max_len,
        lr=LR,
        warmup_steps=0,
        no_lora=True,
        gradient_checkpointing=False,
        hard_negatives="bm25",
        beir_instruction="none",
        temperature=TEMPERATURE,
        save_every=0,
        no_export=True,
        progress=False,
    )


def stamp() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the stable figure."""
    return time.perf_counter(), time.process_time()


def step_rates(stamps: list[tuple[float, float]], batch_size: int) -> list[tuple[float, float]]:
    """(examples per wall second, examples per CPU second) of steps 2 .. N-1 from the end stamps of steps 1 .. N:
    step 1 is warm-up, and step N of our loop also writes the final checkpoint."""
    pairs = list(zip(stamps, stamps[1:], strict=False))[:-1]
    return [(batch_size / (b[0] - a[0]), batch_size / (b[1] - a[1])) for a, b in pairs]


def run_ours(batch_size: int, mini_batch_size: int, steps: int, max_len: int) -> list[tuple[float, float]]:
    from synthembed.training.loop import train

    stamps: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp:
        args = scifact_args(str(Path(tmp) / "out"), batch_size, mini_batch_size, steps, max_len)

        def on_step(step: int, loss: float) -> None:
            stamps.append(stamp())

        train(args, on_step=on_step)
    return step_rates(stamps, batch_size)


def run_sentence_transformers(
    batch_size: int, mini_batch_size: int, steps: int, max_len: int
) -> list[tuple[float, float]]:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from synthembed.paths import minilm_path
    from synthembed.training.data import load_pairs

    with tempfile.TemporaryDirectory(prefix="bench-st-") as tmp:
        ours = scifact_args(tmp, batch_size, mini_batch_size, steps, max_len)
        pairs = load_pairs(  # the same mined pairs
            ours.data, seed=ours.seed, beir_instruction=ours.beir_instruction, hard_negatives=ours.hard_negatives,
            max_len=max_len, progress=False,
        )
        pairs = [p for p in pairs if p.negative is not None]
        data = Dataset.from_dict(
            {
                "anchor": [p.query for p in pairs],
                "positive": [p.positive for p in pairs],
                "negative": [p.negative for p in pairs],
            }
        )
        model = SentenceTransformer(str(minilm_path()), device="cpu")
        model.max_seq_length = max_len
        loss = CachedMultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE, mini_batch_size=mini_batch_size)
        stamps: list[tuple[float, float]] = []

        class StepTimer(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(stamp())

        targs = SentenceTransformerTrainingArguments(
            output_dir=str(Path(tmp) / "out"),
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=LR,
            warmup_steps=0,
            weight_decay=0.1,
            max_grad_norm=1.0,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            dataloader_drop_last=True,
            disable_tqdm=True,
            logging_steps=10**6,
            seed=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=targs, train_dataset=data, loss=loss, callbacks=[StepTimer()]
        )
        trainer.train()
    return step_rates(stamps, batch_size)


def speed(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    print(f"[speed] torch threads {torch.get_num_threads()}; batch {args.batch_size}, mini-batch {args.mini_batch_size}, "
          f"max_len {args.max_len}, {args.steps} steps per run, {args.rounds} round(s)")  # fmt: skip
    ours: list[tuple[float, float]] = []
    peer: list[tuple[float, float]] = []
    for r in range(args.rounds):  # alternate, so background load hits both alike
        ours += run_ours(args.batch_size, args.mini_batch_size, args.steps, args.max_len)
        peer += run_sentence_transformers(args.batch_size, args.mini_batch_size, args.steps, args.max_len)
        print(f"[speed] round {r + 1}: ours {ours}, sentence-transformers {peer} (examples per wall s, per CPU s)")
    result = {
        "ours_examples_per_s": statistics.median(x[0] for x in ours),
        "sentence_transformers_examples_per_s": statistics.median(x[0] for x in peer),
        "ours_examples_per_cpu_s": statistics.median(x[1] for x in ours),
        "sentence_transformers_examples_per_cpu_s": statistics.median(x[1] for x in peer),
        "ours_steps": len(ours),
        "peer_steps": len(peer),
    }
    result["ratio"] = result["ours_examples_per_s"] / result["sentence_transformers_examples_per_s"]
    result["ratio_cpu"] = result["ours_examples_per_cpu_s"] / result["sentence_transformers_examples_per_cpu_s"]
    print(
        "median examples per second (wall | per CPU second)\n"
        f"  ours (synthembed.training.loop, CachedInfoNCE):                     {result['ours_examples_per_s']:8.2f} | "
        f"{result['ours_examples_per_cpu_s']:8.2f}\n"
        f"  sentence-transformers (CachedMultipleNegativesRankingLoss): "
        f"{result['sentence_transformers_examples_per_s']:8.2f} | {result['sentence_transformers_examples_per_cpu_s']:8.2f}\n"
        f"  ratio ours / sentence-transformers:                         {result['ratio']:8.2f} | {result['ratio_cpu']:8.2f}"
    )
    return result


def loss_only(args: argparse.Namespace) -> dict:
    """The cached loss step alone (embed, loss, backward; no optimizer, no trainer) on one batch of SciFact pairs:
    CachedInfoNCE over our Embedder against CachedMultipleNegativesRankingLoss over a SentenceTransformer, alternating."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from synthembed.losses import CachedInfoNCE
    from synthembed.model import load_embedder
    from synthembed.paths import minilm_path

    torch.set_num_threads(args.threads)
    q, p, n = scifact_rows(args.batch_size)
    emb = load_embedder(str(minilm_path()), device="cpu", max_len=args.max_len)
    emb.model.train()
    ours = CachedInfoNCE(lambda texts: emb.embed(emb.tokenize(texts)), mini_batch_size=args.mini_batch_size)
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    st.max_seq_length = args.max_len
    st.train()
    st_loss = CachedMultipleNegativesRankingLoss(st, scale=1 / TEMPERATURE, mini_batch_size=args.mini_batch_size)

    def run_st() -> None:
        st_loss([st.preprocess(x) if hasattr(st, "preprocess") else st.tokenize(x) for x in (q, p, n)], None).backward()

    times: dict[str, list[tuple[float, float]]] = {"ours": [], "st": []}
    for _ in range(args.steps):
        for name, fn in (("ours", lambda: ours.step(q, p, n)), ("st", run_st)):
            a = stamp()
            fn()
            b = stamp()
            times[name].append((b[0] - a[0], b[1] - a[1]))
    result = {
        f"{name}_{kind}_s": statistics.median(t[i] for t in ts[1:])  # the first round is warm-up
        for name, ts in times.items()
        for i, kind in enumerate(("wall", "cpu"))
    }
    result["ratio_cpu"] = result["st_cpu_s"] / result["ours_cpu_s"]
    print(
        f"loss step alone, batch {args.batch_size}, mini-batch {args.mini_batch_size}, max_len {args.max_len}: "
        f"ours {result['ours_cpu_s']:.2f} CPU s, sentence-transformers {result['st_cpu_s']:.2f} CPU s; "
        f"speed ratio ours / ST {result['ratio_cpu']:.2f}"
    )
    return result


def scifact_rows(batch_size: int) -> tuple[list[str], list[str], list[str]]:
    """`batch_size` SciFact train (query, relevant document, other document) triples, repeated when there are fewer."""
    from synthembed.data import read_beir
    from synthembed.paths import shared_data

    corpus, queries, qrels = read_beir(shared_data("beir", "scifact"), split="train")
    doc_ids = list(corpus)
    rows = [
        (queries[qid], corpus[did]["title"] + " " + corpus[did]["text"]) for qid, rel in qrels.items() for did in rel
    ]
    rows = [rows[i % len(rows)] for i in range(batch_size)]
    negatives = [corpus[doc_ids[(7 * i + 3) % len(doc_ids)]]["text"] for i in range(batch_size)]
    return [r[0] for r in rows], [r[1] for r in rows], negatives


# --- length sorting -----------------------------------------------------------------------------------------------------


def sorting(args: argparse.Namespace) -> dict:
    """CachedInfoNCE with its mini-batches cut from length-sorted texts (the default) against batch order (what
    sentence-transformers' cached loss does), on documents of varied length as synthetic data has them: SciFact train
    documents cut to 10-250 words. Same model, texts and mini-batch; CPU seconds per step, alternating, median."""
    import random

    import torch

    from synthembed.losses import CachedInfoNCE
    from synthembed.model import load_embedder
    from synthembed.paths import minilm_path

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    queries, positives, negatives = scifact_rows(args.batch_size)
    cut = lambda text: " ".join(text.split()[: rng.randint(10, 250)])  # noqa: E731
    positives, negatives = [cut(t) for t in positives], [cut(t) for t in negatives]
    emb = load_embedder(str(minilm_path()), device="cpu", max_len=args.max_len)
    emb.model.train()
    embed_fn = lambda texts: emb.embed(emb.tokenize(texts))  # noqa: E731
    seconds: dict[str, list[float]] = {"batch order": [], "sorted by length": []}
    for _ in range(args.rounds):
        for name in seconds:
            loss = CachedInfoNCE(embed_fn, mini_batch_size=args.mini_batch_size, sort_by_length=name != "batch order")
            t0 = time.process_time()
            loss.step(queries, positives, negatives)
            seconds[name].append(time.process_time() - t0)
            emb.model.zero_grad(set_to_none=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"[sorting] batch {args.batch_size}, mini-batch {args.mini_batch_size}, max_len {args.max_len}, "
          f"{args.rounds} alternating rounds; CPU seconds per step: {seconds}")  # fmt: skip
    print(f"median CPU s per step: batch order {medians['batch order']:.2f}, sorted {medians['sorted by length']:.2f}; "
          f"speed-up {medians['batch order'] / medians['sorted by length']:.2f}x")  # fmt: skip
    return {"seconds": seconds, "median": medians}


# --- memory ------------------------------------------------------------------------------------------------------------


def memory_child(variant: str, batch_size: int, mini_batch_size: int, max_len: int, limit_gib: float | None) -> None:
    """One optimizer step at `batch_size`, printing JSON with the RSS before the step and the peak RSS (MiB).

    With `limit_gib`, the address space is capped there (RLIMIT_AS), so a step that cannot fit fails inside torch's
    allocator and is reported as not fitting, instead of bringing in the kernel's OOM killer on a shared machine.
    """
    import torch

    if limit_gib:
        cap = int(limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    from synthembed.losses import CachedInfoNCE
    from synthembed.model import load_embedder
    from synthembed.paths import minilm_path

    # The ~900 SciFact pairs repeated up to the batch (repeats are masked as duplicates; only the lengths matter here).
    q, p, n = scifact_rows(batch_size)

    emb = load_embedder(str(minilm_path()), device="cpu", max_len=max_len)
    emb.model.train()
    optimizer = torch.optim.AdamW(emb.model.parameters(), lr=LR)
    embed_fn = lambda texts: emb.embed(emb.tokenize(texts))  # noqa: E731
    before = rss_now_mib()
    t0 = time.perf_counter()
    try:
        # plain: the cached loss with one mini-batch, which embeds everything in one graph and backpropagates once
        mini = mini_batch_size if variant == "cached" else batch_size
        loss = CachedInfoNCE(embed_fn, mini_batch_size=mini).step(q, p, n)
        optimizer.step()
    except (MemoryError, RuntimeError) as error:
        if "memory" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"variant": variant, "rss_before_mib": before, "does_not_fit_gib": limit_gib,
                          "peak_rss_mib_before_failing": peak, "seconds": time.perf_counter() - t0}))  # fmt: skip
        return
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"variant": variant, "rss_before_mib": before, "peak_rss_mib": peak, "seconds": seconds,
                      "loss": loss}))  # fmt: skip


def rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(args: argparse.Namespace) -> dict:
    procs = {}
    for variant in ("cached", "plain"):  # separate processes, so each peak is its own; run side by side
        cmd = [sys.executable, __file__, "--memory-child", variant, "--memory-batch", str(args.memory_batch),
               "--memory-mini-batch", str(args.memory_mini_batch), "--max-len", str(args.memory_max_len),
               "--threads", str(args.threads)]  # fmt: skip
        if args.memory_limit_gib:
            cmd += ["--memory-limit-gib", str(args.memory_limit_gib)]
        print("[memory]", " ".join(cmd[1:]), flush=True)
        procs[variant] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for variant, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            print(stderr[-3000:])
            results[variant] = {"error": f"exit {proc.returncode} (killed for memory?)"}
            continue
        results[variant] = r = json.loads(stdout.strip().splitlines()[-1])
        if "does_not_fit_gib" in r:
            print(f"[memory] {variant}: does not fit in {r['does_not_fit_gib']} GiB of address space (failed after "
                  f"{r['seconds']:.0f} s at a peak RSS of {r['peak_rss_mib_before_failing']:.0f} MiB)")  # fmt: skip
            continue
        print(f"[memory] {variant}: peak RSS {r['peak_rss_mib']:.0f} MiB (model + optimizer before the step "
              f"{r['rss_before_mib']:.0f} MiB), {r['seconds']:.0f} s, loss {r['loss']:.4f}")  # fmt: skip
    if all("peak_rss_mib" in r for r in results.values()):
        cached, plain = results["cached"], results["plain"]
        grow = lambda r: r["peak_rss_mib"] - r["rss_before_mib"]  # noqa: E731
        print(f"peak RSS at batch {args.memory_batch}, max_len {args.memory_max_len}: cached (mini-batch "
              f"{args.memory_mini_batch}) {cached['peak_rss_mib']:.0f} MiB, plain {plain['peak_rss_mib']:.0f} MiB "
              f"(plain / cached {plain['peak_rss_mib'] / cached['peak_rss_mib']:.1f}x); growth during the step "
              f"{grow(cached):.0f} vs {grow(plain):.0f} MiB ({grow(plain) / max(grow(cached), 1):.1f}x)")  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "loss", "memory", "sorting", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first and last are dropped)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of ours and sentence-transformers")
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--memory-batch", type=int, default=2048)
    parser.add_argument("--memory-mini-batch", type=int, default=32)
    parser.add_argument("--memory-max-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable CPU seconds)")
    parser.add_argument("--memory-limit-gib", type=float, help="cap each memory child's address space (RLIMIT_AS)")
    parser.add_argument("--memory-child", choices=["cached", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.memory_child:
        import torch

        torch.set_num_threads(args.threads)
        memory_child(args.memory_child, args.memory_batch, args.memory_mini_batch, args.max_len, args.memory_limit_gib)
        return
    results = {}
    if args.part in ("speed", "both"):
        results["speed"] = speed(args)
    if args.part == "loss":
        results["loss"] = loss_only(args)
    if args.part == "sorting":
        results["sorting"] = sorting(args)
    if args.part in ("memory", "both"):
        results["memory"] = memory(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
