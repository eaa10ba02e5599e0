"""Pooling: from token hidden states to one vector per text.

    reps = pool(hidden, attention_mask, "last")   # (B, T, D), (B, T) -> (B, D)

`last` is the paper's (section 3.2: the last layer's hidden state at the appended EOS token). Every mode reads positions
from the attention mask, never from the padding side, so left- and right-padded batches give the same vectors.
"""

from __future__ import annotations

import torch

POOLING_MODES: tuple[str, ...] = ("last", "mean", "weighted-mean", "cls")


def check_pooling(mode: str) -> str:
    """Return `mode` if it is a known pooling mode; a ValueError listing the valid ones otherwise."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    return mode


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position per row, for either padding side. (B, T) -> (B,)"""
    B, T = attention_mask.shape
    positions = torch.arange(T, device=attention_mask.device).expand(B, T)  # (B, T)
    return (positions * attention_mask.long()).argmax(dim=1)  # (B,)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first attended position per row (left padding puts it after the pads). (B, T) -> (B,)"""
    return attention_mask.long().argmax(dim=1)  # argmax returns the first maximum


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool hidden states (B, T, D) under attention_mask (B, T) into (B, D).

    Args:
        hidden: the last layer's hidden states.
        attention_mask: 1 for real tokens, 0 for padding (either side).
        mode: "last" (hidden state of the last real token: the EOS), "mean" (average of real tokens),
            "weighted-mean" (position-weighted mean, weight i+1 for the i-th real token, as in SGPT, so later tokens
            that have seen more context count more), or "cls" (the first real token).
    """
    check_pooling(mode)
    mask = attention_mask.to(hidden.dtype)  # (B, T)
    rows = torch.arange(hidden.size(0), device=hidden.device)
    if mode == "last":
        return hidden[rows, last_token_index(attention_mask)]  # (B, D)
    if mode == "cls":
        return hidden[rows, first_token_index(attention_mask)]  # (B, D)
    if mode == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)  # (B, D)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
    # weighted-mean: rank of each real token among the row's real tokens, counted from 1
    weights = torch.cumsum(mask, dim=1) * mask  # (B, T)
    summed = (hidden * weights.unsqueeze(-1)).sum(dim=1)  # (B, D)
    return summed / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
