"""Benchmark language codes and writing scripts, for the multilingual study (paper section 4.3).

    from synthembed.evaluation.language_codes import detect_script, language_name, resource_group
    language_name("hin_Deva-eng_Latn"), resource_group("deu"), detect_script("Том здесь.")  # ('Hindi', 'high', 'Cyrl')

Benchmarks name languages by ISO 639-3 code (Tatoeba `deu`, FLORES `deu_Latn`), mteb's BUCC and MIRACL by ISO 639-1
(`de`); the paper's language list (languages.py) by name. `language_name` maps all of them to one name, and to the
paper's spelling where the language is one of its 93. Scripts are ISO 15924 codes (`Latn`, `Cyrl`, `Hani`), read from
the text itself with unicodedata (`detect_script`).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache

from ..errors import SynthembedError
from ..languages import HIGH_RESOURCE, ISO639_3_NAMES, LANGUAGES, canonical_language, language_weights

RESOURCE_GROUPS = ("high", "low", "unseen")  # high: English + the paper's 13; low: its other 79; unseen: not in its 93

# --- language codes ---------------------------------------------------------------------------------------------------

# ISO 639-1 codes of mteb's multilingual tasks (MIRACL, BUCC) for languages outside the paper's 93 (whose own two-letter
# codes languages.canonical_language knows).
ISO639_1_EXTRA: dict[str, str] = {"yo": "Yoruba"}
# nob/nno: the paper's "Norwegian" (XLM-R's `no`) is Bokmål; tgl: XLM-R's Filipino is Tagalog (`tl`);
# zsm/lvs/swh/pes/npi: the standard varieties that XLM-R's ms/lv/sw/fa/ne stand for.



def other_side(pair: str) -> str:
    """The non-English side of a mined pair's name: `deu-eng` -> deu, `hin_Deva-eng_Latn` -> hin_Deva, `de-en` -> de.

    >>> other_side("hin_Deva-eng_Latn")
    'hin_Deva'
    """
    sides = [side for side in str(pair).split("-") if side]
    return next((s for s in sides if s.split("_")[0].lower() not in ("eng", "en")), sides[0] if sides else pair)


def language_name(code: str) -> str:
    """The language a benchmark code names: ISO 639-3 (`deu`), FLORES (`deu_Latn`), a mined pair (`deu-eng`,
    `deu_Latn-eng_Latn`: the non-English side), ISO 639-1 (`de`, `de-en` as in mteb's BUCC and MIRACL) or a name.

    >>> language_name("cmn"), language_name("hin_Deva-eng_Latn"), language_name("de-en"), language_name("Tatar")
    ('Chinese', 'Hindi', 'German', 'Tatar')
    """
    text = str(code).strip()
    if "-" in text:  # a pair: the side that is not English
        text = other_side(text)
    key = text.split("_")[0].lower()
    if key in ISO639_3_NAMES:
        return ISO639_3_NAMES[key]
    if key in ISO639_1_EXTRA:
        return ISO639_1_EXTRA[key]
    try:
        return canonical_language(text)  # a paper name or an ISO 639-1 code the detector uses
    except SynthembedError:
        pass
    by_name = {name.lower(): name for name in ISO639_3_NAMES.values()}
    if key in by_name or text.lower() in by_name:
        return by_name.get(text.lower(), by_name.get(key))
    raise SynthembedError(f"unknown language code {code!r} (expected ISO 639-3 such as 'deu', 'deu_Latn', or ISO 639-1)")


def resource_group(language: str) -> str:
    """The language's group: "high" (English and the paper's 13 high-resource ones), "low" (its other 79 languages) or
    "unseen" (not among its 93).

    >>> resource_group("deu"), resource_group("amh"), resource_group("kab")
    ('high', 'low', 'unseen')
    """
    name = language_name(language)
    if name == "English" or name in HIGH_RESOURCE:
        return "high"
    return "low" if name in LANGUAGES else "unseen"


def paper_share(language: str) -> float:
    """The language's share of the paper's synthetic data (0 for a language outside its 93)."""
    return language_weights().get(language_name(language), 0.0)


# --- scripts ----------------------------------------------------------------------------------------------------------

# unicodedata name prefix -> ISO 15924; the longest prefix wins ("FULLWIDTH LATIN" before "LATIN").
_SCRIPT_PREFIXES: dict[str, str] = {
    "LATIN": "Latn", "FULLWIDTH LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARMENIAN": "Armn",
    "HEBREW": "Hebr", "ARABIC": "Arab", "SYRIAC": "Syrc", "THAANA": "Thaa", "DEVANAGARI": "Deva", "BENGALI": "Beng",
    "GURMUKHI": "Guru", "GUJARATI": "Gujr", "ORIYA": "Orya", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda",
    "MALAYALAM": "Mlym", "SINHALA": "Sinh", "THAI": "Thai", "LAO": "Laoo", "TIBETAN": "Tibt", "MYANMAR": "Mymr",
    "GEORGIAN": "Geor", "HANGUL": "Hang", "HALFWIDTH HANGUL": "Hang", "ETHIOPIC": "Ethi", "CHEROKEE": "Cher",
    "KHMER": "Khmr", "MONGOLIAN": "Mong", "HIRAGANA": "Hira", "KATAKANA": "Kana", "HALFWIDTH KATAKANA": "Kana",
    "KATAKANA-HIRAGANA": "Kana", "CJK": "Hani", "KANGXI": "Hani", "TIFINAGH": "Tfng", "OL CHIKI": "Olck",
    "MEETEI MAYEK": "Mtei", "NKO": "Nkoo", "CANADIAN SYLLABICS": "Cans",
}  # fmt: skip
_PREFIXES_LONGEST_FIRST = sorted(_SCRIPT_PREFIXES, key=len, reverse=True)


@lru_cache(maxsize=65536)  # a corpus repeats few distinct characters; the name lookup is what costs
def char_script(char: str) -> str | None:
    """ISO 15924 code of one letter's script; None for what is not a letter (digits, punctuation, spaces, marks)."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    for prefix in _PREFIXES_LONGEST_FIRST:
        if name.startswith(prefix):
            return _SCRIPT_PREFIXES[prefix]
    return name.split(" ")[0].title() if name else "Zzzz"


def detect_script(text: str) -> str:
    """The dominant script of `text` as an ISO 15924 code, counted over its letters; "Zyyy" when it has none.

    Japanese mixes kana and kanji, so kana anywhere with kana + Han in the majority is "Jpan"; Han alone is "Hani"
    (unicodedata cannot tell Simplified from Traditional).

    >>> detect_script("Tom is here."), detect_script("Том здесь."), detect_script("トムはここにいる。"), detect_script("123")
    ('Latn', 'Cyrl', 'Jpan', 'Zyyy')
    """
    counts = Counter(script for script in map(char_script, text) if script)
    if not counts:
        return "Zyyy"
    kana = counts["Hira"] + counts["Kana"]
    if kana and kana + counts["Hani"] > sum(counts.values()) / 2:
        return "Jpan"
    return counts.most_common(1)[0][0]
