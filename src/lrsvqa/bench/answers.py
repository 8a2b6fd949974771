"""Answer files: crash-safe JSON Lines, one record per question, resumable and mergeable.

A record is written as one ``write`` of one line, then flushed and fsynced, so after
a crash (even ``kill -9`` or power loss) the file holds every answer that was
reported done plus at most one torn last line, which has no final newline. Opening
the file for a new run cuts that fragment off, so a rerun neither loses nor
duplicates an item. A ``flock`` keeps two runs from appending to the same file.

Sharded runs write one file per rank (:func:`shard_path`); :func:`merge_answer_files`
concatenates them in rank order into one answers file.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from lrsvqa.errors import InputFileError


class AnswerFileError(InputFileError):
    """An answer file is corrupt, locked by another run, or its shards are incomplete."""


def load_answers(path: Path, *, finished: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Records of an answer file and the byte length of its complete lines.

    For the project's own logs (``finished=False``) a trailing fragment without a
    newline is a torn write, the only damage a crash can do, and is ignored. A
    finished file from anywhere (``finished=True``, what ``lrsvqa score`` reads) may
    simply lack its final newline: its last line counts like the others.

    Raises:
        AnswerFileError: A line is not a JSON object with a non-null ``question_id``;
            the message gives ``file:line``.
    """
    data = path.read_bytes() if path.exists() else b""
    end = len(data) if finished else data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnswerFileError(f"{path}:{number}", f"not a JSON line ({exc})") from None
        if not isinstance(record, dict) or record.get("question_id") is None:
            raise AnswerFileError(f"{path}:{number}", "no question_id")
        records.append(record)
    return records, end


def read_answers(path: Path) -> list[dict[str, Any]]:
    """Records of an answer file, first record per ``question_id``, torn tail ignored."""
    return unique_records(load_answers(Path(path))[0])


def read_any_answers(path: Path) -> list[dict[str, Any]]:
    """Every record of a finished JSON Lines answer file or of a JSON list (MME-RealWorld).

    Duplicates are kept (the scorer reports them); in a JSON list, ``Question_id`` is
    accepted for ``question_id``.

    Raises:
        AnswerFileError: Missing file, a corrupt JSONL line, or a bad JSON list entry.
    """
    path = Path(path)
    if not path.is_file():
        raise AnswerFileError(path, "no such file" if not path.exists() else "not a file")
    if path.suffix.lower() != ".json":
        return load_answers(path, finished=True)[0]
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnswerFileError(path, f"not a JSON file ({exc})") from None
    if not isinstance(rows, list):
        raise AnswerFileError(path, "expected a JSON list of answers")
    records = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise AnswerFileError(path, f"entry {index} is not a JSON object")
        question_id = row.get("question_id", row.get("Question_id"))
        if question_id is None:
            raise AnswerFileError(path, f"entry {index} has no question_id")
        records.append({**row, "question_id": question_id})
    return records


