"""Data: the synthetic example schema and its JSONL files, and readers for the benchmark layouts in ../shared/data
(BEIR, STS Benchmark, SICK, classification CSV, Tatoeba and FLORES bitext). Training pairs: training/data.py.

    from synthembed.data import Example, read_examples, read_beir
    examples = read_examples("runs/gen/examples.jsonl")
    corpus, queries, qrels = read_beir("../shared/data/beir/scifact", split="test")

Every reader raises SynthembedError naming the file and line at fault, never a bare KeyError.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SynthembedError

# The task groups as a type for pydantic; tests/test_taskgroups.py keeps it equal to taskgroups.TASK_TYPES.
TaskType = Literal["short-long", "long-short", "short-short", "long-long", "sts", "bitext"]


class ExampleMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    placeholders: dict[str, Any] = Field(default_factory=dict, description="the placeholder values sampled into the prompt")
    model: str = Field("", description="the LLM that wrote the example")
    prompt_sha256: str = Field("", description="sha256 of the generation prompt's messages, for provenance")


class Example(BaseModel):
    """One accepted synthetic example, one line of examples.jsonl (docs/design.md, "Data formats")."""

    model_config = ConfigDict(extra="forbid")

    id: str
    task_type: TaskType
    task: str = Field(description="the task definition; it becomes the query's instruction")
    language: str
    query: str
    positive: str
    negative: str | None = Field(None, description="the hard negative; null where the group has none")
    fields: dict[str, Any] = Field(default_factory=dict, description="the JSON object the model returned")
    meta: ExampleMeta = Field(default_factory=ExampleMeta)


def format_query(task: str | None, query: str) -> str:
    """The paper's query side: `Instruct: {task}\\nQuery: {query}`; without a task the query stays plain (section 3.1)."""
    return f"Instruct: {task}\nQuery: {query}" if task else query


# --- JSONL ----------------------------------------------------------------------------------------------------------


def read_text(path: str | Path) -> str:
    """A data file's text; a byte that is not UTF-8 is a SynthembedError naming the file and the line.

    >>> read_text("/dev/null")
    ''
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, line_start = data.count(b"\n", 0, err.start) + 1, data.rfind(b"\n", 0, err.start) + 1
        raise SynthembedError(
            f"{path}, line {line}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start - line_start} of "
            "the line)"
        ) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line raises naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SynthembedError(f"{path}: no such file")
    with path.open("rb") as handle:  # decoded line by line, so a byte that is not UTF-8 is reported with its line
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SynthembedError(
                    f"{path}, line {number}: not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise SynthembedError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise SynthembedError(f"{path}, line {number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def read_examples(path: str | Path) -> list[Example]:
    """examples.jsonl as validated Examples; a missing field or a wrong value names the file, line and field."""
    examples = []
    for number, obj in iter_jsonl(path):
        try:
            examples.append(Example.model_validate(obj))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise SynthembedError(f"{path}, line {number}: {where}: {first['msg']}") from None
    return examples


def write_jsonl(path: str | Path, rows: Iterable[BaseModel | dict[str, Any]], append: bool = False) -> int:
    """Write rows (models or dicts) one JSON object per line, flushed, so a killed writer leaves whole lines behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for row in rows:
            obj = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
        handle.flush()
    return count


# --- benchmark layouts ------------------------------------------------------------------------------------------------


