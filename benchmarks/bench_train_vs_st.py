"""Our training loop against sentence-transformers' CachedMultipleNegativesRankingLoss on a real decoder with last-token
pooling: seconds per optimizer step of each, their ratio, and the losses of the first steps side by side.

    .venv/bin/python benchmarks/bench_train_vs_st.py --batch-size 8 --mini-batch-size 4 --max-len 64 --rounds 3 --steps 2
    .venv/bin/python benchmarks/bench_train_vs_st.py          # a quiet machine: batch 32, mini-batch 8, max_len 128,
                                                              # 5 alternating rounds of 4 steps
    .venv/bin/python benchmarks/bench_train_vs_st.py --no-lora                  # every weight trained, on both sides

Both sides train the same model (SmolLM2-135M-Instruct from $SYNTHEMBED_MODELS; the tiny random-weight Mistral, with a
note, where it is absent), in float32, with LoRA (rank 16, alpha 32, dropout 0.1, all linear layers) or without
(--no-lora), on the same batches: SciFact's train pairs from the shared data, instructed queries, one BM25-mined hard
negative each (training.data.load_pairs and BatchPlan, so batch k is the same pairs on both sides), the same batch,
mini-batch, max length (EOS included), temperature (sentence-transformers' scale = 1 / temperature = 50), AdamW (fused,
lr, weight decay 0.1 off biases and norms), linear decay without warm-up and gradient clipping at 1.0.

- ours: synthembed.training.loop.train, the loop `synthembed train` runs (CachedInfoNCE, accelerate); its seconds per
  step are the loop's own measurement (train_log.csv: tokenize, cached loss, clip, optimizer and schedule step);
- theirs: a SentenceTransformer of Transformer (plain text, no chat template) -> Pooling(pooling_mode="lasttoken"),
  its tokenizer made to append EOS as our export does it, CachedMultipleNegativesRankingLoss over it, and the same
  step timed over the same span (tokenize, loss forward and backward, clip, optimizer and schedule step).

Rounds alternate (ours, theirs, ours, theirs, ...) so background load falls on both alike; the first step of every run
is dropped as warm-up (when a run has more than one). Step 1 sees the same batch and the same weights on both sides
(LoRA's B starts at zero, so its random A does not matter yet), so the two first losses must agree: a check of the
cached loss too. With --no-lora the later steps agree as well (SmolLM2 has no dropout): the clipping, AdamW and the
schedule match. With LoRA they drift apart after step 1: LoRA's dropout masks fall on other texts (ours cuts its
mini-batches from length-sorted texts) and its A matrices start from other random draws. Losses also differ where a
batch holds repeated texts (SciFact claims with two relevant documents): our loss masks a repeat out of the
negatives, theirs does not; the table counts them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
LR = 1e-4
SEED = 0


def base_model(out: Path) -> str:
    """SmolLM2-135M-Instruct where fetched, else the tiny random-weight Mistral (with a note)."""
    from synthembed.errors import SynthembedError
    from synthembed.paths import local_model
    from synthembed.testing.tiny import build_tiny_mistral

    try:
        return str(local_model(SMOLLM2))
    except SynthembedError as err:
        print(f"[note] {err}\n[note] falling back to the tiny random-weight Mistral: the timings then say little")
        return str(build_tiny_mistral(out / "tiny-mistral", seed=SEED))


def train_args(args: argparse.Namespace, model: str, out: str):
    from synthembed.paths import shared_data
    from synthembed.training.args import TrainArguments

    return TrainArguments(
        data=[str(shared_data("beir", "scifact"))], base_model=model, out=out, batch_size=args.batch_size,
        mini_batch_size=args.mini_batch_size, max_steps=args.steps, max_len=args.max_len, lr=LR, warmup_steps=0,
        no_lora=args.no_lora, temperature=args.temperature, gradient_checkpointing=False, bf16="no", save_every=0,
        keep_checkpoints=1, no_export=True, progress=False, seed=SEED, hard_negatives="bm25", log_every=1,
    )  # fmt: skip


def run_ours(args: argparse.Namespace, model: str, work: Path) -> tuple[list[float], list[float]]:
    """(seconds per step, loss per step) of `synthembed train` on `args.steps` batches."""
    from synthembed.training.log import read_train_log
    from synthembed.training.loop import train

    with tempfile.TemporaryDirectory(dir=work, prefix="ours-") as tmp:
        out = train(train_args(args, model, str(Path(tmp) / "out")))
        rows = read_train_log(out)
    return [args.batch_size / row["pairs_per_s"] for row in rows], [row["loss"] for row in rows]


def sentence_transformer(model: str, max_len: int, lora: bool, device: str):
    """Transformer -> Pooling("lasttoken") over `model`, tokenizing exactly as our Embedder does (EOS appended)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from synthembed.training.export import _append_eos_in_tokenizer
    from synthembed.training.loop import add_lora

    transformer = Transformer(
        model, max_seq_length=max_len, model_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        # plain text in: a tokenizer with a chat template would otherwise wrap every text in it
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
    )  # fmt: skip
    tokenizer = transformer.tokenizer
    if tokenizer.pad_token is None:  # as our Embedder does: padding is masked out, EOS is the usual pad
        tokenizer.pad_token = tokenizer.eos_token
    _append_eos_in_tokenizer(tokenizer)  # sentence-transformers has no other way to end every text with EOS
    if lora:
        torch.manual_seed(SEED)
        transformer.model = add_lora(transformer.model)  # the same adapters as ours (rank 16, all linear layers)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling], device=device)


