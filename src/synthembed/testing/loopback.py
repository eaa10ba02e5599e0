"""A loopback HTTP server that speaks the OpenAI chat-completions protocol and answers with scripted responses and
scripted faults: the LLM of the tests, the benchmark and the smoke study. It is a stand-in, not a language model.

    from synthembed.testing.loopback import Faults, LoopbackServer
    with LoopbackServer(faults=Faults(rate_limit=0.1, malformed=0.05), latency=0.2) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url          # http://127.0.0.1:<port>/v1
        ...                                                      # any OpenAI client works against it

    python -m synthembed.testing.loopback --port 8000                    # or run it on its own

What it answers, read from the prompt alone (as a real endpoint would have to):
- a brainstorm prompt ("JSON list"): a JSON list of ~20 task definitions for the group;
- a generation prompt: one JSON object with the group's fields (found from the keys the prompt quotes), its text in the
  requested language where it can: sentences of the shared Tatoeba data when present (real parallel sentences for bitext
  to or from English), else small built-in word lists, else English.
Everything is a pure function of (seed, model, messages): the same request always gets the same answer.

Faults, each at its own rate, chosen by a hash of the request (so they are deterministic too):
- transport faults, on a request's first attempt only (a retry succeeds): 429 with Retry-After, 500, a hang that
  outlasts the client's timeout;
- content faults, on every attempt: malformed JSON, JSON inside a ``` fence, a truncated answer (finish_reason
  "length"), a refusal (`message.refusal` set, content null), text in the wrong language.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..generation.prompts import OUTPUT_FIELDS
from ..languages import ISO639_3_NAMES, LANGUAGES

TRANSPORT_FAULTS = ("rate_limit", "server_error", "hang")
CONTENT_FAULTS = ("malformed", "fenced", "truncated", "refusal", "wrong_language")


@dataclass
class Faults:
    """Rates (0..1) of each scripted fault; transport and content faults are drawn independently."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    hang: float = 0.0
    malformed: float = 0.0
    fenced: float = 0.0
    truncated: float = 0.0
    refusal: float = 0.0
    wrong_language: float = 0.0
    brainstorm: bool = True  # whether content faults also hit brainstorm requests (tests switch it off for exact comparisons)
    retry_after: float = 0.05  # seconds the 429 asks the client to wait
    hang_seconds: float = 30.0  # how long a hung request stalls; the client's timeout should be shorter

    def __post_init__(self) -> None:
        for group in (TRANSPORT_FAULTS, CONTENT_FAULTS):
            total = sum(getattr(self, name) for name in group)
            if total > 1.0 or any(getattr(self, name) < 0 for name in group):
                raise ValueError(f"fault rates {group} must be >= 0 and sum to at most 1, got {total}")

    @classmethod
    def uniform(cls, rate: float, **overrides: float) -> Faults:
        """Every fault at the same `rate`."""
        return cls(**{name: rate for name in TRANSPORT_FAULTS + CONTENT_FAULTS}, **overrides)


# --- text in many languages ------------------------------------------------------------------------------------------

