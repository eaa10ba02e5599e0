"""InfoNCE and its cached (GradCache) form: against a hand-written reference, full batch vs cached with dropout on,
and a 2-process gloo group against the single-process full batch."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from synthembed.errors import SynthembedError
from synthembed.losses import CachedInfoNCE, info_nce, similarity_logits, text_ids

# ---------------------------------------------------------------------------------------------------------------------
# A reference written the slow, obvious way: per query, list the candidates and drop the duplicates by comparing strings.


def reference_info_nce(q, p, n, q_texts, p_texts, n_texts, temperature=0.02, in_batch_negatives=True):
    """Mean over i of -log softmax over query i's candidates, in float64 Python loops. `in_batch_negatives` is one
    flag for all queries or one per query."""
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm()))  # noqa: E731
    flags = [in_batch_negatives] * len(q) if isinstance(in_batch_negatives, bool) else list(in_batch_negatives)
    losses = []
    for i in range(len(q)):
        in_batch_negatives = flags[i]
        positive = cos(q[i], p[i]) / temperature
        scores = [positive]
        for j in range(len(p)):
            if j == i or not in_batch_negatives:
                continue
            if p_texts is not None and p_texts[j] == p_texts[i]:
                continue  # the same document as my positive
            if q_texts is not None and q_texts[j] == q_texts[i]:
                continue  # the positive of the same query
            scores.append(cos(q[i], p[j]) / temperature)
        if n is not None:
            for j in range(len(n)):
                if j != i and not in_batch_negatives:
                    continue
                if n_texts is not None and n_texts[j] is None:
                    continue  # no hard negative for that example
                if n_texts is not None and p_texts is not None and n_texts[j] == p_texts[i]:
                    continue  # a "negative" that is my positive
                scores.append(cos(q[i], n[j]) / temperature)
        top = max(scores)
        losses.append(-(positive - top - math.log(sum(math.exp(s - top) for s in scores))))
    return sum(losses) / len(losses)


def random_batch(batch=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(3)]


# Texts with every kind of duplicate: p3 == p0 (label text shared), q4 == q1 (same query, another positive),
# n2 == p0 (a hard negative that is another query's positive), n5 == p5 (a hard negative equal to its own positive),
# n1 == n2 (shared hard negative), n3 missing.
Q_TEXTS = ["q0", "q1", "q2", "q3", "q1", "q5"]
P_TEXTS = ["A", "B", "C", "A", "E", "F"]
N_TEXTS = ["x0", "A", "A", None, "x4", "F"]


@pytest.mark.parametrize("in_batch_negatives", [True, False, (True, False, False, True, False, True)],
                         ids=["in-batch", "none", "per-query"])
@pytest.mark.parametrize("with_negatives", [True, False])
@pytest.mark.parametrize("with_texts", [True, False])
def test_info_nce_matches_hand_written_reference(in_batch_negatives, with_negatives, with_texts):
    q, p, n = random_batch()
    n = n if with_negatives else None
    texts = dict(q_texts=Q_TEXTS, p_texts=P_TEXTS, n_texts=N_TEXTS if with_negatives else None) if with_texts else {}
    ref_texts = texts or dict(q_texts=None, p_texts=None, n_texts=None)
    got = info_nce(q, p, n, in_batch_negatives=in_batch_negatives, **texts).item()
    want = reference_info_nce(q, p, n, **ref_texts, in_batch_negatives=in_batch_negatives)
    assert got == pytest.approx(want, abs=1e-10)


def test_duplicate_masking_equals_dropping_the_duplicate_column():
    """Masking p3 (== p0's text) for query 0 gives exactly the loss of query 0 against the batch without p3."""
    q, p, _ = random_batch(batch=4, seed=1)
    texts = ["A", "B", "C", "A"]
    masked_logits = similarity_logits(q, p)  # (4, 4)
    # query 0: candidates p0, p1, p2 (p3 dropped); query 3: p3, p1, p2 (p0 dropped); queries 1 and 2: all four.
    rows = [
        -F.log_softmax(masked_logits[0, [0, 1, 2]], 0)[0],
        -F.log_softmax(masked_logits[1], 0)[1],
        -F.log_softmax(masked_logits[2], 0)[2],
        -F.log_softmax(masked_logits[3, [3, 1, 2]], 0)[0],
    ]
    want = torch.stack(rows).mean().item()
    got = info_nce(q, p, p_texts=texts).item()
    assert got == pytest.approx(want, abs=1e-12)
    assert info_nce(q, p).item() > got  # unmasked, the duplicate counts as a (very hard) negative


def test_no_in_batch_negatives_is_a_two_way_softmax_per_pair():
    q, p, n = random_batch(seed=2)
    pos = F.cosine_similarity(q, p) / 0.02  # (B,)
    neg = F.cosine_similarity(q, n) / 0.02  # (B,)
    want = -F.log_softmax(torch.stack([pos, neg], 1), 1)[:, 0].mean()
    assert info_nce(q, p, n, in_batch_negatives=False).item() == pytest.approx(want.item(), abs=1e-12)


def test_no_negative_group_uses_in_batch_negatives_only():
    q, p, _ = random_batch(seed=3)
    want = F.cross_entropy(similarity_logits(q, p), torch.arange(len(q)))
    assert info_nce(q, p).item() == pytest.approx(want.item(), abs=1e-12)
    # All hard negatives absent (None) is the same as no hard negatives at all.
    absent = info_nce(q, p, torch.randn_like(q), n_texts=[None] * len(q)).item()
    assert absent == pytest.approx(want.item(), abs=1e-12)


def test_temperature_is_the_papers_and_divides_the_cosine():
    for fn in (similarity_logits, info_nce, CachedInfoNCE.__init__):
        assert inspect.signature(fn).parameters["temperature"].default == 0.02
    q, p, _ = random_batch(seed=4)
    logits = similarity_logits(q * 3.0, p * 0.5)  # scale of the inputs must not matter: cosine
    assert torch.allclose(logits, F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T / 0.02)
    assert info_nce(q, p).item() != pytest.approx(info_nce(q, p, temperature=0.05).item())


def test_perfect_alignment_gives_near_zero_loss():
    q = torch.eye(8, dtype=torch.float64)[:6]  # orthogonal queries
    n = -q  # hard negatives pointing away
    assert info_nce(q, q.clone(), n).item() < 1e-15  # exp(-50) terms vanish
    assert info_nce(q, q.clone(), n, in_batch_negatives=False).item() < 1e-15
    # and a random batch is far from it
    r, s, _ = random_batch(seed=5)
    assert info_nce(r, s).item() > 1.0


def test_half_precision_reps_give_a_float32_loss():
    q, p, n = (t.to(torch.bfloat16).requires_grad_() for t in random_batch(seed=6))
    loss = info_nce(q, p, n)
    assert loss.dtype == torch.float32
    loss.backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()


def test_bad_input_is_a_clear_error():
    q, p, n = random_batch()
    with pytest.raises(SynthembedError, match="same shape"):
        info_nce(q, p[:3])
    with pytest.raises(SynthembedError, match="p_texts"):
        info_nce(q, p, p_texts=["a"])
    with pytest.raises(SynthembedError, match="in_batch_negatives has 2 flags for a batch of 6"):
        info_nce(q, p, in_batch_negatives=[True, False])
    with pytest.raises(SynthembedError, match="temperature"):
        similarity_logits(q, p, temperature=0.0)
    with pytest.raises(SynthembedError, match="positives"):
        CachedInfoNCE(lambda t: q[: len(t)]).step(["a", "b"], ["c"])


def test_text_ids_mark_equal_texts_and_missing_ones():
    # (blake2b, not the per-process salted hash(): the two-process test below relies on ids agreeing across ranks)
    ids = text_ids(["a", "b", "a", None])
    assert ids[0] == ids[2] and ids[0] != ids[1] and ids[3] == -1 and (ids[:3] >= 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# GradCache on a real model: the packaged MiniLM in float64 with dropout on.


@pytest.fixture(scope="module")
def minilm_encoder(minilm):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm, dtype=torch.float64)
    # Two of its six layers and a frozen word-embedding table keep this fast on 2 CPU cores; the architecture, weights
    # and dropout are the real model's.
    model.encoder.layer = model.encoder.layer[:2]
    model.embeddings.word_embeddings.weight.requires_grad_(False)
    model.train()  # dropout ON: the replay must reproduce the masks
    return model, tokenizer


def mean_pool_embed_fn(model, tokenizer, max_len=16):
    from synthembed.pooling import pool

    def embed(texts):
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # (b, T, D)
        return F.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1)  # (b, D)

    return embed


