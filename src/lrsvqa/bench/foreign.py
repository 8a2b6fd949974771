"""Answers written by other evaluation tools, read into records ``lrsvqa score`` scores.

Two formats besides the project's own JSON Lines (and MME-RealWorld's JSON list,
:func:`lrsvqa.bench.answers.read_any_answers`):

* **lmms-eval sample logs** (``--log_samples``: ``*_samples_<task>.jsonl``), one JSON
  object per line with ``doc_id``, ``target`` and the model's answer in
  ``filtered_resps`` or ``resps`` (a string, or a nested list of strings; the first
  string is the answer). Older releases also keep ``doc``; newer ones drop it, and then
  the facts are read from a metric value holding a ``question_id`` (as the lrsvqa tasks'
  metrics do, :mod:`lrsvqa.integrations.lmms_eval.task`). The question id is the doc's
  ``question_id`` (or ``Question_id``), else the ``doc_id``, which against a question
  file is the question's position in it (lmms-eval numbers the docs of its split in
  order, :func:`align_doc_ids`). Told apart
  from a project answers file by its first record having ``doc_id`` and a response.
* **VLMEvalKit prediction files** (``<model>_<dataset>.xlsx``, or ``.tsv`` / ``.csv``),
  a table with columns ``index``, ``question``, ``answer`` (the ground truth),
  ``prediction`` and often ``category``; single-letter columns ``A``, ``B``, ... are the
  options of a multiple-choice item. A ``question_id`` column, when present, is the id
  (else ``index``). xlsx needs openpyxl (``pip install 'lrsvqa[xlsx]'``).

Records carry ``prediction`` and, when the file has them, ``ground_truth``,
``category``, ``subset`` and ``choices``, the fields
:func:`lrsvqa.bench.scoring.score_record` reads.
"""

from __future__ import annotations

import csv
import json
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lrsvqa.bench.answers import AnswerFileError, read_any_answers
from lrsvqa.bench.datasets import BenchItem, subset_of

#: Table suffixes read as VLMEvalKit prediction files.
TABLE_SUFFIXES = (".xlsx", ".tsv", ".csv")
#: Columns a VLMEvalKit prediction file must have.
VLMEVALKIT_COLUMNS = ("index", "prediction")
#: Key set on lmms-eval records whose id is the ``doc_id`` (no doc in the log).
POSITIONAL = "lmms_doc_id"
_RESPONSE_KEYS = ("filtered_resps", "resps")


def read_scorable(path: Path) -> list[dict[str, Any]]:
    """Every answer record of ``path``, whichever tool wrote it (by suffix and content).

    Raises:
        AnswerFileError: Missing or unreadable file, or a bad line or row
            (``file:line: problem``).
    """
    path = Path(path)
    if not path.is_file():
        raise AnswerFileError(path, "no such file" if not path.exists() else "not a file")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return read_vlmevalkit(path)
    if is_lmms_eval_log(path):
        return read_lmms_eval(path)
    return read_any_answers(path)


