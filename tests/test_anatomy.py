"""The method at work on four pairs (training/anatomy.py): what it reports is what training computes.

The loss it shows must equal a hand computation from the vectors it returns (cross-entropy over cosine / 0.02 with
in-batch and hard negatives) and the loss the training loop's CachedInfoNCE returns for the same batch; the queries
must read `Instruct: {task}\\nQuery: {query}`; the pooled token must be the appended EOS, for the tiny Mistral and
(where fetched) the real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from synthembed.errors import SynthembedError
from synthembed.losses import CachedInfoNCE
from synthembed.training.anatomy import method_at_work, pick_pairs, split_query
from synthembed.training.data import TrainingPair

TASK = "Given a scientific claim, retrieve documents that support or refute the claim"
QUERIES = [
    "Aspirin reduces the risk of colorectal cancer.",
    "ALDH1 expression is associated with poorer prognosis in breast cancer.",
    "Vitamin D deficiency raises the risk of hip fracture.",
    "Nanomaterials induce bone formation around implants.",
]
POSITIVES = [
    "Daily aspirin lowered colorectal cancer incidence in long-term follow-up of randomised trials.",
    "ALDH1 marks breast cancer stem cells, and its expression predicts poor clinical outcome.",
    "Low serum 25-hydroxyvitamin D correlates with hip fractures in older adults.",
    "Calcium phosphate nanoparticles promoted osteogenesis in a rabbit implant model.",
]
NEGATIVES = [
    "Ibuprofen is a non-steroidal anti-inflammatory drug used for pain.",
    "ALDH2 variants slow alcohol metabolism in East Asian populations.",
    "Calcium intake in children varies widely between countries.",
    "Graphene sheets conduct electricity with little resistance.",
]


def hand_loss(seen, temperature: float = 0.02) -> torch.Tensor:
    """InfoNCE written out from the returned vectors: each query's softmax over every positive and hard negative."""
    q = seen.q_reps.double() / seen.q_reps.double().norm(dim=-1, keepdim=True)
    docs = torch.cat([seen.p_reps, seen.n_reps]).double()
    docs = docs / docs.norm(dim=-1, keepdim=True)
    return F.cross_entropy(q @ docs.T / temperature, torch.arange(len(q)))


def training_loss(emb, queries, positives, negatives, mini_batch_size: int) -> float:
    """The loss of one training step on this batch, through the loop's own embed function and CachedInfoNCE."""
    from synthembed.training.loop import _CountingEmbed

    emb.model.eval()  # as method_at_work runs it: no dropout, so both see the same vectors
    loss = CachedInfoNCE(_CountingEmbed(emb, contextlib.nullcontext), mini_batch_size=mini_batch_size)
    value = loss.step(queries, positives, negatives)
    emb.model.zero_grad(set_to_none=True)
    return value


def check_method(emb, mini_batch_sizes: tuple[int, ...]) -> None:
    seen = method_at_work(emb, TASK, QUERIES, POSITIVES, NEGATIVES)
    # the paper's query format, written out here rather than through data.format_query
    assert seen.queries == [f"Instruct: {TASK}\nQuery: {q}" for q in QUERIES]
    assert seen.positives == POSITIVES and seen.negatives == NEGATIVES  # documents stay plain
    eos = emb.tokenizer.eos_token
    assert seen.eos_token == eos
    assert all(tokens[-1] == eos for tokens in seen.tokens)  # the last token of every text
    assert seen.pooled_tokens == [eos] * 12  # and the one whose state is the embedding
    texts = seen.queries + POSITIVES + NEGATIVES
    assert seen.tokens == [emb.tokenizer.convert_ids_to_tokens(ids) for ids in emb.token_ids(texts)]

    n = len(QUERIES)
    assert seen.cosine.shape == seen.logits.shape == (n, 2 * n)
    assert torch.allclose(seen.logits, seen.cosine / 0.02, atol=1e-4)
    assert seen.loss == pytest.approx(float(hand_loss(seen)), rel=1e-5, abs=1e-6)
    # the softmax shown per row is the loss's: its mean negative log-probability of the positives is the loss
    assert float(-seen.probabilities.diagonal().log().mean()) == pytest.approx(seen.loss, rel=1e-5, abs=1e-6)
    instructed = seen.queries
    for mini_batch_size in mini_batch_sizes:  # n: the plain loss (one mini-batch); 2: the cached one (GradCache)
        assert training_loss(emb, instructed, POSITIVES, NEGATIVES, mini_batch_size) == pytest.approx(
            seen.loss, rel=1e-5, abs=1e-6
        )
    tables = seen.tables()
    assert list(tables["logits"].columns) == [f"p{i}" for i in range(1, 5)] + [f"n{i}" for i in range(1, 5)] + [
        "p(positive)"
    ]
    assert tables["tokens"]["pooled is EOS"].all()


