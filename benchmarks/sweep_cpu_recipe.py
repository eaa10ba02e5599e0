"""The cpu profile's recipe sweep (docs/results.md, "SmolLM2 collapses, gemma-3-270m learns"): LoRA runs on SciFact
train (BM25 negatives), each scored by held-out top-1 and MRR over 128 SciFact test pairs. Runs are a JSON argument,
{name: settings}; a name starting with "base" scores the untrained model. Each run trains into
DIR/<name> and appends its scores to DIR/results.jsonl (DIR: the second argument, default runs/sweep).

    python benchmarks/sweep_cpu_recipe.py '{"base-gemma": {"base": "google/gemma-3-270m"},
        "gemma_lr2e-4_t02": {"base": "google/gemma-3-270m", "max_steps": 15}}'
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

from synthembed.data import read_beir
from synthembed.evaluation.metrics import pair_similarities, top1_accuracy
from synthembed.paths import shared_data_dir
from synthembed.training.args import TrainArguments
from synthembed.training.data import beir_to_pairs
from synthembed.training.loop import train_or_resume

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
scifact = shared_data_dir() / "beir" / "scifact"
corpus, queries, qrels = read_beir(scifact, "test")
held = beir_to_pairs(corpus, queries, qrels, task="Given a scientific claim, retrieve documents that support or refute the claim")[:128]

def score(model):
    s = pair_similarities(model, held, max_len=128)
    ranks = (s > s.diagonal()[:, None]).sum(1)
    return {"top1": top1_accuracy(s), "mrr": float(np.mean(1 / (1 + ranks))), "diag_minus_off": float(s.diagonal().mean() - s.mean())}

runs = json.loads(sys.argv[1])
work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/sweep")
work.mkdir(parents=True, exist_ok=True)
out = work / "results.jsonl"
for name, kw in runs.items():
    d = work / name
    settings = dict(batch_size=16, max_steps=20, max_len=64, lr=2e-4, warmup_steps=2, temperature=0.02)
    settings.update(kw)
    base = settings.pop("base", BASE)
    t = time.time()
    if name.startswith("base"):
        r = score(base)
    else:
        args = TrainArguments(data=[str(scifact)], base_model=base, out=str(d), save_every=0, seed=0,
                              hard_negatives="bm25", gradient_checkpointing=False, progress=False, **settings)
        train_or_resume(args)
        r = score(str(d / "merged"))
    r.update(name=name, base=base, settings=settings, seconds=round(time.time() - t))
    print(r, flush=True)
    with out.open("a") as f:
        f.write(json.dumps(r) + "\n")