def is_lmms_eval_log(path: Path) -> bool:
    """Whether the first non-empty line of ``path`` is an lmms-eval sample record."""
    with Path(path).open("rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    first = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return False
                return (
                    isinstance(first, dict)
                    and "doc_id" in first
                    and any(key in first for key in _RESPONSE_KEYS)
                )
    return False


def read_lmms_eval(path: Path) -> list[dict[str, Any]]:
    """Records of an lmms-eval ``--log_samples`` JSON Lines file.

    Raises:
        AnswerFileError: ``file:line`` of a line that is not a JSON object, lacks
            ``doc_id``, or has no text response (a log-likelihood task).
    """
    path = Path(path)
    task = path.stem.rpartition("_samples_")[2] or path.stem
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            sample = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnswerFileError(where, f"not a JSON line ({exc})") from None
        if not isinstance(sample, dict):
            raise AnswerFileError(where, "not a JSON object")
        if sample.get("doc_id") is None:
            raise AnswerFileError(where, "no doc_id (not an lmms-eval sample record)")
        records.append(_lmms_record(sample, where, task))
    return records


def _lmms_record(sample: Mapping[str, Any], where: str, task: str) -> dict[str, Any]:
    """One lmms-eval sample as a scorable record."""
    prediction = None
    for key in _RESPONSE_KEYS:
        if key in sample:
            prediction = _first_text(sample[key])
            if prediction is not None:
                break
    if prediction is None:
        raise AnswerFileError(where, "no text answer in filtered_resps or resps")
    doc = sample.get("doc") if isinstance(sample.get("doc"), Mapping) else None
    if doc is None:  # newer logs drop the doc; an lrsvqa task's metrics carry the facts
        doc = next(
            (v for v in sample.values() if isinstance(v, Mapping) and "question_id" in v), {}
        )
    question_id = doc.get("question_id", doc.get("Question_id"))
    record: dict[str, Any] = {"prediction": prediction}
    if question_id is None:
        try:
            doc_id = int(sample["doc_id"])
        except (TypeError, ValueError):
            raise AnswerFileError(where, f"doc_id {sample['doc_id']!r} is not a number") from None
        question_id, record[POSITIONAL] = str(doc_id), doc_id
    record["question_id"] = str(question_id)
    target = sample.get("target")
    truth = doc.get("ground_truth", doc.get("Ground truth", target))
    if truth is not None and str(truth) not in ("", "None"):
        record["ground_truth"] = str(truth)
    for name, keys in (
        ("category", ("category", "Category")),
        ("subset", ("subset", "Subtask")),
        ("choices", ("choices", "Answer choices", "options")),
    ):
        value = next((doc[key] for key in keys if doc.get(key) is not None), None)
        if value is not None:
            record[name] = value
    if "subset" not in record and "choices" not in record:
        question_id = record["question_id"]
        record["subset"] = subset_of(question_id) if "_" in question_id else task
    return record


def _first_text(value: Any) -> str | None:
    """The first string of a response, descending into nested lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        for entry in value:
            text = _first_text(entry)
            if text is not None:
                return text
    return None


def align_doc_ids(records: Iterable[Mapping[str, Any]], items: Sequence[BenchItem], source: Path):
    """Records whose lmms-eval ``doc_id`` stands for an id given the question at that position.

    Raises:
        AnswerFileError: A ``doc_id`` past the end of the question list.
    """
    aligned = []
    for record in records:
        record = dict(record)
        if POSITIONAL in record:
            position = record.pop(POSITIONAL)
            if not 0 <= position < len(items):
                raise AnswerFileError(
                    source,
                    f"doc_id {position} is outside the {len(items)} questions of --questions "
                    "(its doc has no question_id, so doc_id counts the questions in order)",
                )
            record["question_id"] = items[position].question_id
        aligned.append(record)
    return aligned


def read_vlmevalkit(path: Path) -> list[dict[str, Any]]:
    """Records of a VLMEvalKit prediction table (.xlsx, .tsv or .csv).

    Raises:
        AnswerFileError: openpyxl missing for .xlsx, an unreadable file, a missing
            column (``file:1``), or a row without an index (``file:line``).
    """
    path = Path(path)
    rows = _xlsx_rows(path) if path.suffix.lower() == ".xlsx" else _text_rows(path)
    header_line, header = next(rows, (1, None))
    if not header:
        raise AnswerFileError(f"{path}:1", "empty table (no header row)")
    columns = [str(name).strip() if name is not None else "" for name in header]
    id_column = "question_id" if "question_id" in columns else "index"
    missing = [name for name in VLMEVALKIT_COLUMNS if name not in columns]
    if missing:
        raise AnswerFileError(
            f"{path}:{header_line}",
            f"no column {', '.join(missing)} (a VLMEvalKit prediction file has index, "
            f"question, answer, prediction; this one has {', '.join(filter(None, columns))})",
        )
    letters = [c for c in columns if len(c) == 1 and c in string.ascii_uppercase]
    records = []
    for line, cells in rows:
        row = dict(zip(columns, (_cell(value) for value in cells), strict=False))
        if not any(row.values()):
            continue
        question_id = row.get(id_column, "")
        if not question_id:
            raise AnswerFileError(f"{path}:{line}", f"no {id_column}")
        record: dict[str, Any] = {
            "question_id": question_id,
            "prediction": row.get("prediction", ""),
        }
        if row.get("question"):
            record["question"] = row["question"]
        if row.get("answer"):
            record["ground_truth"] = row["answer"]
        if row.get("category"):
            record["category"] = row["category"]
        options = {letter: row[letter] for letter in letters if row.get(letter)}
        if options:
            record["choices"] = options
        if row.get("subset"):
            record["subset"] = row["subset"]
        elif not options:
            record["subset"] = subset_of(question_id) if "_" in question_id else path.stem
        records.append(record)
    return records


def _cell(value: Any) -> str:
    """A table cell as text: empty for blanks, NaN and None; ``3`` for a float 3.0."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN, as pandas writes a missing prediction
            return ""
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return "" if text.lower() == "nan" else text


def _text_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    """(line, cells) of a .tsv or .csv file, header first."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(1 << 30)  # VLMEvalKit tables may hold base64 images
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            start = 1
            for cells in reader:
                yield start, cells
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise AnswerFileError(path, f"not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise AnswerFileError(f"{path}:{start}", f"bad {path.suffix[1:]} row ({exc})") from None


def _xlsx_rows(path: Path) -> Iterable[tuple[int, Sequence[Any]]]:
    """(row, cells) of the first sheet of an .xlsx file, header first."""
    try:
        import openpyxl
    except ImportError:
        raise AnswerFileError(
            path, "reading .xlsx needs openpyxl: pip install 'lrsvqa[xlsx]' (or save it as .tsv)"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError, ... on a bad file
        problem = f"not an .xlsx workbook ({type(exc).__name__}: {exc})"
        raise AnswerFileError(path, problem) from None
    try:
        yield from enumerate(book.worksheets[0].iter_rows(values_only=True), start=1)
    finally:
        book.close()
