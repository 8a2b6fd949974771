"""Append-only JSONL stage files: what makes every stage resumable.

Each finished item is appended and flushed as soon as it is done, so a crash loses at
most the item in flight; a rerun reads the file back and skips finished items.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from lrsvqa.errors import InputFileError

logger = logging.getLogger(__name__)

TARGETS_FILE = "targets.jsonl"
CROPS_FILE = "crops.jsonl"
QA_FILE = "qa.jsonl"
ANSWERS_FILE = "answers.jsonl"
QUALITY_FILE = "quality.json"
QUALITY_PLOT = "quality.png"
EXPORT_FILE = "lrs_vqa.jsonl"
SUMMARY_FILE = "summary.json"
CROPS_DIR = "crops"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a stage file; an absent file is an empty stage.

    A truncated *last* line (the process was killed mid-write) is skipped with a
    warning, since that item simply was not finished; a bad line elsewhere means the
    file was edited or corrupted and is an error.

    Raises:
        ValueError: Naming the file and line of a corrupt record.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if lineno == len(lines):
                logger.warning("%s: ignoring unfinished last line", path)
                break
            raise InputFileError(f"{path}:{lineno}", f"corrupt record: {err}") from err
    return records


def latest(
    records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable]
) -> dict[Hashable, dict[str, Any]]:
    """Last record per key: a retried item's newer outcome replaces the older one."""
    out: dict[Hashable, dict[str, Any]] = {}
    for record in records:
        out[key(record)] = record
    return out


def _drop_unfinished_line(path: Path) -> None:
    """Cut a partial last line left by a killed run, so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


class JsonlAppender:
    """Thread-safe appender so concurrent workers can each record their result."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_unfinished_line(path)
        self._fh = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._fh.close()


def write_json(path: Path, data: Any) -> None:
    """Write a whole-stage result (not resumable, cheap to recompute) atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