# Common words per language: enough for a language detector to tell the text apart when no shared data is present.
WORDS: dict[str, str] = {
    "English": "the of and to in is that it was for on are with as his they be at one have this from by but not "
               "what all were when we there can people time water language city river history school family",
    "German": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an werden "
              "aus er hat dass sie nach bei wird noch über Stadt Wasser Geschichte Schule Familie",
    "French": "le de un être et à il avoir ne je son que se qui ce dans en du elle au pour pas que vous par sur "
              "faire plus dire me on mon lui nous comme mais ville eau histoire école famille",
    "Spanish": "el la de que y a en un ser se no haber por con su para como estar tener le lo todo pero más hacer "
               "o poder decir este ir otro ese ciudad agua historia escuela familia",
    "Italian": "il di che e la per un in è non una sono mi si ho lo ma ti ha le cosa con questo io se della anche "
               "città acqua storia scuola famiglia molto sempre",
    "Portuguese": "o de a que e do da em um para é com não uma os no se na por mais as dos como mas foi ao ele das "
                  "cidade água história escola família também muito",
    "Dutch": "de van een het en in is dat op te zijn voor met die niet aan er om ook als bij door maar uit dan "
             "wordt naar stad water geschiedenis school familie heel",
    "Polish": "w i na nie z się do to że jest o jak po ale co tak za od już dla jego czy przez może być są "
              "miasto woda historia szkoła rodzina bardzo",
    "Russian": "и в не на я что он с как это по но они к у же вы за бы от она так мы его только было город вода "
               "история школа семья очень",
    "Ukrainian": "і в не на я що він з як це по але вони до у же ви за б від вона так ми його тільки було місто "
                 "вода історія школа родина дуже",
    "Swedish": "och i att det som en på är av för med till den har de inte om ett han var men vi kan så staden "
               "vatten historia skolan familjen mycket",
    "Turkish": "bir ve bu da için de çok ne ile daha gibi ama en her şey olarak kadar sonra şehir su tarih okul "
               "aile büyük yeni olan değil",
    "Indonesian": "yang dan di itu dengan untuk tidak ini dari dalam akan pada juga saya ke karena bisa ada mereka "
                  "kota air sejarah sekolah keluarga sangat",
    "Vietnamese": "của và là có trong được cho không người này những một các với đã để thành phố nước lịch sử "
                  "trường học gia đình rất",
    "Arabic": "في من على أن إلى عن مع هذا كان التي الذي هذه ما لا كل بين قد المدينة الماء التاريخ المدرسة العائلة "
              "كثيرا أيضا عندما",
    "Persian": "و در به از که این را با است برای آن یک خود تا کرد بر هم نیز شهر آب تاریخ مدرسه خانواده بسیار "
               "می شود بود",
    "Hindi": "का के की है में और को से एक यह पर था भी कि हैं नहीं लिए कर शहर पानी इतिहास स्कूल परिवार बहुत",
    "Japanese": "これは 私は 日本の 学校で 東京に 水を 歴史が 家族と 今日は とても 大きな 新しい 友達 先生 "
                "電車 本を 読みます 行きます です ました",
    "Chinese": "我们 的 是 在 这个 中国 学校 历史 城市 水 家庭 非常 今天 朋友 老师 工作 时间 问题 发展 社会 "
               "经济 生活 喜欢",
    "Korean": "나는 우리는 학교에 도시의 물을 역사가 가족과 오늘은 아주 새로운 친구 선생님 그리고 하지만 "
              "있습니다 했습니다 그것은",
}

# Languages written without spaces between words.
_NO_SPACES = {"Japanese", "Chinese", "Thai", "Lao", "Khmer", "Burmese"}

# The ISO 639-3 codes that name the Tatoeba files (../shared/data/multilingual/tatoeba) of the paper's languages;
# a code without a file (FLORES-only languages, English) simply finds no sentences.
TATOEBA_CODES: dict[str, str] = {name: code for code, name in ISO639_3_NAMES.items() if name in LANGUAGES}


