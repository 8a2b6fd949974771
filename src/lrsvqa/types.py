"""Types every floor shares: pixel boxes and the LRS-VQA question record.

Nothing here imports the rest of the package but :mod:`lrsvqa.errors`, so imagery,
models, strategies, the benchmark tools, the synthetic world and the application
speak the same types without importing one another.

The LRS-VQA record is one JSON object a line, as in the official
``LRS_VQA_merged.jsonl``. One rule for reading and writing it, whatever made it (the
official file, ``lrsvqa make-qa``, ``lrsvqa build-bench``, the synthetic benchmark):

* required: ``question_id`` (unique in the file; its prefix before the last ``_`` is
  the subset), ``image`` (path relative to the data root), ``category``, ``text`` (the
  prompt, answer-format instruction included), ``ground_truth``;
* optional, checked when present: ``image_size`` (``[width, height]`` in pixels; every
  official and every generated record carries it, evaluation does not need it) and
  ``hbox`` (``[x0, y0, x1, y1]`` of the object asked about, or empty);
* anything else (``rbox``, ``abs_size``, ...) is kept as it is.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lrsvqa.errors import InputFileError

#: ``(x0, y0, x1, y1)`` in original-image pixels, ``y`` pointing down.
Box = tuple[float, float, float, float]

LRSVQA_REQUIRED_KEYS = ("question_id", "image", "category", "text", "ground_truth")


def check_lrsvqa_record(record: Any) -> None:
    """Check one record against the rule above.

    Raises:
        ValueError: One line naming what is wrong.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"not a JSON object: {type(record).__name__}")
    missing = [key for key in LRSVQA_REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"missing {missing}")
    for key in LRSVQA_REQUIRED_KEYS:  # never read null as the text "None"
        value = record[key]
        if value is None:
            raise ValueError(f"{key} is null")
        if isinstance(value, Mapping | list | bool):
            raise ValueError(f"{key} is a {type(value).__name__}, expected text or a number")
        if not str(value).strip():
            raise ValueError(f"{key} is empty")
    size = record.get("image_size")
    if size is not None and not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"image_size must be [width, height] in pixels, got {size!r}")
    box = record.get("hbox")
    if box and not (
        isinstance(box, list | tuple)
        and len(box) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    ):
        raise ValueError(f"hbox must be [x0, y0, x1, y1], got {box!r}")


def read_lrsvqa_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of an LRS-VQA JSONL file, checked (blank lines skipped).

    A leading byte-order mark is accepted; lines are split on line ends only, never
    inside a JSON string.

    Raises:
        InputFileError: ``PATH:LINE: reason`` for a line that is not UTF-8 or JSON,
            breaks the rule or repeats a ``question_id`` (answer files are keyed by it).
    """
    records, seen = [], set()
    data = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputFileError(where, f"not UTF-8 text (byte {error.start})") from None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputFileError(where, f"not JSON ({error})") from None
        try:
            check_lrsvqa_record(record)
        except ValueError as error:
            raise InputFileError(where, str(error)) from None
        question_id = str(record["question_id"])
        if question_id in seen:
            raise InputFileError(where, f"duplicate question_id {question_id!r}")
        seen.add(question_id)
        records.append(record)
    return records


def write_lrsvqa_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write records one JSON object a line, checked as the reader checks them.

    Returns:
        How many were written.

    Raises:
        ValueError: ``record N: reason``; nothing is written then.
    """
    lines, seen = [], set()
    for number, record in enumerate(records, start=1):
        try:
            check_lrsvqa_record(record)
        except ValueError as error:
            raise ValueError(f"record {number}: {error}") from None
        question_id = str(record["question_id"])
        if question_id in seen:
            raise ValueError(f"record {number}: duplicate question_id {question_id!r}")
        seen.add(question_id)
        lines.append(json.dumps(dict(record), ensure_ascii=False) + "\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)
