"""What the loopback stand-in LLM answers: text in many languages, and the scripted reply to each request.

    import random
    from synthembed.testing.scripted import TextSource, read_request, scripted_answer
    asked = read_request(prompt.marker, prompt.text)           # stage, task group, placeholders, languages
    reply = scripted_answer(asked, random.Random(0), TextSource())   # JSON text, as an LLM would write it

The stand-in reads what a request asks for from its marker (prompts.Prompt.marker, sent beside the messages as an HTTP
header; see loopback.py), never from the wording of a template, so rewording a template cannot break it:
- a brainstorm marker: a JSON list of 20 task definitions for the group;
- a generation marker: one JSON object with the group's fields (taskgroups.py), sized by the group's length rules, in
  the placeholders' languages where it can: sentences of the shared Tatoeba data when present (real parallel sentences
  for bitext to or from English), else small built-in word lists, else English;
- no marker (any other chat): a few sentences in the first language the prompt names, else English.
Everything is a pure function of the request and the rng.
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..languages import ISO639_3_NAMES, LANGUAGES, UNSPACED_LANGUAGES, word_count
from ..taskgroups import TASK_GROUP, TaskGroup, read_marker

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
        if language in UNSPACED_LANGUAGES:
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
        """At least `n_words` words (as the validator counts them) of running text, starting with `first` when given."""
        parts = [first] if first else []
        count = word_count(first or "")
        while count < n_words:
            s = self.sentence(language, rng)
            parts.append(s)
            count += word_count(s)
        joiner = "" if language in UNSPACED_LANGUAGES else " "
        return joiner.join(parts)

    def words(self, language: str, n: int, rng: random.Random) -> str:
        """A short phrase of about `n` words (a query, a label)."""
        sentence = self.sentence(language, rng).rstrip(".。!?！？")
        if language in UNSPACED_LANGUAGES:
            return sentence[: max(2, 2 * n)]
        tokens = sentence.split()
        while len(tokens) < n:
            tokens += self.sentence(language, rng).rstrip(".。!?").split()
        return " ".join(tokens[:n])


# --- what a request asks for -----------------------------------------------------------------------------------------

_LANGUAGE_PATTERN = re.compile(r"\b(" + "|".join(re.escape(name) for name in sorted(LANGUAGES, key=len, reverse=True)) + r")\b")


@dataclass(frozen=True)
class Asked:
    """What one request asks the stand-in for: `kind` "brainstorm", "generate" or "chat" (no marker)."""

    kind: str
    task_type: str | None = None
    placeholders: dict[str, Any] = field(default_factory=dict)
    languages: tuple[str, ...] = ()  # for a chat: the languages the prompt names, in order


def read_request(marker: str | None, prompt: str = "") -> Asked:
    """What a request asks for: from its marker when it carries one, else it is a plain chat.

    >>> read_request('{"stage": "brainstorm", "task_type": "long-long"}').kind
    'brainstorm'
    """
    fields = read_marker(marker)
    if fields is None:
        return Asked("chat", languages=tuple(dict.fromkeys(_LANGUAGE_PATTERN.findall(prompt))))
    return Asked(fields["stage"], fields["task_type"], dict(fields.get("placeholders", {})))


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


def _words_inside(low: int | None, high: int | None) -> int:
    """A phrase length comfortably inside a (min, max) word rule: 5 to 15 -> 8, less than 5 -> 3, at least 10 -> 12."""
    if low is not None and high is not None:
        return low + 3
    if high is not None:
        return max(1, high * 6 // 10)
    return low + 2 if low is not None else 6


def _rule(group: TaskGroup, placeholders: dict[str, Any], name: str) -> tuple[int | None, int | None]:
    """(min, max) words of field `name` under the group's length rules."""
    return next(((low, high) for field_name, low, high in group.length_rules(placeholders) if field_name == name),
                (None, None))


def _short_long(group: TaskGroup, texts: TextSource, rng: random.Random, p: dict[str, Any]) -> dict[str, str]:
    language = p.get("language", "English")
    query = texts.words(language, _words_inside(*_rule(group, p, "user_query")), rng)
    doc_words = max(_rule(group, p, "positive_document")[0] or 0, 50)
    return {"user_query": query, "positive_document": texts.text(language, doc_words, rng, first=query + "."),
            "hard_negative_document": texts.text(language, doc_words, rng)}


