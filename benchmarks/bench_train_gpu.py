"""GPU training throughput of the paper's recipe: a Mistral-7B-shaped model (MistralConfig of Mistral-7B-v0.1, random
weights, bf16), LoRA rank 16 on all linear layers, max length 512, gradient checkpointing, cached InfoNCE (GradCache)
at an effective batch of 2048 pairs with one hard negative each (6144 texts per step).

    .venv/bin/python benchmarks/bench_train_gpu.py                         # H200: batch 2048, mini-batch 64, 3 steps
    .venv/bin/python benchmarks/bench_train_gpu.py --batch-size 256 --steps 2

Peer, in the same process and on the same model and texts: the plain (uncached) loss over a batch of one mini-batch,
i.e. what fits without GradCache, timed per text. The ratio printed is ours (cached, 2048) / plain (mini-batch) in
tokens per second: GradCache's extra no-grad forward costs about a third, in exchange for 2048-wide negatives.
MFU counts 6 * non-embedding parameters * tokens for forward + backward, plus 2 * params * tokens for the cached
no-grad forward and 2 * params * tokens for gradient checkpointing's recompute, against 989 TFLOP/s (H100/H200 dense bf16).

Without CUDA it prints why and exits 0, so `make bench` runs everywhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16


def mistral_7b_config():
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2048, help="pairs per optimizer step")
    parser.add_argument("--mini-batch-size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_train_gpu: no CUDA device here; nothing measured (the figures in docs/benchmarks.md are pending).")
        return 0

    from transformers import MistralModel

    from synthembed.losses import CachedInfoNCE, info_nce
    from synthembed.pooling import pool
    from synthembed.training.loop import add_lora, enable_checkpointing, trainable_parameters

    torch.manual_seed(0)
    config = mistral_7b_config()
    with torch.device("cuda"):
        model = MistralModel(config).to(torch.bfloat16)
    enable_checkpointing(model)
    model = add_lora(model, rank=args.lora_rank)
    model.train()
    trainable, total = trainable_parameters(model)
    non_embedding = total - config.vocab_size * config.hidden_size
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)

    # Every text is exactly max_len tokens ending in EOS: the worst case the paper's max length allows.
    generator = torch.Generator().manual_seed(0)
    vocab = config.vocab_size

    def fake_batch(n: int):
        ids = torch.randint(3, vocab, (n, args.max_len), generator=generator)
        ids[:, 0], ids[:, -1] = config.bos_token_id, config.eos_token_id
        return ids

    texts = {f"t{i}": i for i in range(3 * args.batch_size)}
    table = fake_batch(len(texts)).cuda()  # (3B, T)

    def embed_fn(names):
        ids = table[[texts[n] for n in names]]  # (b, T)
        mask = torch.ones_like(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, T, D)
        return torch.nn.functional.normalize(pool(hidden, mask, "last").float(), dim=-1)  # (b, D)

    names = list(texts)
    queries, positives, negatives = (names[i * args.batch_size : (i + 1) * args.batch_size] for i in range(3))
    loss_fn = CachedInfoNCE(embed_fn, mini_batch_size=args.mini_batch_size, temperature=0.02)
    tokens_per_step = 3 * args.batch_size * args.max_len

    def cached_step():
        loss_fn.step(queries, positives, negatives)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def plain_step():
        m = args.mini_batch_size // 3 or 1
        q, p, n = embed_fn(queries[:m]), embed_fn(positives[:m]), embed_fn(negatives[:m])
        info_nce(q, p, n, temperature=0.02).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return 3 * m * args.max_len

    print(f"Mistral-7B-shaped model: {total / 1e9:.2f}B parameters, {trainable / 1e6:.1f}M trainable (LoRA r{args.lora_rank})")
    print(f"batch {args.batch_size} pairs + hard negatives, mini-batch {args.mini_batch_size}, max length {args.max_len}")
    torch.cuda.reset_peak_memory_stats()
    cached_step()  # warm-up
    cached_times = []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        cached_step()
        torch.cuda.synchronize()
        cached_times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    plain_step()
    plain = []
    for _ in range(max(3, args.steps)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        n_tokens = plain_step()
        torch.cuda.synchronize()
        plain.append(n_tokens / (time.perf_counter() - t0))

    seconds = statistics.median(cached_times)
    ours = tokens_per_step / seconds
    # forward + backward (6N) + the cached no-grad forward (2N) + checkpointing's recompute (2N), per token
    flops = 10 * non_embedding * tokens_per_step
    print(f"ours (cached, effective batch {args.batch_size}): {seconds:.1f} s/step, {ours:,.0f} tokens/s, "
          f"MFU {flops / seconds / PEAK_BF16_FLOPS:.1%} (model FLOPs incl. recompute), peak {peak:.1f} GiB")
    peer = statistics.median(plain)
    print(f"peer (plain loss, one mini-batch of pairs): {peer:,.0f} tokens/s")
    print(f"ratio ours / peer tokens/s: {ours / peer:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
