"""Generation survives what real endpoints send (issue 11): a lone UTF-16 surrogate in a reply, a 200 whose body is not
a chat completion, a long Retry-After, control characters in a text, an API key echoed in an error body; and a cost
budget that could never stop the run is refused before anything is sent."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthembed.errors import SynthembedError
from synthembed.generation.backends import OpenAIBackend
from synthembed.generation.cache import ResponseCache
from synthembed.generation.cost import load_prices
from synthembed.generation.llm import MAX_RETRY_AFTER, ChatRequest, ChatResponse, LLMClient, LLMError, RetryableError
from synthembed.generation.parsing import REASONS, judge, parse_task_list, validate_example
from synthembed.generation.pipeline import check_budget, generate
from synthembed.generation.plan import GenerateConfig
from synthembed.study import _SECRET

LONE = chr(0xD800)  # what json.loads('"\\ud800"') gives: valid in a Python str, not encodable as UTF-8
KEY = "sk-proj-Zx81Qw7Lm2Vb5Nc4"


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest("gpt-4o-mini", ({"role": "user", "content": f"q{i}"},)) for i in range(n)]


class _Backend:
    """Answers with `text`, after raising each of `errors` once; records the requests it was sent."""

    name = "scripted"
    batch_size = 1
    concurrency = 1

    def __init__(self, text: str = "answer", errors: list[Exception] | None = None):
        self.text = text
        self.errors = list(errors or [])
        self.sent: list[ChatRequest] = []

    async def complete(self, requests):
        if self.errors:
            raise self.errors.pop(0)
        self.sent += requests
        return [ChatResponse(self.text, "stop", None, 10, 10, r.model) for r in requests]


# --- 1. lone surrogates ---------------------------------------------------------------------------------------------


def test_a_lone_surrogate_reply_is_cached_and_a_rerun_reads_it_back(tmp_path):
    path = tmp_path / "cache.sqlite"
    first = LLMClient(_Backend(f"before {LONE} after"), cache=ResponseCache(path))
    [answer] = first.run(_requests(1))  # crashed in the cache write (UnicodeEncodeError) before the fix
    assert answer.text == "before \ufffd after"
    rerun_backend = _Backend("never sent")
    [again] = LLMClient(rerun_backend, cache=ResponseCache(path)).run(_requests(1))
    assert again.cached and again.text == "before \ufffd after" and rerun_backend.sent == []
    # a pair split into two code points is joined back into its character, not replaced
    assert ChatResponse("\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16")).text == "\U0001F600"
    assert ChatResponse(chr(0xD83D) + chr(0xDE00)).text == "\U0001F600"


def test_a_lone_surrogate_inside_the_json_is_rejected_or_cleaned_never_written_raw():
    reply = json.dumps({"S1": "Ein Satz auf Deutsch " + LONE, "S2": "Ein zweiter Satz", "S3": "Ein dritter Satz"})
    verdict = judge("sts", reply, "stop", None, {"language": "German"}, 0)  # reply holds the escape "\ud800"
    assert verdict[:2] == ("reject", "invalid_text") and "U+D800" in verdict[2]
    tasks = parse_task_list(json.dumps(["Retrieve evidence for a claim " + LONE, "Classify a review."]))
    assert tasks == ["Retrieve evidence for a claim \ufffd", "Classify a review."]
    ChatRequest("m", ({"role": "user", "content": tasks[0]},)).key()  # hashable: the task goes into the next prompt


STS_GERMAN = {"S1": "Der Hund schläft im Garten.", "S2": "Die Katze liegt auf dem Sofa.", "S3": "Ein Vogel singt im Baum."}


def test_a_lone_surrogate_in_the_reply_itself_is_rejected_as_invalid_text_not_kept_as_u_fffd(tmp_path):
    # The reply's own text holds the surrogate (not a JSON escape): ChatResponse makes it storable as U+FFFD, and the
    # example that holds it was accepted before; it is rejected now, with the reply kept in rejects.jsonl.
    reply = json.dumps({**STS_GERMAN, "S1": "Der Hund schläft " + LONE + " im Garten."}, ensure_ascii=False)
    assert judge("sts", reply.replace(LONE, ""), "stop", None, {"language": "German"}, 0)[0] == "ok"  # else fine
    config = GenerateConfig(model="gpt-4o-mini", task_types="sts", tasks_per_type=1, examples_per_task=2,
                            languages="German", length_tolerance=0)  # fmt: skip
    stats = generate(tmp_path / "run", config, backend=_Backend(reply), workers=0, progress=False)
    rejects = [json.loads(line) for line in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert stats["accepted"] == 0 and [r["reason"] for r in rejects] == ["invalid_text"] * 2
    assert "S1 holds U+FFFD" in rejects[0]["detail"] and "\ufffd" in rejects[0]["response"]


# --- 2. a 200 that is not a chat completion -------------------------------------------------------------------------

GOOD = {"id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "fine"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
BAD_BODIES = {
    "html": (b"<html><body>502 from the proxy</body></html>", "text/html"),
    "broken_json": (b'{"id": "c1", "choices": [', "application/json"),
    "no_choices": (json.dumps({"id": "c1", "object": "chat.completion", "model": "m"}).encode(), "application/json"),
    "null_message": (json.dumps({**GOOD, "choices": [{"index": 0, "finish_reason": "stop", "message": None}]}).encode(),
                     "application/json"),
    "a_list": (b"[1, 2]", "application/json"),
}


class _Server:
    """A tiny HTTP server that answers each POST with the next of `replies` (status, content type, body); the last one
    repeats."""

    def __init__(self, replies: list[tuple[int, str, bytes]]):
        self.replies = list(replies)
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                status, content_type, body = outer.replies[min(outer.count, len(outer.replies) - 1)]
                outer.count += 1
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _client(server: _Server, **kwargs) -> LLMClient:
    return LLMClient(OpenAIBackend(base_url=server.base_url, concurrency=2), backoff=0.001, **kwargs)


@pytest.mark.parametrize("body", sorted(BAD_BODIES))
def test_a_200_that_is_not_a_completion_is_retried_then_counted_never_the_end(body, no_env_key):
    payload, content_type = BAD_BODIES[body]
    with _Server([(200, content_type, payload)]) as server:
        client = _client(server, max_retries=2)
        answers = client.run(_requests(2))  # raised AttributeError / JSONDecodeError out of the run before the fix
    assert all(isinstance(a, LLMError) and a.kind == "bad_response" for a in answers)
    assert "gave up after 3 attempts" in str(answers[0])
    assert client.usage.failures["bad_response"] == 2 and client.usage.retries["bad_response"] == 6
    assert server.count == 6


def test_a_bad_body_then_a_good_one_is_a_retry(no_env_key):
    payload, content_type = BAD_BODIES["null_message"]
    with _Server([(200, content_type, payload), (200, "application/json", json.dumps(GOOD).encode())]) as server:
        [answer] = _client(server).run(_requests(1))
    assert isinstance(answer, ChatResponse) and answer.text == "fine" and answer.retries == {"bad_response": 1}


# --- 3. a budget that can work --------------------------------------------------------------------------------------


def test_max_cost_with_an_unpriced_model_is_refused_before_anything_is_written(tmp_path, no_env_key):
    out = tmp_path / "run"
    config = GenerateConfig(model="my-local-model", tasks_per_type=1, examples_per_task=1)
    with pytest.raises(SynthembedError, match=r"my-local-model has no price.*--prices"):
        generate(out, config, base_url="http://127.0.0.1:9/v1", max_cost=1.0, progress=False)
    assert not out.exists()
    shares = GenerateConfig(model_shares={"gpt-4o-mini": 0.5, "their-model": 0.5})
    with pytest.raises(SynthembedError, match="their-model has no price"):
        generate(out, shares, base_url="http://127.0.0.1:9/v1", max_cost=1.0, progress=False)
    for bad in (-1.0, math.nan):
        with pytest.raises(SynthembedError, match="--max-cost must be"):
            generate(out, GenerateConfig(), base_url="http://127.0.0.1:9/v1", max_cost=bad, progress=False)
    assert not out.exists()


def test_check_budget_allows_priced_free_and_budgetless_runs():
    prices = load_prices()
    check_budget(1.0, ["gpt-4o-mini-2024-07-18"], prices, paid=True)  # priced
    check_budget(1.0, ["my-local-model"], load_prices(overrides={"my-local": {"input": 0, "output": 0}}), paid=True)
    check_budget(1.0, ["Qwen/Qwen2.5-Coder-0.5B-Instruct"], prices, paid=False)  # stand-in / local: nothing paid
    check_budget(None, ["my-local-model"], prices, paid=True)  # no budget: an unpriced model is only listed in stats
    check_budget(0.0, ["gpt-4o"], prices, paid=True)


# --- 4. Retry-After -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "waited"), [(200.0, 200.0), (10_000.0, MAX_RETRY_AFTER)])
def test_retry_after_is_honoured_up_to_its_maximum(recorded_sleeps, asked, waited):
    slept = recorded_sleeps
    backend = _Backend(errors=[RetryableError("429", "rate_limit", retry_after=asked)])
    [answer] = LLMClient(backend, backoff=0.01, max_backoff=60).run(_requests(1))
    assert isinstance(answer, ChatResponse)
    assert slept == [pytest.approx(waited)]  # was capped at max_backoff (60 s) before
    assert MAX_RETRY_AFTER == 300.0


# --- 5. control characters and empty texts --------------------------------------------------------------------------


@pytest.mark.parametrize(("s1", "reason"), [
    ("Der Hund schläft\x00 im Garten.", "control_characters"),
    ("Der Hund \x1b[31mschläft im Garten.", "control_characters"),
    ("Der Hund schläft\x7f im Garten.", "control_characters"),
    ("Der Hund schl\ufffdft im Garten.", "invalid_text"),  # a character lost to a broken encoding
    ("Der Hund schläft im Garten." + LONE, "invalid_text"),
    ("   \n\t ", "empty_field"),
    ("", "empty_field"),
    ("Der Hund schläft\n\tim Garten.", None),  # newlines and tabs are text
])
def test_control_characters_and_blank_texts_are_rejected(s1, reason):
    obj = {"S1": s1, "S2": "Die Katze liegt auf dem Sofa.", "S3": "Ein Vogel singt im Baum."}
    verdict = validate_example("sts", obj, {"language": "German"}, 0)
    assert verdict.reason == reason and verdict.ok == (reason is None)
    assert reason is None or reason in REASONS


# --- 6. secrets ---------------------------------------------------------------------------------------------------


def _error_body(status_text: str) -> bytes:
    return json.dumps({"error": {"message": f"{status_text}: got 'Authorization: Bearer {KEY}' (key {KEY})",
                                 "type": "invalid_request_error", "code": None}}).encode()


def test_an_api_key_echoed_in_an_error_body_is_never_shown(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with _Server([(401, "application/json", _error_body("Incorrect API key"))]) as server:
        with pytest.raises(SynthembedError) as refused:
            _client(server).run(_requests(1))
    assert "401" in str(refused.value) and KEY not in str(refused.value) and KEY[8:] not in str(refused.value)
    with _Server([(400, "application/json", _error_body("Bad request"))]) as server:
        client = _client(server)
        [failed] = client.run(_requests(1))
    assert isinstance(failed, LLMError) and failed.kind == "http_400"
    assert "***" in str(failed) and KEY[8:] not in str(failed)
    # a key other than the configured one, as the body of a retried error: still redacted
    other = "sk-other0123456789abcdef"
    assert other[3:] not in str(RetryableError(f"rate limited: Bearer {other}", "rate_limit"))


@pytest.mark.parametrize("name", ["api_key", "OPENAI_API_KEY", "apikey", "hf_token", "token", "auth_header",
                                  "authorization", "bearer", "client_secret", "password", "db_passwd", "credentials"])
def test_secret_looking_parameter_names_are_caught(name):
    assert _SECRET.search(name)


@pytest.mark.parametrize("name", ["max_tokens", "max_new_tokens", "n_tokens", "tokenizer", "passkey_lengths",
                                  "author", "batch_budget", "model"])
def test_ordinary_parameter_names_are_not_taken_for_secrets(name):
    assert not _SECRET.search(name)
