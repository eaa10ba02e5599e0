"""Faults at the level of bytes on the socket, for the loopback stand-in (loopback.py): what a broken proxy, a flaky
network or a careless endpoint sends instead of a well-formed chat completion.

- garbage: a 200 whose body is random bytes;
- reset: the status line, headers and half the body, then a TCP reset;
- trickle: the whole good answer, a few bytes at a time, over `trickle_seconds` (a client whose timeout is per socket
  read never gives up on it; one with a deadline per request does);
- huge: a 200 of several MB, a runaway answer cut at the token limit (finish_reason "length");
- bad_utf8: the good answer with bytes that are not UTF-8 inside its text;
- lone_surrogate: the good answer with a lone UTF-16 surrogate (the JSON escape \\ud800) inside its text;
- unauthorized: a 401 whose error message echoes the Authorization header, key and all.

Each is drawn like a transport fault (loopback.Faults), on a request's first attempt only, so a retry gets the good
answer. The server logs every attempt as a `Served` record: which request, which fault, and whether the whole reply
reached the client; the reliability suite (tests/test_reliability_suite.py) checks a run directory against that log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

RAW_FAULTS = ("garbage", "reset", "trickle", "huge", "bad_utf8", "lone_surrogate", "unauthorized")
# What arrives intact despite its fault: a trickled answer that the client waited for is the good answer.
INTACT = ("ok", "trickle")


def request_key(model: str, messages: Any, seed: int | None) -> str:
    """The stand-in's identity of a request: what it draws faults by and counts attempts of."""
    return hashlib.sha256(json.dumps([model, messages, seed], sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def prompt_sha256(messages: Any) -> str:
    """The sha256 that an example records as meta.prompt_sha256 (prompts.Prompt.sha256), from the request's messages."""
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Served:
    """One attempt the server answered: the request (its cache-independent key, stage "brainstorm", "generate" or
    "chat", the prompt's sha256, the seed), what it got ("ok" or a fault's name), and whether all of it was sent."""

    key: str
    kind: str
    prompt_sha256: str
    seed: int | None
    outcome: str = "ok"
    delivered: bool = False
    content_fault: str | None = None  # loopback's CONTENT_FAULTS: the answer itself is bad, on every attempt

    @property
    def good(self) -> bool:
        """The good answer reached the client: whatever the client does next, it has it."""
        return self.delivered and self.outcome in INTACT and self.content_fault is None


@dataclass
class RawReply:
    """A chat reply as bytes, with the raw fault it is sent with (None: sent as it is) and its log record."""

    body: bytes
    fault: str | None
    served: Served


def faulty_body(fault: str, completion: dict[str, Any], headers: dict[str, str], rng: random.Random,
                huge_bytes: int) -> tuple[int, bytes]:  # fmt: skip
    """(status, body) of `fault` for the good `completion`; the transport-level ones (reset, trickle) keep the body."""
    good = json.dumps(completion, ensure_ascii=False).encode("utf-8")
    if fault == "garbage":
        return 200, bytes(rng.getrandbits(8) for _ in range(rng.randint(64, 2048)))
    if fault == "huge":
        words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
        text = " ".join(rng.choice(words) for _ in range(huge_bytes // 5))[:huge_bytes]
        message = completion["choices"][0]["message"]
        runaway = {**completion, "choices": [{**completion["choices"][0], "finish_reason": "length",
                                              "message": {**message, "content": text}}]}  # fmt: skip
        return 200, json.dumps(runaway).encode("utf-8")
    if fault == "bad_utf8":
        return 200, good.replace(b'"content": "', b'"content": "\xff\xfe\xc3(', 1)
    if fault == "lone_surrogate":
        content = completion["choices"][0]["message"]["content"] or ""
        at = re.search(r'(": "|\[\s*")', content)  # inside the first string value: a character of the text
        spot = at.end() if at else 0
        broken = {**completion}
        broken["choices"] = [
            {
                **completion["choices"][0],
                "message": {
                    **completion["choices"][0]["message"],
                    "content": content[:spot] + chr(0xD800) + content[spot:],
                },
            }
        ]
        return 200, json.dumps(broken, ensure_ascii=True).encode("ascii")  # the surrogate as the escape \ud800
    if fault == "unauthorized":
        auth = headers.get("authorization", "")
        key = auth.split(" ", 1)[-1]
        message = (f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com. "
                   f"(received header Authorization: {auth})")  # fmt: skip
        error = {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        }
        return 401, json.dumps(error).encode("utf-8")
    return 200, good  # reset, trickle: the good body, sent badly


async def send(writer: asyncio.StreamWriter, head: bytes, reply: RawReply, trickle_seconds: float) -> bool:
    """Send `head` and `reply.body` as `reply.fault` says; True when the whole reply went out and the connection may
    serve the next request, False when it was cut (by us: reset; or by the client, which gave up)."""
    try:
        if reply.fault == "reset":
            writer.write(head + reply.body[: len(reply.body) // 2])
            await writer.drain()
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: close() sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if reply.fault == "trickle":
            writer.write(head)
            await writer.drain()
            pieces = max(1, min(len(reply.body), 100))
            step = -(-len(reply.body) // pieces)
            for start in range(0, len(reply.body), step):
                await asyncio.sleep(trickle_seconds / pieces)
                if writer.transport.is_closing():
                    return False  # the client hung up: it gave up on this answer
                writer.write(reply.body[start : start + step])
                await writer.drain()
        else:
            writer.write(head + reply.body)
            await writer.drain()
    except (ConnectionError, OSError):
        return False
    reply.served.delivered = not writer.transport.is_closing()
    return reply.served.delivered