class TextSource:
    """Sentences in a language: Tatoeba's when the shared data has them, else composed from WORDS, else English."""

    def __init__(self, data_dir: str | Path | None = None):
        if data_dir is None:
            from ..paths import shared_data_dir

            data_dir = shared_data_dir() / "multilingual" / "tatoeba"
        self.data_dir = Path(data_dir)
        self._tatoeba: dict[str, tuple[list[str], list[str]]] = {}
        self._lock = threading.Lock()

    def _pairs(self, language: str) -> tuple[list[str], list[str]] | None:
        """(sentences in `language`, their English translations) from Tatoeba, or None."""
        code = TATOEBA_CODES.get(language)
        if code is None:
            return None
        with self._lock:
            if code not in self._tatoeba:
                left, right = self.data_dir / f"tatoeba.{code}-eng.{code}", self.data_dir / f"tatoeba.{code}-eng.eng"
                if left.is_file() and right.is_file():
                    a = left.read_text(encoding="utf-8").splitlines()
                    b = right.read_text(encoding="utf-8").splitlines()
                    # Very short lines ("Yes.") carry too little for a language detector; keep real sentences.
                    keep = [i for i in range(min(len(a), len(b))) if len(a[i]) >= 20 and len(b[i]) >= 20]
                    self._tatoeba[code] = ([a[i] for i in keep], [b[i] for i in keep])
                else:
                    self._tatoeba[code] = ([], [])
            pairs = self._tatoeba[code]
        return pairs if pairs[0] else None

    def has(self, language: str) -> bool:
        return language in WORDS or self._pairs(language) is not None or language == "English"

    def sentence(self, language: str, rng: random.Random) -> str:
        pairs = self._pairs(language)
        if pairs is not None:
            return rng.choice(pairs[0])
        if language == "English":
            english = self._pairs("German")  # Tatoeba's English sides are real English sentences
            if english is not None:
                return rng.choice(english[1])
        words = WORDS.get(language, WORDS["English"]).split()
        chosen = [rng.choice(words) for _ in range(rng.randint(7, 12))]
        if language in _NO_SPACES:
            return "".join(chosen) + "。"
        text = " ".join(chosen)
        return text[0].upper() + text[1:] + "."

    def parallel(self, src: str, tgt: str, rng: random.Random) -> tuple[str, str]:
        """A sentence in `src` and its translation in `tgt`: Tatoeba's real pairs to or from English, else two
        unrelated sentences (the stand-in cannot translate)."""
        if tgt == "English" and (pairs := self._pairs(src)) is not None:
            i = rng.randrange(len(pairs[0]))
            return pairs[0][i], pairs[1][i]
        if src == "English" and (pairs := self._pairs(tgt)) is not None:
            i = rng.randrange(len(pairs[0]))
            return pairs[1][i], pairs[0][i]
        return self.sentence(src, rng), self.sentence(tgt, rng)

    def text(self, language: str, n_words: int, rng: random.Random, first: str | None = None) -> str:
        """About `n_words` words of running text (sentences joined), starting with `first` when given."""
        parts = [first] if first else []
        count = _count_words(first or "", language)
        while count < n_words:
            s = self.sentence(language, rng)
            parts.append(s)
            count += _count_words(s, language)
        joiner = "" if language in _NO_SPACES else " "
        return joiner.join(parts)

    def words(self, language: str, n: int, rng: random.Random) -> str:
        """A short phrase of about `n` words (a query, a label)."""
        sentence = self.sentence(language, rng).rstrip(".。!?！？")
        if language in _NO_SPACES:
            return sentence[: max(2, 2 * n)]
        tokens = sentence.split()
        while len(tokens) < n:
            tokens += self.sentence(language, rng).rstrip(".。!?").split()
        return " ".join(tokens[:n])