# Lengths vary within each group, so sorting by length really reorders the texts (checked below).
QUERIES = [f"Instruct: find the answer\nQuery: question {i} on topic {i % 3}" + " in detail" * (5 * i % 3) for i in range(8)]
POSITIVES = [f"passage {i} answering topic {i % 3}" + " at length" * (i % 4) for i in range(8)]
POSITIVES[7] = POSITIVES[2]  # a duplicate positive
NEGATIVES = [f"an unrelated passage {i}" if i % 4 else None for i in range(8)]  # some groups lack a negative


def test_fixture_texts_are_not_already_sorted_by_length():
    for texts in (QUERIES, POSITIVES):
        assert sorted(range(8), key=lambda i: len(texts[i])) != list(range(8))


def full_batch_grads(model, embed_fn, mini_batch_size, negatives, seed, in_batch_negatives=True, sort=False):
    """Reference: the same forward passes as the cache's first pass (same order, same RNG), all kept in one graph.
    With `sort`, each group is embedded shortest text first, as the cache does by default, and put back in order."""
    torch.manual_seed(seed)
    model.zero_grad()

    def embed_group(texts):
        order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if sort else list(range(len(texts)))
        ordered = [texts[i] for i in order]
        reps = torch.cat([embed_fn(ordered[i : i + mini_batch_size]) for i in range(0, len(texts), mini_batch_size)])
        return reps.new_empty(reps.shape).index_copy(0, torch.tensor(order), reps)  # (B, D) in batch order

    q = embed_group(QUERIES)
    p = embed_group(POSITIVES)
    n = None
    if negatives is not None:
        present = [i for i, t in enumerate(negatives) if t is not None]
        n_present = embed_group([negatives[i] for i in present])
        n = q.new_zeros(q.shape).index_copy(0, torch.tensor(present), n_present)
    loss = info_nce(
        q,
        p,
        n,
        q_texts=QUERIES,
        p_texts=POSITIVES,
        n_texts=negatives,
        in_batch_negatives=in_batch_negatives,
    )
    loss.backward()
    return loss.item(), {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}


