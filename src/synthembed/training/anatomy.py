"""The paper's method at work on a handful of pairs, step by step: what the model reads, where it pools, the vectors,
the similarities, the logits and the loss that training minimizes (notebook 03 shows it before it trains).

    from synthembed.training.anatomy import method_at_work, pick_pairs
    task, queries, positives, negatives = pick_pairs(pairs, n=4)     # training pairs sharing one instruction
    seen = method_at_work("HuggingFaceTB/SmolLM2-135M-Instruct", task, queries, positives, negatives)
    seen.loss, seen.tables()["logits"]

Nothing here re-implements the method: the query format is data.format_query, the tokens and pooled vectors come from
the Embedder that training uses (model.py appends and checks EOS; pooling.py pools), and the similarities and the loss
come from losses.similarity_logits and losses.info_nce, the function CachedInfoNCE calls in every training step. The
model runs in eval mode (training adds LoRA dropout), so the numbers are exactly reproducible.

References: Wang et al., 2024, "Improving Text Embeddings with Large Language Models", section 3.2 (the instruction
template, the appended EOS and its last-layer vector, InfoNCE over in-batch and hard negatives at tau = 0.02).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data import format_query
from ..errors import SynthembedError
from ..losses import TEMPERATURE
from .data import TrainingPair

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd
    from torch import Tensor

    from ..model import TransformerEmbedder

_INSTRUCT, _QUERY = "Instruct: ", "\nQuery: "


def split_query(text: str) -> tuple[str | None, str]:
    """(task, query) of a training pair's query side; the inverse of data.format_query (a plain query has no task).

    >>> split_query("Instruct: Given a claim, retrieve documents\\nQuery: cats purr")
    ('Given a claim, retrieve documents', 'cats purr')
    >>> split_query("cats purr")
    (None, 'cats purr')
    """
    if text.startswith(_INSTRUCT) and _QUERY in text:
        task, query = text[len(_INSTRUCT) :].split(_QUERY, 1)
        if format_query(task, query) == text:
            return task, query
    return None, text


def pick_pairs(pairs: Sequence[TrainingPair], n: int = 4) -> tuple[str | None, list[str], list[str], list[str]]:
    """(task, queries, positives, hard negatives) of `n` training pairs with a hard negative that share one
    instruction, taken in order, skipping any pair whose texts repeat one already taken. The commonest instruction that
    has `n` such pairs is chosen (SciFact's, beside a few synthetic examples per task).

    Repeats are skipped because the loss masks a duplicate out of the softmax (losses.info_nce), and the view of
    `method_at_work` is meant to show every candidate as a real negative.
    """
    usable = [(*split_query(p.query), p.positive, p.negative) for p in pairs if p.negative is not None]
    if not usable:
        raise SynthembedError("no training pair has a hard negative to show")
    for task, _ in Counter(row[0] for row in usable).most_common():
        queries, positives, negatives = [], [], []
        for pair_task, query, positive, negative in usable:
            texts = {query, positive, negative}
            if pair_task != task or len(texts) < 3 or texts & {*queries, *positives, *negatives}:
                continue
            queries.append(query)
            positives.append(positive)
            negatives.append(negative)
            if len(queries) == n:
                return task, queries, positives, negatives
    raise SynthembedError(f"no instruction has {n} training pairs with a hard negative and distinct texts")


@dataclass
class MethodAtWork:
    """One batch through the method. Rows of the (n, 2n) matrices are queries; columns the n positives, then the n hard
    negatives (the positive of query i is column i; every other column is a negative for it)."""

    task: str | None
    temperature: float
    pooling: str
    eos_token: str | None  # the token appended and pooled at (decoder-only models), None for encoders
    queries: list[str]  # exactly as the model reads them: `Instruct: {task}\nQuery: {query}`
    positives: list[str]
    negatives: list[str]
    tokens: list[list[str]]  # per text (queries, positives, negatives), every token the model reads
    pooled_tokens: list[str | None]  # per text, the token whose last-layer state is the embedding ("last" pooling)
    q_reps: Tensor  # (n, D) pooled vectors, before L2 normalization
    p_reps: Tensor  # (n, D)
    n_reps: Tensor  # (n, D)
    cosine: Tensor  # (n, 2n)
    logits: Tensor  # (n, 2n) cosine / temperature
    probabilities: Tensor  # (n, 2n) the softmax of each row: where the loss wants mass on column i
    loss: float  # losses.info_nce of the batch

    def roles(self) -> list[str]:
        n = len(self.queries)
        return [f"{kind}{i + 1}" for kind in ("q", "p", "n") for i in range(n)]

    def tables(self, dims: int = 4, tail: int = 4, width: int = 90) -> dict[str, pd.DataFrame]:
        """The steps as DataFrames: inputs (texts as the model reads them, cut to `width` characters), tokens (the
        last `tail` tokens and the pooled one), vectors (norm and first `dims` dimensions), cosine, logits."""
        import pandas as pd
        import torch

        roles = self.roles()
        texts = self.queries + self.positives + self.negatives
        cut = [t if len(t) <= width else t[: width - 1] + "…" for t in texts]
        reps = torch.cat([self.q_reps, self.p_reps, self.n_reps]).double()  # (3n, D); float64 prints as it rounds
        vectors = pd.DataFrame(reps[:, :dims].numpy(), index=roles, columns=[f"dim {d}" for d in range(dims)])
        vectors.insert(0, "norm", reps.norm(dim=-1).numpy())
        columns = roles[len(self.queries) :]
        rows = roles[: len(self.queries)]
        logits = pd.DataFrame(self.logits.double().numpy(), index=rows, columns=columns)
        logits["p(positive)"] = self.probabilities.diagonal().double().numpy()
        return {
            "inputs": pd.DataFrame({"text as the model reads it": cut}, index=roles),
            "tokens": pd.DataFrame(
                {
                    "n tokens": [len(t) for t in self.tokens],
                    f"last {tail}": [" | ".join(repr(x) for x in t[-tail:]) for t in self.tokens],
                    "pooled token": self.pooled_tokens,
                    "pooled is EOS": [p is not None and p == self.eos_token for p in self.pooled_tokens],
                },
                index=roles,
            ),
            "vectors": vectors,
            "cosine": pd.DataFrame(self.cosine.double().numpy(), index=rows, columns=columns),
            "logits": logits,
        }


def method_at_work(
    model: str | Path | TransformerEmbedder,
    task: str | None,
    queries: Sequence[str],
    positives: Sequence[str],
    negatives: Sequence[str],
    *,
    temperature: float = TEMPERATURE,
    max_len: int = 512,
    device: str | None = None,
) -> MethodAtWork:
    """Run one batch of (query, positive, hard negative) pairs through the method and keep every intermediate step.

    Args:
        model: a model path or hub id (loaded with load_embedder, as training loads it) or a loaded Embedder.
        task: the task instruction; queries become `Instruct: {task}\\nQuery: {query}` (None: plain queries).
        queries, positives, negatives: n raw queries, their positive documents and one hard negative each; all texts
            distinct (the loss would mask a duplicate, so the plain logits shown would not be the ones it uses).
        temperature: tau, 0.02 in the paper (logits = cosine / temperature).
        max_len: tokens per text, EOS included, when `model` is a path.
        device: where a loaded model runs (default: CUDA when available).
    """
    import torch

    from ..losses import info_nce, similarity_logits
    from ..model import load_embedder

    n = len(queries)
    if n == 0 or len(positives) != n or len(negatives) != n:
        raise SynthembedError(f"need n queries, positives and negatives: {n}, {len(positives)}, {len(negatives)}")
    instructed = [format_query(task, q) for q in queries]
    if len(set(instructed)) < n or len(set(positives)) < n or set(negatives) & set(positives):
        raise SynthembedError("queries, positives and negatives must not repeat: the loss would mask the repeats")
    emb = model if hasattr(model, "embed") else load_embedder(str(model), max_len=max_len, device=device)
    groups = [instructed, list(positives), list(negatives)]
    was_training = emb.model.training
    emb.model.eval()
    try:
        with torch.no_grad():
            # Each group is its own batch, as CachedInfoNCE embeds it; embed() checks that the pooled token is EOS.
            batches = [emb.tokenize(texts) for texts in groups]
            q_reps, p_reps, n_reps = (emb.embed(batch, normalize=False).float().cpu() for batch in batches)  # (n, D)
            candidates = torch.cat([p_reps, n_reps])  # (2n, D)
            cosine = similarity_logits(q_reps, candidates, temperature=1.0)  # (n, 2n)
            logits = similarity_logits(q_reps, candidates, temperature)  # (n, 2n)
            loss = info_nce(q_reps, p_reps, n_reps, temperature=temperature, q_texts=instructed,
                            p_texts=list(positives), n_texts=list(negatives))  # fmt: skip
    finally:
        emb.model.train(was_training)
    tokens, pooled = _tokens(emb, groups, batches)
    return MethodAtWork(
        task=task, temperature=temperature, pooling=emb.pooling,
        eos_token=emb.tokenizer.eos_token if emb.append_eos else None,
        queries=instructed, positives=list(positives), negatives=list(negatives), tokens=tokens, pooled_tokens=pooled,
        q_reps=q_reps, p_reps=p_reps, n_reps=n_reps, cosine=cosine, logits=logits,
        probabilities=logits.softmax(dim=-1), loss=float(loss),
    )  # fmt: skip


def _tokens(emb, groups: list[list[str]], batches: list[dict]) -> tuple[list[list[str]], list[str | None]]:
    """Every text's tokens as the model reads them (unpadded), and the token at the position "last" pooling reads,
    found in the padded batch the way pooling.py finds it (from the attention mask, for either padding side)."""
    from ..pooling import last_token_index

    decode = emb.tokenizer.convert_ids_to_tokens
    tokens = [decode(ids) for texts in groups for ids in emb.token_ids(texts)]
    pooled: list[str | None] = []
    for batch in batches:
        if emb.pooling != "last":
            pooled += [None] * batch["input_ids"].shape[0]
            continue
        at = last_token_index(batch["attention_mask"])  # (b,)
        pooled += decode(batch["input_ids"].gather(1, at[:, None]).squeeze(1).tolist())
    return tokens, pooled
