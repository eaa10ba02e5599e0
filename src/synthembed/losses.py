"""The contrastive loss of E5-mistral (InfoNCE over in-batch and hard negatives) and its cached (GradCache) form.

    loss = -log( exp(cos(q, p+) / temperature) / sum_candidates exp(cos(q, c) / temperature) )

with temperature 0.02 (the paper's tau, section 3.2: "standard InfoNCE loss over the in-batch negatives and hard
negatives"). A query's candidates are its own positive, every other positive in the batch (in-batch negatives, which
can be switched off) and the hard negatives (its own; with in-batch negatives on, everyone's).

Three things the plain formula leaves out, all handled here:
- duplicates: a candidate whose text equals the query's positive (or that belongs to an identical query) is the same
  document, not a negative, so its logit is masked; this matters for long-short (classification) data where many
  examples share a label text;
- big batches: `CachedInfoNCE` gives the full-batch loss and gradients of a 2048-example batch with the activation memory
  of one mini-batch (GradCache); gradient accumulation cannot, since it drops the negatives across micro-batches. With
  one mini-batch (the whole batch) it is the plain loss: one pass with a graph, then one backward;
- many devices: `gather=True` all-gathers the representations so every device's examples are negatives for everyone's.

Run the tests: `.venv/bin/pytest tests/test_losses.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SynthembedError

TEMPERATURE = 0.02  # the paper's tau (section 3.2)

_ABSENT = -1  # text id of a missing hard negative; real ids are non-negative 63-bit hashes
_UNKNOWN = -2  # text id where no text was given: compares equal to nothing


def similarity_logits(q_reps: Tensor, p_reps: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """Cosine similarity between every query and every candidate, divided by the temperature.

    Both sides are L2-normalized here, so already-normalized inputs are fine (normalizing twice changes nothing).

    Args:
        q_reps: (Q, D) query representations.
        p_reps: (P, D) candidate (positive or negative document) representations.
        temperature: the softmax temperature tau; 0.02 in the paper. Logits are cos / temperature, so the
            "scale" of other libraries is 1 / temperature.

    Returns:
        (Q, P) logits.

    Example:
        >>> similarity_logits(torch.eye(2), torch.eye(2)).tolist()
        [[50.0, 0.0], [0.0, 50.0]]
    """
    if temperature <= 0:
        raise SynthembedError(f"temperature must be positive, got {temperature}")
    q_reps = F.normalize(q_reps, dim=-1)  # (Q, D)
    p_reps = F.normalize(p_reps, dim=-1)  # (P, D)
    return q_reps @ p_reps.T / temperature  # (Q, P)


def text_ids(texts: Sequence[str | None], device: torch.device | str | None = None) -> Tensor:
    """Stable 63-bit ids of texts (None -> -1) so that equal texts can be compared as tensors and across processes.

    Python's hash() is salted per process, so it would disagree between ranks; blake2b does not.

    >>> bool(text_ids(["a", "a", "b"])[0] == text_ids(["a"])[0])
    True
    """
    ids = [
        _ABSENT
        if t is None
        else int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") >> 1
        for t in texts
    ]
    return torch.tensor(ids, dtype=torch.long, device=device)  # (N,)


def _ids(texts: Sequence[str | None] | None, batch: int, device: torch.device) -> Tensor:
    """text_ids, or _UNKNOWN for every row when the texts were not given."""
    if texts is None:
        return torch.full((batch,), _UNKNOWN, dtype=torch.long, device=device)
    return text_ids(texts, device)


def _same(cand_ids: Tensor, row_ids: Tensor) -> Tensor:
    """(N, M) True where candidate j's text equals row i's text, both known. (M,), (N,) -> (N, M)"""
    return (cand_ids[None, :] == row_ids[:, None]) & (cand_ids >= 0)[None, :]


def _gather_with_grad(local: Tensor) -> Tensor:
    """Concatenate `local` from every rank (ranks may hold different sizes); the local slice keeps its autograd graph,
    the other slices are constants. (N_local, ...) -> (N_global, ...)"""
    import torch.distributed as dist

    world_size = dist.get_world_size()
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = local.detach()
    if local.shape[0] < longest:  # all_gather needs equal shapes
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        padded = torch.cat([padded, pad])
    pieces = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded.contiguous())
    pieces = [piece[:n] for piece, n in zip(pieces, sizes, strict=True)]
    pieces[dist.get_rank()] = local  # this rank's slice carries the gradient
    return torch.cat(pieces)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def info_nce(
    q_reps: Tensor,
    p_reps: Tensor,
    n_reps: Tensor | None = None,
    *,
    temperature: float = TEMPERATURE,
    in_batch_negatives: bool | Sequence[bool] = True,
    q_texts: Sequence[str] | None = None,
    p_texts: Sequence[str] | None = None,
    n_texts: Sequence[str | None] | None = None,
    gather: bool = False,
) -> Tensor:
    """InfoNCE with cosine similarity over in-batch negatives and hard negatives; the mean over queries.

    Query i's candidates are its positive p_i, the other positives p_j (when `in_batch_negatives`) and the hard
    negatives: its own n_i and, when `in_batch_negatives`, every other n_j. Without `n_reps` (groups that have no hard
    negative) only in-batch negatives are used. Switch in-batch negatives off for long-short (classification) data,
    where many examples share a label text.

    Duplicates never act as negatives: given the texts, a candidate other than p_i is masked out of query i's softmax
    when its text equals p_i's text, and p_j is masked when q_j's text equals q_i's (the same query, so p_j answers it
    too). This covers a hard negative identical to the positive.

    Args:
        q_reps: (B, D) query representations (normalized inside).
        p_reps: (B, D) positive document representations; row i is the positive of query i.
        n_reps: (B, D) hard negative representations, row i for query i, or None. Where only some queries have a hard
            negative, give their texts in `n_texts` with None for the missing ones (their rows are ignored).
        temperature: tau, 0.02 in the paper (logits = cos / temperature; other libraries' scale = 1 / temperature).
        in_batch_negatives: use the other queries' positives and hard negatives as negatives; one flag for the batch,
            or one per query (B flags), so that a batch mixing task groups can switch them off for its long-short rows.
        q_texts, p_texts, n_texts: the texts behind the representations, each of length B; they enable the duplicate
            masking (any may be omitted). `n_texts` may hold None for queries without a hard negative.
        gather: when torch.distributed is initialised with more than one process, all-gather the representations
            (and text ids) of every rank so that all examples are negatives for all queries. Every rank then computes
            the same global loss; its gradient flows only into this rank's slice and is scaled by the world size, so
            that DDP's gradient *average* equals the full-batch gradient. The returned value is the global loss.

    Returns:
        A scalar: the mean loss over the (global) batch of queries.

    References:
        Wang et al., 2024, "Improving Text Embeddings with Large Language Models", section 3.2 (InfoNCE, tau = 0.02)
        and section 4.2 (batch size 2048, one hard negative per pair).

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(info_nce(q, q).item(), 6)  # perfect alignment: each positive beats the other by cos 1 / 0.02
        0.0
    """
    batch = q_reps.shape[0]
    if p_reps.shape != q_reps.shape:
        raise SynthembedError(f"q_reps {tuple(q_reps.shape)} and p_reps {tuple(p_reps.shape)} must have the same shape")
    if n_reps is not None and n_reps.shape != q_reps.shape:
        raise SynthembedError(f"n_reps {tuple(n_reps.shape)} must have the shape of q_reps {tuple(q_reps.shape)}")
    for name, texts in (("q_texts", q_texts), ("p_texts", p_texts), ("n_texts", n_texts)):
        if texts is not None and len(texts) != batch:
            raise SynthembedError(f"{name} has {len(texts)} texts for a batch of {batch}")
    if n_texts is not None and n_reps is None:
        raise SynthembedError("n_texts given without n_reps")
    device = q_reps.device
    if isinstance(in_batch_negatives, bool):
        in_batch = torch.full((batch,), in_batch_negatives, dtype=torch.long, device=device)  # (B,)
    else:
        if len(in_batch_negatives) != batch:
            raise SynthembedError(f"in_batch_negatives has {len(in_batch_negatives)} flags for a batch of {batch}")
        in_batch = torch.tensor([bool(f) for f in in_batch_negatives], dtype=torch.long, device=device)  # (B,)
    if q_reps.dtype in (torch.float16, torch.bfloat16):  # cos / 0.02 spans +-50: softmax in float32
        q_reps, p_reps = q_reps.float(), p_reps.float()
        n_reps = n_reps.float() if n_reps is not None else None

    # Text ids: hashes >= 0, _UNKNOWN where no text was given (never equal to anything), _ABSENT for a missing negative.
    q_ids = _ids(q_texts, batch, device)  # (B,)
    p_ids = _ids(p_texts, batch, device)  # (B,)
    n_ids = _ids(n_texts, batch, device) if n_reps is not None else None  # (B,)

    distributed = gather and _distributed()
    if distributed:
        # Every rank must take part in the same collectives, so a missing hard-negative block is filled in, not skipped.
        if n_reps is None:
            n_reps = q_reps.new_zeros(q_reps.shape)
            n_ids = torch.full((batch,), _ABSENT, dtype=torch.long, device=device)
        q_reps, p_reps, n_reps = (_gather_with_grad(t) for t in (q_reps, p_reps, n_reps))  # (N, D) each
        q_ids, p_ids, n_ids, in_batch = (_gather_with_grad(t) for t in (q_ids, p_ids, n_ids, in_batch))  # (N,) each

    num = q_reps.shape[0]  # N: the global batch
    candidates = p_reps if n_reps is None else torch.cat([p_reps, n_reps])  # (N, D) or (2N, D)
    logits = similarity_logits(q_reps, candidates, temperature)  # (N, N) or (N, 2N)

    eye = torch.eye(num, dtype=torch.bool, device=device)  # (N, N)
    others = ~eye & (in_batch == 0)[:, None]  # (N, N) other queries' candidates, for rows that switched them off
    # mask_p[i, j]: p_j is no negative for query i (a copy of p_i, or the positive of a query identical to q_i)
    mask_p = others | ((_same(p_ids, p_ids) | _same(q_ids, q_ids)) & ~eye)  # (N, N)
    masks = [mask_p]
    if n_reps is not None:
        # mask_n[i, j]: n_j is absent, or is p_i's text (also when j == i: a hard negative equal to its own positive)
        masks.append(others | (n_ids == _ABSENT)[None, :] | _same(n_ids, p_ids))  # (N, N)
    logits = logits.masked_fill(torch.cat(masks, dim=1), float("-inf"))  # the positive (diagonal) is never masked

    labels = torch.arange(num, device=device)  # (N,) query i's positive is column i
    loss = F.cross_entropy(logits, labels)
    if distributed:
        # Same value; gradient times the world size, because DDP averages the per-rank gradients while the full-batch
        # gradient is their sum (each rank only reaches its own slice).
        world_size = torch.distributed.get_world_size()
        loss = loss * world_size - loss.detach() * (world_size - 1)
    return loss


class _RandState:
    """The CPU and CUDA random states at one moment, to replay a forward pass with the same dropout masks."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class CachedInfoNCE:
    """`info_nce` over a big batch with the memory of a small mini-batch: GradCache.

    `step` (1) embeds every mini-batch without gradients, remembering the random state before each; (2) computes the
    loss on the full batch of representations and its gradient with respect to them (cheap: only (B, D) tensors); (3)
    re-embeds each mini-batch with gradients from the same random state (so dropout draws the same masks) and
    backpropagates the cached representation gradients into the model. The parameter gradients equal those of the
    full batch in one pass; gradient accumulation cannot do this, as it loses the negatives across micro-batches.

    The plain loss is the cached loss with one mini-batch: when the whole batch fits in one (B <= mini_batch_size)
    there is nothing to cache, so `step` embeds each group once with its graph and runs `backward` on the plain
    `info_nce` of the batch (the same loss and gradients, computed once; DeepSpeed needs this, its engine runs backward).

    Args:
        embed_fn: list of texts -> (b, D) representations with grad, e.g.
            ``lambda texts: embedder.embed(embedder.tokenize(texts))``.
        mini_batch_size: texts per forward pass; bounds the activation memory.
        temperature: tau, 0.02 in the paper (logits = cos / temperature).
        in_batch_negatives: as in `info_nce`; off for long-short (classification) data. `step` may also take one
            flag per query.
        gather: all-gather the representations across ranks (see `info_nce`); every rank must call `step`.
        no_sync: optional context manager factory (e.g. ``model.no_sync`` of DDP, or
            ``lambda: accelerator.no_sync(model)``) entered for every re-embedding backward but the last, so that DDP
            all-reduces the gradients once per step.
        show_progress: a tqdm bar over the mini-batches.
        backward: how the loss of a one-mini-batch step is backpropagated, e.g. ``accelerator.backward`` (default:
            ``loss.backward()``); the cached path backpropagates representation gradients itself.
        sort_by_length: build the mini-batches of each group (queries, positives, negatives) from texts sorted by
            length, so that each forward pass pads little; the loss and gradients do not depend on how the batch is
            cut (only dropout masks fall on other texts). False keeps the batch order.

    References:
        Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (GradCache),
        section 3 (the gradient cache: representation gradients, then sub-batch gradient accumulation).
        Wang et al., 2024, "Improving Text Embeddings with Large Language Models", section 4.2 (batch size 2048).

    Example:
        >>> enc = torch.nn.Linear(4, 3)
        >>> table = {t: torch.randn(4) for t in "abcdef"}
        >>> loss = CachedInfoNCE(lambda texts: enc(torch.stack([table[t] for t in texts])), mini_batch_size=2)
        >>> value = loss.step(["a", "b", "c"], ["d", "e", "f"])  # gradients now sit in enc.weight.grad
        >>> enc.weight.grad.shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        embed_fn: Callable[[list[str]], Tensor],
        mini_batch_size: int = 32,
        temperature: float = TEMPERATURE,
        in_batch_negatives: bool = True,
        gather: bool = False,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
        show_progress: bool = False,
        sort_by_length: bool = True,
        backward: Callable[[Tensor], object] | None = None,
    ) -> None:
        if mini_batch_size < 1:
            raise SynthembedError(f"mini_batch_size must be at least 1, got {mini_batch_size}")
        self.embed_fn = embed_fn
        self.mini_batch_size = mini_batch_size
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self.gather = gather
        self.no_sync = no_sync
        self.show_progress = show_progress
        self.sort_by_length = sort_by_length
        self.backward = backward

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[i : i + self.mini_batch_size] for i in range(0, len(texts), self.mini_batch_size)]

    def step(
        self,
        queries: list[str],
        positives: list[str],
        negatives: list[str | None] | None = None,
        in_batch_negatives: Sequence[bool] | None = None,
    ) -> float:
        """Loss and backward for one batch; the optimizer step (and zero_grad) is the caller's.

        Args:
            queries: B query texts (already formatted with their instruction).
            positives: B positive documents.
            negatives: B hard negatives, or None for groups without them; single entries may be None.
            in_batch_negatives: one flag per query for this batch (default: the loss's own setting for all).

        Returns:
            The loss value (the global loss when gathering).
        """
        batch = len(queries)
        if batch == 0 or len(positives) != batch or (negatives is not None and len(negatives) != batch):
            raise SynthembedError(
                f"need as many positives (and negatives) as queries: {batch} queries, {len(positives)} positives"
                + ("" if negatives is None else f", {len(negatives)} negatives")
            )
        present = [i for i, n in enumerate(negatives) if n is not None] if negatives is not None else []
        groups = [list(queries), list(positives)] + ([[negatives[i] for i in present]] if present else [])

        def loss_of(reps: list[Tensor]) -> Tensor:
            """info_nce of the batch from its groups' representations: (B, D), (B, D) and (len(present), D)."""
            n_reps = None
            if negatives is not None:
                n_reps = reps[0].new_zeros(reps[0].shape)  # (B, D) rows of missing negatives stay zero (masked)
                if present:
                    n_reps = n_reps.index_copy(0, torch.tensor(present, device=n_reps.device), reps[2])
            return info_nce(
                reps[0],
                reps[1],
                n_reps,
                temperature=self.temperature,
                in_batch_negatives=self.in_batch_negatives if in_batch_negatives is None else list(in_batch_negatives),
                q_texts=queries,
                p_texts=positives,
                n_texts=None if negatives is None else list(negatives),
                gather=self.gather,
            )

        if batch <= self.mini_batch_size:  # one mini-batch: the plain loss, nothing to cache
            loss = loss_of([self.embed_fn(texts) for texts in groups])  # every group embedded with its graph
            (self.backward or Tensor.backward)(loss)
        else:
            loss = self._cached_step(groups, loss_of)
        return float(loss.detach())

    def _cached_step(self, groups: list[list[str]], loss_of: Callable[[list[Tensor]], Tensor]) -> Tensor:
        """GradCache's three passes over the texts of each group (queries, positives, present hard negatives); the
        parameter gradients accumulate as one backward of `loss_of` over all representations would leave them."""
        from tqdm.auto import tqdm

        # Each group is embedded in `orders[g]` order (by character length, a cheap stand-in for token length).
        orders = [
            sorted(range(len(texts)), key=lambda i, t=texts: len(t[i])) if self.sort_by_length else list(range(len(texts)))
            for texts in groups
        ]
        chunks = [
            (g, chunk) for g, texts in enumerate(groups) for chunk in self._chunks([texts[i] for i in orders[g]])
        ]

        # (1) representations without a graph; the random state before each mini-batch is kept for the replay.
        states: list[_RandState] = []
        reps: list[list[Tensor]] = [[] for _ in groups]
        with torch.no_grad():
            for g, chunk in tqdm(chunks, desc="embed (no grad)", disable=not self.show_progress, leave=False):
                states.append(_RandState())
                reps[g].append(self.embed_fn(chunk).detach())  # (b, D)
        # back to batch order: row orders[g][j] of group g is the j-th embedded text
        positions = [torch.tensor(order, device=r[0].device) for order, r in zip(orders, reps, strict=True)]
        leaves = []
        for r, where in zip(reps, positions, strict=True):
            embedded = torch.cat(r)  # (B_g, D) in embedding order
            leaves.append(embedded.new_empty(embedded.shape).index_copy_(0, where, embedded).requires_grad_(True))

        # (2) full-batch loss and its gradient with respect to the representations.
        loss = loss_of(leaves)
        loss.backward()
        grads = [  # in embedding order again, to line up with the chunks
            (leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)).index_select(0, where)
            for leaf, where in zip(leaves, positions, strict=True)
        ]

        # (3) replay each mini-batch with a graph and push the cached gradient through it.
        offsets = [0] * len(groups)
        resume = _RandState()  # where the first pass left the random state
        for k, ((g, chunk), state) in enumerate(
            tqdm(
                list(zip(chunks, states, strict=True)), desc="embed (grad)", disable=not self.show_progress, leave=False
            )
        ):
            state.restore()
            last = k == len(chunks) - 1
            sync = contextlib.nullcontext() if (last or self.no_sync is None) else self.no_sync()
            with sync:
                chunk_reps = self.embed_fn(chunk)  # (b, D)
                chunk_grad = grads[g][offsets[g] : offsets[g] + len(chunk)]  # (b, D)
                # the chain rule for one chunk: dL/dparams += (dL/dreps)^T dreps/dparams
                chunk_reps.backward(gradient=chunk_grad.to(chunk_reps.dtype))
            offsets[g] += len(chunk)
        resume.restore()
        return loss
