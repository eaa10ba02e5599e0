"""Counting prompt tokens before anything is sent: for the plan's estimate (estimate.py) and for the input tokens a batch
file puts in the Batch API's queue (batch_files.py, batch_queue.py).

The plan's estimate counts with tiktoken's o200k_base (GPT-4o's vocabulary) where the package is installed and can load
its encoding (tiktoken fetches the file once into its own cache; offline and uncached, it cannot); else, and for batch
files always, one token per BYTES_PER_TOKEN UTF-8 bytes, which is close for English and counts too few in scripts that
take more tokens per byte.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

BYTES_PER_TOKEN = 4.0  # the rule of thumb for BPE vocabularies on English; more tokens per byte in other scripts
CHAT_TURN_TOKENS = 7  # a one-message chat's role and separator tokens, and the reply's priming


def _tiktoken_counter() -> Callable[[str], int] | None:
    """tiktoken's o200k_base counter where the package is installed and its encoding loads, else None."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("o200k_base")
    except Exception:  # not installed, or the encoding is not cached and the network is off
        return None
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def bytes_counter(text: str) -> int:
    """Tokens of `text` at one per BYTES_PER_TOKEN UTF-8 bytes.

    >>> bytes_counter("Given a question, retrieve")
    7
    """
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)


@functools.cache
def token_counter() -> tuple[Callable[[str], int], str]:
    """(count(text) -> tokens, its description): tiktoken where it can run offline, else `bytes_counter`."""
    counter = _tiktoken_counter()
    if counter is not None:
        return counter, "tiktoken o200k_base"
    return bytes_counter, f"UTF-8 bytes / {BYTES_PER_TOKEN:g}"


def prompt_tokens(messages: Iterable[Mapping[str, Any]], count: Callable[[str], int] | None = None) -> int:
    """The input tokens of one chat request: its messages' contents and a chat turn's overhead.

    >>> prompt_tokens([{"role": "user", "content": "x" * 40}], bytes_counter)
    17
    """
    count = count or token_counter()[0]
    return sum(count(str(m.get("content") or "")) for m in messages) + CHAT_TURN_TOKENS
