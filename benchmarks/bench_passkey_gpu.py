"""Long-document encoding speed and memory: a Mistral-7B-shaped model (random weights from MistralConfig, bf16, CUDA)
encoding 4k, 8k, 16k and 32k-token passkey documents, SDPA attention (ours) beside eager attention (transformers'
reference implementation) on the same weights.

    .venv/bin/python benchmarks/bench_passkey_gpu.py                         # on a CUDA machine (H200: all four lengths)
    .venv/bin/python benchmarks/bench_passkey_gpu.py --lengths 4k,32k --docs 4
    .venv/bin/python benchmarks/bench_passkey_gpu.py --cpu                   # tiny Mistral on CPU, short lengths

Documents come from `synthembed.evaluation.passkey.make_passkey_set` (exact token lengths) and are encoded through
`TransformerEmbedder.encode` (EOS appended, last-token pooling), in batches of about --batch-tokens tokens, as the
passkey grid does.
Per length and attention implementation it prints the median documents per second over --repeats timed runs (after one
warm-up), the peak GPU memory (torch.cuda.max_memory_allocated), and the ratio ours / peer. A length that does not fit
prints "does not fit" instead of failing. Without a CUDA device (and without --cpu) it says so and exits 0.
No weights are downloaded: random weights are fine for speed and memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time

MISTRAL_7B = dict(  # Mistral-7B-v0.1's published config
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=32768,
    rope_theta=10000.0,
    sliding_window=4096,
)


def _lengths(text: str) -> list[int]:
    return [int(float(t[:-1]) * 1024) if t.lower().endswith("k") else int(t) for t in text.split(",") if t.strip()]


def build_model(cpu: bool, sliding_window: int | None):
    """A random-weight MistralModel on the target device and the tiny BPE tokenizer (its ids fit any Mistral vocab)."""
    import torch
    from transformers import MistralConfig, MistralModel

    from synthembed.testing.tiny import TINY_DEFAULTS, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    shape = dict(TINY_DEFAULTS) | {"vocab_size": len(tokenizer)} if cpu else dict(MISTRAL_7B)
    shape["sliding_window"] = sliding_window or None
    config = MistralConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
    device = torch.device("cpu" if cpu else "cuda")
    dtype = torch.float32 if cpu else torch.bfloat16
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:  # initialise on the GPU directly: 7B random weights on the CPU would take minutes
            model = MistralModel._from_config(config, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return model, tokenizer


def _sync(cpu: bool) -> None:
    import torch

    if not cpu:
        torch.cuda.synchronize()


def measure(emb, docs: list[str], batch_size: int, repeats: int, cpu: bool) -> dict:
    """Median docs/s over `repeats` timed encodes (after one warm-up) and the peak memory of one encode."""
    import torch

    emb.encode(docs[:batch_size], batch_size=batch_size, show_progress=False)  # warm-up: kernels, allocator
    _sync(cpu)
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        emb.encode(docs, batch_size=batch_size, show_progress=False)
        _sync(cpu)
        rates.append(len(docs) / (time.perf_counter() - started))
    if cpu:  # the process's peak resident memory so far (Linux reports KiB)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    else:
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    return {"docs_per_s": statistics.median(rates), "peak_gib": peak_gib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny Mistral on CPU instead of Mistral-7B-shaped on CUDA")
    parser.add_argument("--lengths", default=None, help="default 4k,8k,16k,32k (CUDA) or 512,1024,2048 (--cpu)")
    parser.add_argument("--docs", type=int, default=8, help="documents per length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=32768, help="tokens per encoding batch")
    parser.add_argument("--sliding-window", type=int, default=4096, help="0 = full attention (Mistral-7B-v0.1: 4096)")
    parser.add_argument("--no-peer", action="store_true", help="skip eager attention (it is slow and memory-hungry)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("bench_passkey_gpu: no CUDA device here, nothing measured (run on a GPU machine, or pass --cpu for the "
              "tiny-Mistral CPU figures)")  # fmt: skip
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    from synthembed.evaluation.passkey import make_passkey_set
    from synthembed.evaluation.passkey_grid import is_out_of_memory
    from synthembed.model import TransformerEmbedder

    lengths = _lengths(args.lengths or ("512,1024,2048" if args.cpu else "4k,8k,16k,32k"))
    model, tokenizer = build_model(args.cpu, args.sliding_window)
    device = "cpu" if args.cpu else torch.cuda.get_device_name()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: MistralModel {n_params / 1e6:,.1f}M parameters, {next(model.parameters()).dtype}, {device}, "
          f"sliding window {model.config.sliding_window}, torch {torch.__version__}")  # fmt: skip
    emb = TransformerEmbedder(model, tokenizer, pooling="last", max_len=max(lengths) + 8, append_eos=True, name="bench")
    impls = ["sdpa"] if args.no_peer else ["sdpa", "eager"]
    results = []
    print(f"{'length':>7} {'batch':>5} {'impl':>6} {'docs/s':>9} {'peak GiB':>9}")
    for length in lengths:
        docs = [d.text for d in make_passkey_set(tokenizer, length, n_queries=1, n_candidates=args.docs).documents]
        batch_size = max(1, args.batch_tokens // (length + 1))
        row = {"length": length, "batch_size": batch_size, "docs": args.docs}
        for impl in impls:
            model.set_attn_implementation(impl)
            try:
                row[impl] = measure(emb, docs, batch_size, args.repeats, args.cpu)
                print(
                    f"{length:>7} {batch_size:>5} {impl:>6} {row[impl]['docs_per_s']:>9.3f} {row[impl]['peak_gib']:>9.2f}"
                )
            except Exception as err:  # noqa: BLE001 - only running out of memory is a result
                if not is_out_of_memory(err):
                    raise
                row[impl] = None
                print(f"{length:>7} {batch_size:>5} {impl:>6}  does not fit in memory ({type(err).__name__})")
            gc.collect()
            if not args.cpu:
                torch.cuda.empty_cache()
        if row.get("eager") and row.get("sdpa"):
            row["ratio_sdpa_over_eager"] = row["sdpa"]["docs_per_s"] / row["eager"]["docs_per_s"]
            print(f"{length:>7}  ratio sdpa / eager (docs/s): {row['ratio_sdpa_over_eager']:.2f}")
        results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "parameters": n_params, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