def read_beir(
    directory: str | Path, split: str = "test"
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """A BEIR folder: corpus {id: {"title", "text"}}, queries {id: text} (only those with qrels), qrels {qid: {did: score}}.

    The qrels file may or may not have a header line (msmarco_subset has none).
    """
    directory = Path(directory)
    qrels_path = directory / "qrels" / f"{split}.tsv"
    for needed in (directory / "corpus.jsonl", directory / "queries.jsonl", qrels_path):
        if not needed.is_file():
            raise SynthembedError(f"{directory} is not a BEIR folder: {needed.relative_to(directory)} is missing")
    corpus = {}
    for number, row in iter_jsonl(directory / "corpus.jsonl"):
        if "_id" not in row:
            raise SynthembedError(f"{directory / 'corpus.jsonl'}, line {number}: no _id")
        corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row.get("text") or ""}
    all_queries = {}
    for number, row in iter_jsonl(directory / "queries.jsonl"):
        if "_id" not in row or "text" not in row:
            raise SynthembedError(f"{directory / 'queries.jsonl'}, line {number}: needs _id and text")
        all_queries[str(row["_id"])] = row["text"]
    qrels: dict[str, dict[str, int]] = {}
    with io.StringIO(read_text(qrels_path), newline=None) as handle:  # lines as a text-mode file gives them
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(parts) < 3:
                raise SynthembedError(f"{qrels_path}, line {number}: expected query-id, corpus-id, score")
            try:
                score = int(float(parts[-1]))
            except ValueError:
                if number == 1:
                    continue  # the header line
                raise SynthembedError(f"{qrels_path}, line {number}: score {parts[-1]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[-2]] = score
    queries = {qid: all_queries[qid] for qid in qrels if qid in all_queries}
    return corpus, queries, qrels


def beir_document(doc: dict[str, str]) -> str:
    """A BEIR document as retrieval sees it: "title text" (MTEB's protocol).

    >>> beir_document({"title": "T", "text": "x"})
    'T x'
    """
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def read_sts(path: str | Path) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score) from the STS Benchmark files (tab-separated, score in column 5, sentences in 6 and 7,
    no quoting, sometimes extra trailing columns) or SICK.txt (header; sentence_A, sentence_B, relatedness_score)."""
    path = Path(path)
    if not path.is_file():
        raise SynthembedError(f"{path}: no such file")
    rows = []
    lines = read_text(path).splitlines()
    is_sick = bool(lines) and lines[0].startswith("pair_ID")
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (is_sick and number == 1):
            continue
        parts = line.split("\t")
        try:
            if is_sick:
                rows.append((parts[1], parts[2], float(parts[3])))
            else:
                rows.append((parts[5], parts[6], float(parts[4])))
        except (IndexError, ValueError):
            raise SynthembedError(f"{path}, line {number}: not an STS row (score, sentence 1, sentence 2)") from None
    return rows


def read_classification(path: str | Path) -> list[tuple[str, str]]:
    """(text, label) rows in file order from a CSV with the header `text,category`."""
    path = Path(path)
    if not path.is_file():
        raise SynthembedError(f"{path}: no such file")
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"text", "category"} <= set(reader.fieldnames):
            raise SynthembedError(f"{path}: expected the header text,category, found {reader.fieldnames}")
        rows = []
        for number, row in enumerate(reader, start=2):
            if row["text"] is None or row["category"] is None:
                raise SynthembedError(f"{path}, line {number}: needs text and category")
            rows.append((row["text"], row["category"]))
    return rows


def read_tatoeba(directory: str | Path) -> dict[str, tuple[list[str], list[str]]]:
    """{xxx: (sentences in xxx, their English translations)} from tatoeba.<xxx>-eng.<xxx> beside tatoeba.<xxx>-eng.eng."""
    directory = Path(directory)
    pairs = {}
    for source in sorted(directory.glob("tatoeba.*-eng.*")):
        lang = source.name.split(".")[1].split("-")[0]
        if source.suffix == ".eng" or lang in pairs:
            continue
        english = directory / f"tatoeba.{lang}-eng.eng"
        if not english.is_file():
            raise SynthembedError(f"{source}: its English side {english.name} is missing")
        left = read_text(source).splitlines()
        right = read_text(english).splitlines()
        if len(left) != len(right):
            raise SynthembedError(f"{source.name} has {len(left)} lines but {english.name} has {len(right)}")
        pairs[lang] = (left, right)
    if not pairs:
        raise SynthembedError(f"{directory}: no tatoeba.<xxx>-eng.<xxx> files")
    return pairs


def read_flores(directory: str | Path, split: str = "devtest") -> dict[str, list[str]]:
    """{lang_Script: sentences} from FLORES files (<lang_Script>.<split>, one sentence a line, aligned across languages)."""
    directory = Path(directory)
    files = sorted(directory.glob(f"*.{split}"))
    if not files:
        raise SynthembedError(f"{directory}: no *.{split} FLORES files")
    sentences = {f.name[: -len(split) - 1]: read_text(f).splitlines() for f in files}
    lengths = {len(v) for v in sentences.values()}
    if len(lengths) != 1:
        raise SynthembedError(f"{directory}: FLORES files are not line-aligned (line counts {sorted(lengths)})")
    return sentences
