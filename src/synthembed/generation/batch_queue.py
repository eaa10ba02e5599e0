"""The Batch API's enqueued-token limit, kept on the client's side.

OpenAI caps the input tokens of an organization's batches that wait or run, per model (the "batch queue limit": 2M
tokens for gpt-4o-mini at the lowest usage tier, billions at the highest). batches.create accepts a batch over it; the
batch then fails validation, with nothing run or billed, and the error

    token_limit_exceeded: Enqueued token limit reached for gpt-4o-mini in organization org-... Limit: 2,000,000
    enqueued tokens. Please try again once some in_progress batches have been completed.

At the paper's scale (522k requests, about 100M prompt tokens: `generate --plan-only`) the lower tiers meet it, and a
run's 64 batches of 10,000 requests in flight hold about 128M. So a refused batch is
not a failure of its lines: the same uploaded file is submitted again once there is room (batch_jobs.BatchJobs.wait),
and `EnqueuedTokens` decides when that is. It keeps the estimated input tokens (tokens.prompt_tokens, counted as each
file is written) of the run's batches in flight, and lets a batch go while nothing else of the run is in flight, or
while the sum with it stays within `cap`:
- the limit given (`--enqueued-token-limit`; files are then written at FILE_SHARE of it, so that several are in flight
  and one ends while the others run);
- the limit a refusal names (and batches.json keeps it, so a rerun writes its new files under it);
- less, where a refusal came although the estimate said it fit (other batches of the organization, or a tokenizer that
  counts more than the estimate): the cap drops below what was in flight then plus the refused batch, and rises again
  by a quarter of a file each time an accepted batch ends.
A batch the run stops watching (given up after API failures, or cancelled) no longer counts: nothing would see it end.

A batch refused with nothing else of the run in flight waits `retry_interval` seconds, doubling (at most MAX_WAIT); after
ALONE_TRIES such refusals the run stops with a message (a rerun goes on from there): other batches of the organization
fill the queue. A file whose estimate alone is over the limit the refusal names stops the run at once: the rerun knows
the limit (batches.json) and writes the requests of the files not yet submitted that are over FILE_SHARE of it anew, in
smaller files (BatchJobs.rewrite_over_cap).
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

from ..errors import SynthembedError
from .tokens import BYTES_PER_TOKEN

REFUSAL_CODE = "token_limit_exceeded"
FILE_SHARE = 0.25  # a batch file's estimated input tokens, as a share of a known enqueued-token limit
ALONE_TRIES = 5  # refusals with nothing else of the run in flight before the run stops (waits of 1, 2, 4, 8 x interval)
MAX_WAIT = 600.0  # seconds between tries of a batch refused with nothing else in flight, at most
_NAMED_LIMIT = re.compile(r"limit:\s*([\d,_]+)\s*enqueued tokens", re.IGNORECASE)


def queue_refusal(batch: Any) -> str | None:
    """The message of a batch refused for the enqueued-token limit ("failed" with code token_limit_exceeded), else
    None."""
    if getattr(batch, "status", None) != "failed":
        return None
    for error in getattr(batch.errors, "data", None) or []:
        if getattr(error, "code", None) == REFUSAL_CODE:
            return getattr(error, "message", None) or REFUSAL_CODE
    return None


def named_limit(message: str) -> int | None:
    """The limit a refusal's message names, in tokens.

    >>> named_limit("Enqueued token limit reached for gpt-4o in organization org-x. Limit: 90,000 enqueued tokens.")
    90000
    >>> named_limit("token_limit_exceeded") is None
    True
    """
    found = _NAMED_LIMIT.search(message or "")
    return int(re.sub(r"[,_]", "", found.group(1))) if found else None


def file_tokens(entry: dict[str, Any]) -> int:
    """A batch file's estimated input tokens: as counted when it was written, or for a file of a run from before they
    were counted, its bytes at BYTES_PER_TOKEN (more than its prompts alone: its JSON counts too)."""
    counted = entry.get("input_tokens")
    return int(counted) if counted is not None else math.ceil(entry.get("bytes", 0) / BYTES_PER_TOKEN)


def file_token_cap(limit: int | None) -> int | None:
    """The estimated input tokens one batch file is written with at most, under an enqueued-token limit."""
    return None if limit is None else max(1, int(limit * FILE_SHARE))


class EnqueuedTokens:
    """The run's batches in flight and the cap on their estimated input tokens (module doc). `limit` is the one given,
    None while unknown; `retry_interval` the first wait of a batch refused with nothing else in flight.

    The cap is the smaller of the limit (given or named by a refusal) and `learned`: what a refusal showed to be too
    much, lowered at each refusal and raised by a quarter of a file at each batch that ends after being accepted (load
    the run cannot see, the organization's other batches, comes and goes), until it reaches the limit again.
    """

    def __init__(self, limit: int | None = None, retry_interval: float = 30.0):
        if limit is not None and int(limit) < 1:
            raise SynthembedError(f"--enqueued-token-limit must be a positive number of tokens, not {limit!r}")
        self.given = None if limit is None else int(limit)
        self.named: int | None = None  # the limit a refusal named
        self.learned: int | None = None
        self.retry_interval = retry_interval
        self.in_flight: dict[int, int] = {}  # batch file number -> its estimated input tokens
        self._wake: asyncio.Event | None = None  # set (and replaced) whenever room may have been made

    @property
    def limit(self) -> int | None:
        """The enqueued-token limit: the one given, or the one a refusal named, the smaller where both are known."""
        known = [x for x in (self.given, self.named) if x]
        return min(known) if known else None

    @property
    def cap(self) -> int | None:
        known = [x for x in (self.limit, self.learned) if x]
        return min(known) if known else None

    def fits(self, tokens: int) -> bool:
        """Whether a batch of `tokens` may go now."""
        cap = self.cap
        return not self.in_flight or cap is None or sum(self.in_flight.values()) + tokens <= cap

    async def room_for(self, n: int, tokens: int) -> None:
        """Wait until batch file `n` fits, then count it as in flight (before its batches.create: the next one to ask
        sees it)."""
        self.in_flight.pop(n, None)  # never counted against itself
        while not self.fits(tokens):
            if self._wake is None:
                self._wake = asyncio.Event()
            await self._wake.wait()
        self.in_flight[n] = tokens

    def running(self, n: int, tokens: int) -> None:
        """Batch file `n` is in flight (a batch of an earlier session, found running)."""
        self.in_flight[n] = tokens

    def ended(self, n: int, accepted: bool = False) -> None:
        """Batch file `n` is no longer in flight (`accepted`: it ran; else it was given up, or refused): the batches
        waiting for room look again."""
        tokens = self.in_flight.pop(n, None)
        if tokens is None:
            return
        if accepted and self.learned is not None:
            self.learned += max(1, tokens // 4)
            if self.limit is not None and self.learned >= self.limit:
                self.learned = None
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def refused(self, n: int, tokens: int, message: str, alone_before: int) -> float | None:
        """Batch file `n` was refused for the limit (`message`, the API's words). The cap learns from it. Returns how
        many seconds to wait before it goes again where nothing else of the run is in flight (its `alone_before`-th
        such refusal before this one), or None where it is to wait for room instead."""
        self.ended(n)
        named = named_limit(message)
        if named is not None:
            self.named = named
        others = sum(self.in_flight.values())
        if others:
            # What was in flight fit and this did not: it waits until the sum with it is below that.
            learned = others + tokens - 1
            self.learned = learned if self.learned is None else min(self.learned, learned)
            return None
        return min(MAX_WAIT, self.retry_interval * 2**alone_before)