def _count_words(text: str, language: str) -> int:
    # Scripts without spaces: count two characters as a word, roughly what a reader would.
    return max(1, len(text) // 2) if language in _NO_SPACES and text else len(text.split())


# --- what to answer --------------------------------------------------------------------------------------------------

_TOPICS = (
    "household appliances", "tax law", "marine biology", "video game modding", "medieval history", "kidney disease",
    "solar panels", "wine making", "rental contracts", "jazz theory", "compiler errors", "bird migration",
    "railway timetables", "knitting patterns", "vaccine research", "volcanoes", "startup funding", "chess openings",
    "urban gardening", "climate policy", "sports injuries", "ancient Greek philosophy", "car insurance",
    "quantum computing", "baking bread", "museum exhibitions", "mountain hiking", "employment law", "astronomy",
    "pet nutrition", "cryptocurrency", "poetry", "public transport", "dental care", "photography", "dog training",
    "space missions", "online privacy", "renewable energy", "traditional medicine", "film criticism", "beekeeping",
)
_TASK_FORMS: dict[str, tuple[str, ...]] = {
    "short-long": (
        "Given a short question about {topic}, retrieve articles that answer it.",
        "Given keywords about {topic}, retrieve detailed guides that cover them.",
        "Given a user's search query on {topic}, retrieve web pages that satisfy the information need.",
        "Given a problem description in a few words about {topic}, retrieve forum posts that solve it.",
    ),
    "long-short": (
        "Classify a text about {topic} by its main subject.",
        "Decide the sentiment of a review about {topic}.",
        "Identify the intent of a customer message about {topic}.",
        "Label a news story about {topic} with its type.",
    ),
    "short-short": (
        "Given a short title about {topic}, retrieve titles of related items.",
        "Given a question about {topic}, retrieve its one-sentence answer.",
        "Given a keyword from {topic}, retrieve its synonyms and near synonyms.",
        "Given a headline about {topic}, retrieve headlines of the same story.",
    ),
    "long-long": (
        "Given an article about {topic}, retrieve articles that discuss the same issue.",
        "Given a report on {topic}, retrieve reports that contradict its findings.",
        "Given an essay about {topic}, retrieve essays that build on its argument.",
        "Given a description of a project in {topic}, retrieve descriptions of similar projects.",
    ),
}

_LANGUAGE_PATTERN = re.compile(r"\b(" + "|".join(re.escape(name) for name in sorted(LANGUAGES, key=len, reverse=True)) + r")\b")


def detect_request(prompt: str) -> tuple[str, str | None, list[str], int]:
    """What a prompt asks for: ("brainstorm" | "generate" | "chat", task_type, languages named in order, words wanted)."""
    numbers = [int(n) for n in re.findall(r"(\d+) words", prompt)]
    n_words = max(numbers) if numbers else 0
    keys = set(re.findall(r'"([A-Za-z0-9_]+)"', prompt))
    # Group by the JSON keys the prompt quotes; the most specific match wins.
    matches = [t for t, fields in OUTPUT_FIELDS.items() if set(fields) <= keys]
    matches.sort(key=lambda t: -len(OUTPUT_FIELDS[t]))
    # Languages named in the rules: the task line of a generation prompt could name one for its own reasons, so the
    # search starts after it when the template marks it.
    rules = prompt.split("Rules:", 1)[1] if "Rules:" in prompt else prompt
    languages = list(dict.fromkeys(_LANGUAGE_PATTERN.findall(rules)))
    if matches:
        task_type = matches[0]
        if task_type in ("short-short", "long-long"):
            task_type = "long-long" if n_words >= 300 else "short-short"
        if task_type in ("sts", "bitext"):
            task_type = "bitext" if len(languages) >= 2 else "sts"
        return "generate", task_type, languages, n_words
    if re.search(r"JSON (list|array)", prompt):
        lowered = prompt.lower()
        if "classification" in lowered or "label" in lowered:
            task_type = "long-short"
        elif "both sides are long" in lowered or "whole document" in lowered:
            task_type = "long-long"
        elif "both sides are short" in lowered or "both short" in lowered:
            task_type = "short-short"
        else:
            task_type = "short-long"
        return "brainstorm", task_type, [], 0
    return "chat", None, languages, n_words


def _query_words(spec: str) -> int:
    return {"less than 5 words": 3, "5 to 15 words": 8, "at least 10 words": 12}.get(spec, 6)


def scripted_answer(prompt: str, rng: random.Random, texts: TextSource, wrong_language: bool = False) -> str:
    """The stand-in's reply to a prompt, as text (JSON for brainstorm and generation prompts)."""
    kind, task_type, languages, n_words = detect_request(prompt)
    if kind == "brainstorm":
        forms = _TASK_FORMS[task_type]
        tasks = {form.format(topic=topic) for form in forms for topic in rng.sample(_TOPICS, 6)}
        return json.dumps(rng.sample(sorted(tasks), 20), ensure_ascii=False, indent=1)
    if kind == "chat":
        return texts.text(languages[0] if languages else "English", 40, rng)
    language = languages[0] if languages else "English"
    target = languages[1] if task_type == "bitext" and len(languages) > 1 else language
    if wrong_language:  # the fault: the answer ignores the requested language
        swap = "German" if target == "English" else "English"
        language, target = (language, swap) if task_type == "bitext" else (swap, swap)
    if task_type == "short-long":
        length = next((s for s in ("less than 5 words", "5 to 15 words", "at least 10 words") if s in prompt), "")
        query = texts.words(language, _query_words(length), rng)
        doc_words = max(n_words, 50)
        fields = {
            "user_query": query,
            "positive_document": texts.text(language, doc_words, rng, first=query + "."),
            "hard_negative_document": texts.text(language, doc_words, rng),
        }
    elif task_type == "long-short":
        label, wrong = texts.words(language, 2, rng), texts.words(language, 2, rng)
        if "less than 10 words" in prompt:
            input_text = texts.words(language, 6, rng)
        else:
            input_text = texts.text(language, max(n_words, 10), rng)
        fields = {"input_text": input_text, "label": label, "misleading_label": wrong}
    elif task_type == "short-short":
        query = texts.words(language, 5, rng)
        fields = {"input": query, "positive_document": texts.sentence(language, rng)}
    elif task_type == "long-long":
        fields = {"input": texts.text(language, 320, rng), "positive_document": texts.text(language, 320, rng)}
    elif task_type == "sts":
        unit = next((u for u in ("passage", "phrase", "sentence") if f"a {u}" in prompt), "sentence")
        size = {"passage": 60, "phrase": 0, "sentence": 0}[unit]
        s1 = texts.text(language, size, rng) if size else texts.sentence(language, rng)
        fields = {"S1": s1, "S2": _paraphrase(s1, rng), "S3": texts.sentence(language, rng)}
    else:  # bitext
        s1, s2 = texts.parallel(language, target, rng)
        fields = {"S1": s1, "S2": s2, "S3": texts.sentence(target, rng)}
    return json.dumps(fields, ensure_ascii=False)


def _paraphrase(text: str, rng: random.Random) -> str:
    """A near copy: one word dropped and two swapped (the stand-in cannot paraphrase for real)."""
    words = text.split()
    if len(words) < 4:
        return text + (" …" if not text.endswith("…") else "")
    del words[rng.randrange(1, len(words))]
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def approx_tokens(text: str) -> int:
    """About one token per four UTF-8 bytes, the usual rule of thumb for BPE vocabularies."""
    return max(1, len(text.encode("utf-8")) // 4)


def _unit(seed: int, salt: str, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(u: float, faults: Faults, names: tuple[str, ...]) -> str | None:
    edge = 0.0
    for name in names:
        edge += getattr(faults, name)
        if u < edge:
            return name
    return None


# --- the server ------------------------------------------------------------------------------------------------------


class LoopbackServer:
    """The OpenAI chat-completions protocol on 127.0.0.1, served from a background thread.

    Endpoints: POST /v1/chat/completions (non-streaming) and GET /v1/models. `served` counts what it answered: requests,
    brainstorms, generations by group, and each fault.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None, latency: float = 0.0,
                 seed: int = 0, data_dir: str | Path | None = None, model: str = "loopback"):
        self.host = host
        self.port = port
        self.faults = faults or Faults()
        self.latency = latency
        self.seed = seed
        self.model = model
        self.texts = TextSource(data_dir)
        self.served: Counter = Counter()
        self._attempts: Counter = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._serve, name="loopback-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("loopback server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and self._thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            except (RuntimeError, TimeoutError):
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._thread = None

    async def _shutdown(self) -> None:
        self._server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port, backlog=512))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, extra, payload = await self._route(method, path.split("?")[0], body)
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                head_out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", "Content-Type: application/json",
                            f"Content-Length: {len(data)}", "Connection: keep-alive"]
                head_out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head_out) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except RuntimeError:  # loop shutting down
                pass

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {}, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "loopback"}]}
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, _error(f"no route {method} {path}", "not_found")
        try:
            request = json.loads(body)
            messages = request["messages"]
            prompt = "\n\n".join(str(m.get("content") or "") for m in messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            return 400, {}, _error("body must be a JSON chat-completions request with messages", "invalid_request_error")
        if request.get("stream"):
            return 400, {}, _error("the loopback server does not stream", "invalid_request_error")
        model = str(request.get("model") or self.model)
        key = hashlib.sha256(json.dumps([model, messages, request.get("seed")], sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        self.served["requests"] += 1
        self._attempts[key] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        transport = _pick(_unit(self.seed, "transport", key), self.faults, TRANSPORT_FAULTS)
        if transport is not None and self._attempts[key] == 1:
            self.served[transport] += 1
            if transport == "rate_limit":
                return 429, {"Retry-After": f"{self.faults.retry_after:g}"}, _error("Rate limit reached (scripted)", "rate_limit_exceeded")
            if transport == "server_error":
                return 500, {}, _error("The server had an error (scripted)", "server_error")
            await asyncio.sleep(self.faults.hang_seconds)  # "hang": the client should have timed out by now
        content_fault = _pick(_unit(self.seed, "content", key), self.faults, CONTENT_FAULTS)
        rng = random.Random(int(key[:16], 16) ^ self.seed)
        kind, task_type, _, _ = detect_request(prompt)
        self.served[kind] += 1
        if task_type:
            self.served[f"{kind}:{task_type}"] += 1
        if kind == "brainstorm" and (content_fault == "wrong_language" or not self.faults.brainstorm):
            content_fault = None  # task lists are English by design
        text: str | None = scripted_answer(prompt, rng, self.texts, wrong_language=content_fault == "wrong_language")
        refusal, finish = None, "stop"
        if content_fault is not None:
            self.served[content_fault] += 1
        if content_fault == "malformed":
            # a closing bracket dropped and a key left unquoted: no repair can make that JSON without guessing
            body = text.rstrip()[:-1]
            text = re.sub(r'"([A-Za-z0-9_]+)":', r"\1:", body, count=1)
        elif content_fault == "fenced":
            text = f"Here is the JSON:\n```json\n{text}\n```"
        elif content_fault == "truncated":
            text, finish = text[: max(1, int(len(text) * 0.6))], "length"
        elif content_fault == "refusal":
            text, refusal = None, "I'm sorry, but I can't help with that request."
        prompt_tokens = approx_tokens(prompt)
        completion_tokens = approx_tokens(text or refusal or "")
        return 200, {}, {
            "id": f"chatcmpl-loopback-{key[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "loopback-stand-in",
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


@dataclass
class Endpoint:
    """Where a notebook's requests go: `base_url` (None: OpenAI's own), and whether it is the stand-in."""

    base_url: str | None
    stand_in: bool
    server: LoopbackServer | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def open_endpoint(llm: str = "auto", faults: Faults | None = None, seed: int = 0) -> Endpoint:
    """The LLM endpoint for the notebooks: "loopback" starts the stand-in; "openai" uses OPENAI_API_KEY /
    OPENAI_BASE_URL; "auto" is "openai" when either is set, else "loopback".

    >>> endpoint = open_endpoint("loopback"); endpoint.stand_in
    True
    >>> endpoint.close()
    """
    import os

    from ..errors import SynthembedError

    if llm == "auto":
        llm = "openai" if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL") else "loopback"
    if llm == "loopback":
        server = LoopbackServer(faults=faults, seed=seed).start()
        return Endpoint(server.base_url, True, server)
    if llm == "openai":
        if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
            raise SynthembedError("llm='openai' needs OPENAI_API_KEY or OPENAI_BASE_URL in the environment")
        return Endpoint(os.environ.get("OPENAI_BASE_URL") or None, False)
    raise SynthembedError(f"llm must be 'auto', 'loopback' or 'openai', not {llm!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the loopback stand-in LLM (OpenAI chat-completions protocol).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=0)
    for name in TRANSPORT_FAULTS + CONTENT_FAULTS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, help=f"rate of the {name} fault")
    args = parser.parse_args(argv)
    faults = Faults(**{name: getattr(args, name) for name in TRANSPORT_FAULTS + CONTENT_FAULTS})
    with LoopbackServer(port=args.port, faults=faults, latency=args.latency, seed=args.seed) as server:
        print(f"loopback stand-in LLM at {server.base_url} (faults: {asdict(faults)}); Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