def test_method_at_work_on_the_tiny_mistral_is_the_training_loss(tiny_mistral):
    from synthembed.model import load_embedder

    emb = load_embedder(str(tiny_mistral), device="cpu", max_len=64)
    # its tokenizer does not add EOS (as Mistral's does not): the EOS the method pools at is the one we append
    assert emb.tokenizer(QUERIES[0])["input_ids"][-1] != emb.tokenizer.eos_token_id
    check_method(emb, mini_batch_sizes=(4, 2))
    emb.model.train()
    method_at_work(emb, TASK, QUERIES, POSITIVES, NEGATIVES)
    assert emb.model.training  # left as it was found


@pytest.mark.slow
def test_method_at_work_on_smollm2_pools_at_its_eos():
    from synthembed.model import load_embedder
    from synthembed.paths import local_model

    try:
        path = local_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    except SynthembedError as err:
        pytest.skip(str(err))
    emb = load_embedder(str(path), device="cpu", max_len=48)
    assert emb.tokenizer.eos_token == "<|im_end|>"
    check_method(emb, mini_batch_sizes=(2,))  # the cached path; the tiny Mistral covers the plain one


def test_repeated_texts_are_refused_since_the_loss_would_mask_them(tiny_mistral):
    with pytest.raises(SynthembedError, match="must not repeat"):
        method_at_work(str(tiny_mistral), TASK, QUERIES, POSITIVES, [POSITIVES[1], *NEGATIVES[1:]], device="cpu")
    with pytest.raises(SynthembedError, match="must not repeat"):
        method_at_work(str(tiny_mistral), TASK, [QUERIES[0]] * 4, POSITIVES, NEGATIVES, device="cpu")


def pair(query: str, positive: str, negative: str | None, task: str | None = TASK) -> TrainingPair:
    text = f"Instruct: {task}\nQuery: {query}" if task else query
    return TrainingPair(query=text, positive=positive, negative=negative, instructed=bool(task))


def test_pick_pairs_takes_the_commonest_instruction_and_skips_repeats():
    other = "Given a question, retrieve answers"
    pairs = [
        pair("a question", "an answer", "a wrong answer", task=other),
        pair(QUERIES[0], POSITIVES[0], None),  # no hard negative
        pair(QUERIES[0], POSITIVES[0], NEGATIVES[0]),
        pair(QUERIES[0], POSITIVES[1], NEGATIVES[1]),  # the same query again (another relevant document)
        pair(QUERIES[1], POSITIVES[0], NEGATIVES[1]),  # a positive already taken
        pair(QUERIES[1], POSITIVES[1], NEGATIVES[1]),
        pair(QUERIES[2], POSITIVES[2], NEGATIVES[2]),
        pair(QUERIES[3], POSITIVES[3], NEGATIVES[3]),
    ]
    assert pick_pairs(pairs, n=4) == (TASK, QUERIES, POSITIVES, NEGATIVES)
    assert pick_pairs(pairs, n=1) == (TASK, QUERIES[:1], POSITIVES[:1], NEGATIVES[:1])  # the commonest instruction
    assert pick_pairs(pairs[:1], n=1) == (other, ["a question"], ["an answer"], ["a wrong answer"])
    # the commonest instruction has only 3 usable pairs: the next one is tried
    extra = [pair(f"question {i}", f"answer {i}", f"wrong {i}", task=other) for i in range(3)]
    assert pick_pairs(pairs[:-1] + extra, n=4)[0] == other
    assert pick_pairs([pair(q, p, n, task=None) for q, p, n in zip(QUERIES, POSITIVES, NEGATIVES, strict=True)]) == (
        None, QUERIES, POSITIVES, NEGATIVES,
    )  # fmt: skip
    with pytest.raises(SynthembedError, match="no instruction has 4 training pairs"):
        pick_pairs(pairs[:-1], n=4)
    with pytest.raises(SynthembedError, match="no training pair has a hard negative"):
        pick_pairs([pair("q", "p", None)])


def test_split_query_inverts_the_query_format():
    assert split_query(f"Instruct: {TASK}\nQuery: {QUERIES[0]}") == (TASK, QUERIES[0])
    assert split_query("Query: not instructed") == (None, "Query: not instructed")
    assert split_query("Instruct: a task\nQuery: two\nQuery: parts") == ("a task", "two\nQuery: parts")