def unique_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with the first one kept for each ``question_id``."""
    seen: set[str] = set()
    unique = []
    for record in records:
        question_id = str(record["question_id"])
        if question_id not in seen:
            seen.add(question_id)
            unique.append(dict(record))
    return unique


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One answer-file line."""
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class AnswerLog:
    """An answer file opened for appending by one run.

    Opening locks the file, drops a torn last line and loads what is done. Use it as
    a context manager so the lock is released.

    Attributes:
        path: The answer file.
        records: Records in the file, in order (appended ones included).
        done: ``question_id`` of every record.
        dropped_bytes: Size of the torn fragment removed on opening.
    """

    def __init__(self, path: Path, *, drop_errors: bool = False) -> None:
        """Open (creating) ``path``; with ``drop_errors`` errored records are removed.

        Removing errored records lets a rerun retry them; it rewrites the file
        through a temporary file and an atomic rename, so a crash keeps either the
        old or the new file.

        Raises:
            AnswerFileError: Another process holds the file, or it is corrupt.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open_locked()
        try:
            self.records = self._repair(drop_errors)
        except BaseException:
            self._file.close()
            raise
        self.done = {str(record["question_id"]) for record in self.records}

    def _repair(self, drop_errors: bool) -> list[dict[str, Any]]:
        """Cut a torn last line (and errored records on request); return the records."""
        records, end = load_answers(self.path)
        self.dropped_bytes = os.fstat(self._file.fileno()).st_size - end
        if self.dropped_bytes:
            os.ftruncate(self._file.fileno(), end)
            os.fsync(self._file.fileno())
        if drop_errors and any(record.get("error") for record in records):
            records = [record for record in records if not record.get("error")]
            write_answers_atomic(self.path, records)
            self._file.close()
            self._file = self._open_locked()
        return records

    def _open_locked(self) -> BinaryIO:
        """Open the file for appending and take its exclusive lock."""
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise AnswerFileError(self.path, "is being written by another run") from exc
        return handle

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record durably (flushed and fsynced before returning)."""
        self._file.write(encode_record(record))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(dict(record))
        self.done.add(str(record["question_id"]))

    def close(self) -> None:
        """Release the lock and close the file."""
        self._file.close()

    def __enter__(self) -> AnswerLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def write_answers_atomic(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace ``path`` with ``records`` so readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            for record in records:
                handle.write(encode_record(record))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def shard_path(output: Path, rank: int, world_size: int) -> Path:
    """Answer file of one rank: ``answers.jsonl`` -> ``answers.rank1-of-4.jsonl``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rank{rank}-of-{world_size}{output.suffix}")


def find_shards(output: Path) -> list[Path]:
    """The per-rank files of ``output``, in rank order.

    Raises:
        AnswerFileError: None found, several world sizes, or a rank missing.
    """
    output = Path(output)
    pattern = re.compile(
        rf"^{re.escape(output.stem)}\.rank(\d+)-of-(\d+){re.escape(output.suffix)}$"
    )
    found: dict[int, dict[int, Path]] = {}
    for candidate in output.parent.glob(f"{output.stem}.rank*-of-*{output.suffix}"):
        match = pattern.match(candidate.name)
        if match:
            rank, world = int(match.group(1)), int(match.group(2))
            found.setdefault(world, {})[rank] = candidate
    if not found:
        expected = f"{output.stem}.rankR-of-N{output.suffix}"
        raise AnswerFileError(output, f"no shard files {expected} in {output.parent}")
    if len(found) > 1:
        sizes = ", ".join(str(size) for size in sorted(found))
        raise AnswerFileError(output, f"shards of several world sizes ({sizes})")
    world, ranks = next(iter(found.items()))
    missing = sorted(set(range(world)) - set(ranks))
    if missing:
        raise AnswerFileError(output, f"missing shard ranks {missing} of {world}")
    return [ranks[rank] for rank in range(world)]


def merge_answer_files(shards: Sequence[Path], output: Path) -> int:
    """Concatenate shard answer files (in the given order) into ``output``.

    Shards hold contiguous slices of the question list, so rank order is the
    question order of a single-process run. A ``question_id`` seen twice keeps its
    first record. The shards' run record goes with them (shards of different runs are
    refused, :func:`lrsvqa.bench.run_record.merge_run_records`).

    Returns:
        Number of records written.

    Raises:
        AnswerFileError: A shard file is missing or not a file (merging it as empty
            would silently drop a rank's answers).
    """
    from lrsvqa.bench.run_record import merge_run_records

    for shard in shards:
        if not Path(shard).is_file():
            problem = "not a file" if Path(shard).exists() else "no such file"
            raise AnswerFileError(shard, f"{problem} (a shard to merge)")
    records = unique_records(record for shard in shards for record in load_answers(shard)[0])
    write_answers_atomic(output, records)
    merge_run_records(shards, output)
    return len(records)