def cached_grads(model, embed_fn, mini_batch_size, negatives, seed, in_batch_negatives=True, sort=False):
    torch.manual_seed(seed)
    model.zero_grad()
    cached = CachedInfoNCE(
        embed_fn, mini_batch_size=mini_batch_size, in_batch_negatives=in_batch_negatives, sort_by_length=sort
    )
    loss = cached.step(QUERIES, POSITIVES, negatives)
    return loss, {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}


def assert_same(a, b, tol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, abs=tol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=tol, rtol=0, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("sort", [False, True], ids=["batch-order", "sorted-by-length"])
def test_cached_loss_and_gradients_equal_full_batch_with_dropout(minilm_encoder, sort):
    model, tokenizer = minilm_encoder
    embed_fn = mean_pool_embed_fn(model, tokenizer)
    # Dropout really is on: the same text embeds differently under different random states.
    torch.manual_seed(0)
    first = embed_fn(QUERIES[:1])
    assert not torch.allclose(first, embed_fn(QUERIES[:1]))
    full = full_batch_grads(model, embed_fn, 3, NEGATIVES, seed=11, sort=sort)
    after_full = torch.rand(1)
    cached = cached_grads(model, embed_fn, 3, NEGATIVES, seed=11, sort=sort)
    assert_same(full, cached)
    # the random state is left where the plain forward passes would have left it
    assert torch.equal(after_full, torch.rand(1))


@pytest.mark.slow
def test_one_mini_batch_equals_full_batch_with_dropout(minilm_encoder):
    """The plain loss is the cached loss with one mini-batch: the same dropout masks, loss, gradients and final random
    state as one forward per group in batch order."""
    model, tokenizer = minilm_encoder
    embed_fn = mean_pool_embed_fn(model, tokenizer)
    full = full_batch_grads(model, embed_fn, len(QUERIES), NEGATIVES, seed=5)
    after_full = torch.rand(1)
    one = cached_grads(model, embed_fn, len(QUERIES), NEGATIVES, seed=5, sort=True)  # one mini-batch: nothing sorted
    assert_same(full, one, tol=1e-12)
    assert torch.equal(after_full, torch.rand(1))


@pytest.mark.slow
def test_cached_equals_one_full_forward_without_dropout(minilm_encoder):
    """Without dropout neither the mini-batch size nor the order of embedding can matter: length-sorted chunks of 3 ==
    one forward pass of everything in batch order (no hard negatives, in-batch negatives only)."""
    model, tokenizer = minilm_encoder
    model.eval()
    try:
        embed_fn = mean_pool_embed_fn(model, tokenizer)
        full = full_batch_grads(model, embed_fn, len(QUERIES), None, seed=0)
        cached = cached_grads(model, embed_fn, 3, None, seed=0, sort=True)
        assert_same(full, cached)
    finally:
        model.train()


@pytest.mark.slow
def test_cached_equals_full_batch_on_a_decoder_with_last_token_pooling(tiny_mistral):
    """The decoder-only path: our Embedder's tokenization (EOS appended) and last-token pooling, in float64."""
    from synthembed.model import load_embedder
    from synthembed.pooling import pool

    overrides = {"attention_dropout": 0.1}  # something random to replay
    emb = load_embedder(str(tiny_mistral), device="cpu", dtype=torch.float64, max_len=32, config_overrides=overrides)
    emb.model.train()

    def embed_fn(texts):
        batch = emb.tokenize(texts)
        emb.check_eos(batch)
        hidden = emb.model(**batch).last_hidden_state  # (b, T, D)
        return F.normalize(pool(hidden, batch["attention_mask"], emb.pooling), dim=-1)  # (b, D)

    assert emb.pooling == "last"
    torch.manual_seed(0)
    assert not torch.allclose(embed_fn(QUERIES[:2]), embed_fn(QUERIES[:2]))  # dropout is on
    # in-batch negatives off (the long-short setting): each query against its own positive and hard negative
    full = full_batch_grads(emb.model, embed_fn, 3, NEGATIVES, seed=3, in_batch_negatives=False)
    cached = cached_grads(emb.model, embed_fn, 3, NEGATIVES, seed=3, in_batch_negatives=False)
    assert_same(full, cached)
    full = full_batch_grads(emb.model, embed_fn, 3, NEGATIVES, seed=3, in_batch_negatives=False, sort=True)
    cached = cached_grads(emb.model, embed_fn, 3, NEGATIVES, seed=3, in_batch_negatives=False, sort=True)
    assert_same(full, cached)


def test_no_sync_is_entered_for_all_but_the_last_backward():
    enc = torch.nn.Linear(4, 3).double()
    table = {t: torch.randn(4, dtype=torch.float64) for t in "abcdefgh"}
    entered = []

    class Recorder:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    cached = CachedInfoNCE(lambda ts: enc(torch.stack([table[t] for t in ts])), mini_batch_size=2, no_sync=Recorder)
    cached.step(list("abcd"), list("efgh"))  # 2 query chunks + 2 positive chunks = 4 backwards
    assert len(entered) == 3


def test_one_mini_batch_is_the_plain_loss_with_one_backward():
    """With the whole batch in one mini-batch the cached loss is the plain one: each group embedded once with its
    graph, `info_nce` of the batch, and the given `backward` run once on it (what DeepSpeed's engine needs)."""
    enc = torch.nn.Linear(4, 3).double()
    table = {t: torch.randn(4, dtype=torch.float64) for t in "abcdefgh"}
    embed = lambda ts: enc(torch.stack([table[t] for t in ts]))  # noqa: E731
    calls, entered = [], []
    queries, positives, negatives = list("abc"), list("def"), ["g", None, "h"]

    class Recorder:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    def backward(loss):
        calls.append(float(loss.detach()))
        loss.backward()

    loss = CachedInfoNCE(embed, mini_batch_size=3, no_sync=Recorder, backward=backward).step(queries, positives, negatives)
    got = [w.grad.clone() for w in enc.parameters()]
    assert len(calls) == 1 and not entered  # one backward, no DDP sync juggling
    enc.zero_grad()
    n = torch.zeros(3, 3, dtype=torch.float64).index_copy(0, torch.tensor([0, 2]), embed(["g", "h"]))
    want = info_nce(embed(queries), embed(positives), n, q_texts=queries, p_texts=positives, n_texts=negatives)
    want.backward()
    assert loss == pytest.approx(want.item(), abs=1e-12)
    for g, w in zip(got, (w.grad for w in enc.parameters()), strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    # one mini-batch smaller than the batch takes the cached path: the same numbers, and `backward` is not used
    enc.zero_grad()
    cached = CachedInfoNCE(embed, mini_batch_size=2, backward=backward).step(queries, positives, negatives)
    assert cached == pytest.approx(want.item(), abs=1e-12) and len(calls) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Two processes (gloo, CPU) against the single-process full batch.


def _features(texts, dim=6):
    """A fixed random vector per text, the same in every process."""
    rows = []
    for t in texts:
        g = torch.Generator().manual_seed(int(text_ids([t]).item()) % (2**31))
        rows.append(torch.randn(dim, generator=g, dtype=torch.float64))
    return torch.stack(rows)  # (b, dim)


def _dist_worker(rank, world_size, init_file, batch):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        queries, positives, negatives = batch
        torch.manual_seed(0)
        enc = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double()
        embed = lambda ts: enc(_features(ts))  # noqa: E731
        grads = lambda: [p.grad.clone() for p in enc.parameters()]  # noqa: E731

        def ddp_average():  # what DDP does to the gradients after backward
            for param in enc.parameters():
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad /= world_size

        # Single-process reference: the whole batch, no gather.
        enc.zero_grad()
        ref = info_nce(embed(queries), embed(positives), embed([t or "" for t in negatives]), q_texts=queries,
                       p_texts=positives, n_texts=negatives)  # fmt: skip
        ref.backward()
        ref_grads = grads()

        # Uneven shards (5 and 3) so the gather's padding is exercised; duplicates straddle the ranks.
        cut = 5
        mine = slice(0, cut) if rank == 0 else slice(cut, None)
        q, p, n = queries[mine], positives[mine], negatives[mine]

        enc.zero_grad()
        loss = info_nce(embed(q), embed(p), embed([t or "" for t in n]), q_texts=q, p_texts=p, n_texts=n, gather=True)
        loss.backward()
        ddp_average()
        assert loss.item() == pytest.approx(ref.item(), abs=1e-10)
        for got, want in zip(grads(), ref_grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)

        enc.zero_grad()
        value = CachedInfoNCE(embed, mini_batch_size=2, gather=True).step(q, p, n)
        ddp_average()
        assert value == pytest.approx(ref.item(), abs=1e-10)
        for got, want in zip(grads(), ref_grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)

        # One flag per query (long-short rows switch in-batch negatives off), split across the ranks like the rows.
        flags = [i % 3 != 1 for i in range(len(queries))]
        enc.zero_grad()
        ref_flags = info_nce(embed(queries), embed(positives), embed([t or "" for t in negatives]), q_texts=queries,
                             p_texts=positives, n_texts=negatives, in_batch_negatives=flags)  # fmt: skip
        ref_flags.backward()
        ref_flag_grads = grads()
        assert ref_flags.item() != pytest.approx(ref.item())
        enc.zero_grad()
        value = CachedInfoNCE(embed, mini_batch_size=2, gather=True).step(q, p, n, in_batch_negatives=flags[mine])
        ddp_average()
        assert value == pytest.approx(ref_flags.item(), abs=1e-10)
        for got, want in zip(grads(), ref_flag_grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)

        # Gathering really adds the other rank's examples: a local loss is a different number.
        assert info_nce(embed(q), embed(p), embed([t or "" for t in n]), q_texts=q, p_texts=p, n_texts=n).item() != (
            pytest.approx(ref.item())
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_across_two_processes_equals_single_process_full_batch(tmp_path):
    import torch.multiprocessing as mp

    queries = [f"q{i}" for i in range(8)]
    queries[6] = queries[1]  # the same query on both ranks
    positives = [f"p{i}" for i in range(8)]
    positives[7] = positives[0]  # a duplicate positive across ranks
    negatives = [f"n{i}" for i in range(8)]
    negatives[2] = positives[5]  # rank 0's negative is rank 1's positive
    negatives[4] = None  # one group without a hard negative
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), (queries, positives, negatives)), nprocs=2, join=True)