def _long_short(group: TaskGroup, texts: TextSource, rng: random.Random, p: dict[str, Any]) -> dict[str, str]:
    language = p.get("language", "English")
    label, wrong = texts.words(language, 2, rng), texts.words(language, 2, rng)
    low, high = _rule(group, p, "input_text")
    if high is not None:
        input_text = texts.words(language, _words_inside(low, high), rng)
    else:
        input_text = texts.text(language, max(low or 0, 10), rng)
    return {"input_text": input_text, "label": label, "misleading_label": wrong}


def _short_short(group: TaskGroup, texts: TextSource, rng: random.Random, p: dict[str, Any]) -> dict[str, str]:
    language = p.get("language", "English")
    query = texts.words(language, 5, rng)
    return {"input": query, "positive_document": texts.sentence(language, rng)}


def _long_long(group: TaskGroup, texts: TextSource, rng: random.Random, p: dict[str, Any]) -> dict[str, str]:
    language = p.get("language", "English")
    query_words, document_words = ((_rule(group, p, name)[0] or 0) + 20 for name in ("input", "positive_document"))
    return {"input": texts.text(language, query_words, rng), "positive_document": texts.text(language, document_words, rng)}


def _sts(group: TaskGroup, texts: TextSource, rng: random.Random, p: dict[str, Any]) -> dict[str, str]:
    language = p.get("language", "English")
    s1 = texts.text(language, 60, rng) if p.get("unit") == "passage" else texts.sentence(language, rng)
    return {"S1": s1, "S2": _paraphrase(s1, rng), "S3": texts.sentence(language, rng)}


def _bitext(group: TaskGroup, texts: TextSource, rng: random.Random, p: dict[str, Any]) -> dict[str, str]:
    s1, s2 = texts.parallel(p["src_lang"], p["tgt_lang"], rng)
    return {"S1": s1, "S2": s2, "S3": texts.sentence(p["tgt_lang"], rng)}


def _any_group(group: TaskGroup, texts: TextSource, rng: random.Random, p: dict[str, Any]) -> dict[str, str]:
    """Any group without a composer of its own: each field in its language, within its length rules."""
    languages = dict(group.language_fields)
    fields = {}
    for name in group.fields:
        language = p.get(languages.get(name, "language"), "English")
        low, high = _rule(group, p, name)
        fields[name] = (texts.words(language, _words_inside(low, high), rng) if high is not None
                        else texts.text(language, (low or 0) + 20, rng))
    return fields


# How the stand-in fakes each group: the relations a model would write (a positive that starts from the query, a
# paraphrase, a translation) make the smoke study's training data learnable.
_COMPOSERS = {"short-long": _short_long, "long-short": _long_short, "short-short": _short_short,
              "long-long": _long_long, "sts": _sts, "bitext": _bitext}


def _paraphrase(text: str, rng: random.Random) -> str:
    """A near copy: one word dropped and two swapped (the stand-in cannot paraphrase for real)."""
    words = text.split()
    if len(words) < 4:
        return text + (" …" if not text.endswith("…") else "")
    del words[rng.randrange(1, len(words))]
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _in_wrong_language(group: TaskGroup, placeholders: dict[str, Any]) -> dict[str, Any]:
    """The placeholders with the output language swapped (English <-> German): the wrong_language fault. With two
    languages the target side is swapped, so the answer still looks like a translation."""
    name = group.language_placeholders[-1]  # "language", or the target side ("tgt_lang")
    swapped = "German" if placeholders.get(name, "English") == "English" else "English"
    return {**placeholders, name: swapped}


def scripted_answer(asked: Asked, rng: random.Random, texts: TextSource, wrong_language: bool = False) -> str:
    """The stand-in's reply to a request, as text (JSON for brainstorm and generation requests)."""
    if asked.kind == "chat":
        return texts.text(asked.languages[0] if asked.languages else "English", 40, rng)
    if asked.kind == "brainstorm":
        forms = _TASK_FORMS.get(asked.task_type, _TASK_FORMS["short-long"])
        tasks = {form.format(topic=topic) for form in forms for topic in rng.sample(_TOPICS, 6)}
        return json.dumps(rng.sample(sorted(tasks), 20), ensure_ascii=False, indent=1)
    group = TASK_GROUP[asked.task_type]
    placeholders = _in_wrong_language(group, asked.placeholders) if wrong_language else asked.placeholders
    compose = _COMPOSERS.get(group.name, _any_group)
    return json.dumps(compose(group, texts, rng, placeholders), ensure_ascii=False)


def approx_tokens(text: str) -> int:
    """About one token per four UTF-8 bytes, the usual rule of thumb for BPE vocabularies."""
    return max(1, len(text.encode("utf-8")) // 4)