def run_theirs(args: argparse.Namespace, model: str, pairs, device: str) -> tuple[list[float], list[float]]:
    """(seconds per step, loss per step) of CachedMultipleNegativesRankingLoss on the batches ours trains on."""
    import torch
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from synthembed.training.data import BatchPlan, batch_texts
    from synthembed.training.loop import _optimizer, _schedule

    st = sentence_transformer(model, args.max_len, not args.no_lora, device)
    st.train()
    loss = CachedMultipleNegativesRankingLoss(st, scale=1 / args.temperature, mini_batch_size=args.mini_batch_size)
    optimizer = _optimizer(st, LR, 0.1)  # the same AdamW and parameter groups as ours
    scheduler = _schedule(optimizer, 0, args.steps)
    params = [p for p in st.parameters() if p.requires_grad]
    plan = BatchPlan(pairs, args.batch_size, seed=SEED)
    seconds, losses = [], []
    for step in range(args.steps):
        queries, positives, negatives = batch_texts(plan.batch(step))
        t0 = time.perf_counter()
        features = []
        for texts in (queries, positives, negatives):
            batch = st.preprocess(texts)
            features.append({k: v.to(st.device) if torch.is_tensor(v) else v for k, v in batch.items()})
        value = loss(features, None)
        value.backward()  # its hook replays the mini-batches with gradients (GradCache)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(value.detach()))
    return seconds, losses


def repeats(pairs, args: argparse.Namespace) -> list[int]:
    """Per step: texts of the batch that repeat another one (our loss masks them as negatives, theirs does not)."""
    from synthembed.training.data import BatchPlan, batch_texts

    plan = BatchPlan(pairs, args.batch_size, seed=SEED)
    counts = []
    for step in range(args.steps):
        queries, positives, negatives = batch_texts(plan.batch(step))
        counts.append(sum(len(group) - len(set(group)) for group in (queries, positives)) +
                      len(set(negatives) & set(positives)))  # fmt: skip
    return counts


def compare(args: argparse.Namespace, work: Path) -> dict:
    """Alternating rounds of ours and theirs; prints and returns the figures."""
    import torch

    from synthembed.training.data import load_pairs

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = base_model(work)
    ours_args = train_args(args, model, str(work / "unused"))
    # the pairs train() loads (same data, seed and miner), for the other side
    pairs = load_pairs(ours_args.data, seed=SEED, hard_negatives=ours_args.hard_negatives, max_len=args.max_len,
                       progress=False)  # fmt: skip
    print(f"[bench] {model} ({'LoRA' if not args.no_lora else 'every weight'}), {device}, torch threads "
          f"{torch.get_num_threads()}; batch {args.batch_size}, mini-batch {args.mini_batch_size}, max_len "
          f"{args.max_len}, {args.rounds} round(s) of {args.steps} step(s); {len(pairs)} SciFact pairs")  # fmt: skip

    timed = {"ours": [], "theirs": []}
    first_losses = {}
    for r in range(args.rounds):  # alternate, so that background load hits both alike
        for name in ("ours", "theirs"):
            seconds, losses = run_ours(args, model, work) if name == "ours" else run_theirs(args, model, pairs, device)
            timed[name] += seconds[1:] if len(seconds) > 1 else seconds
            first_losses.setdefault(name, losses)
            print(f"[bench] round {r + 1} {name}: s/step {[round(s, 3) for s in seconds]}, losses "
                  f"{[round(x, 4) for x in losses]}", flush=True)  # fmt: skip

    medians = {name: statistics.median(values) for name, values in timed.items()}
    result = {
        "model": model, "device": device, "threads": torch.get_num_threads(), "lora": not args.no_lora,
        "settings": {k: getattr(args, k) for k in ("batch_size", "mini_batch_size", "max_len", "steps", "rounds")},
        "seconds_per_step": timed, "median_s_per_step": medians, "ratio_theirs_over_ours": medians["theirs"] / medians["ours"],
        "losses": first_losses, "repeats": repeats(pairs, args),
    }  # fmt: skip
    print(f"\nmedian seconds per optimizer step ({len(timed['ours'])} timed steps each)\n"
          f"  ours (synthembed.training.loop, CachedInfoNCE):              {medians['ours']:8.3f}\n"
          f"  sentence-transformers (CachedMultipleNegativesRankingLoss): {medians['theirs']:8.3f}\n"
          f"  speed ratio ours / theirs (theirs s/step over ours):        {result['ratio_theirs_over_ours']:8.2f}")  # fmt: skip
    print("\nstep   loss ours   loss theirs   |difference|   repeated texts in the batch")
    for step, (a, b, k) in enumerate(zip(first_losses["ours"], first_losses["theirs"], result["repeats"], strict=False)):
        print(f"{step + 1:4d}   {a:9.5f}   {b:11.5f}   {abs(a - b):12.2e}   {k}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs of ours and sentence-transformers")
    parser.add_argument("--temperature", type=float, default=0.02)
    parser.add_argument("--no-lora", action="store_true", help="train every weight (both sides) instead of LoRA")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-vs-st-") as tmp:
        result = compare(args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
