"""Run records: what made an answers file, kept beside it and checked before resuming.

``ANSWERS.jsonl`` has ``ANSWERS.run.json`` next to it: the benchmark and the question
file's SHA-256, the prompt, the strategy with all its options, the model and RFM
(path plus config and sampled weight hashes, :func:`lrsvqa.models.checkpoint.fingerprint`),
the scoring rule, and the lrsvqa version and commit with the torch and transformers
versions. A rerun resumes only when the parts that decide the answers
(:data:`IDENTITY`) are equal; otherwise it stops with a one-line error naming what
differs, so answers of two models or two settings never mix in one file. Reports
(``report.json``) carry the record too.

Not compared: the device (a resumed run may move to another GPU), the scoring rule
(it changes the report, not the answers), the git commit and the creation time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import lrsvqa
from lrsvqa.errors import RunMismatchError
from lrsvqa.models.checkpoint import fingerprint
from lrsvqa.models.placement import (
    AUTO,
    DEFAULT_DEVICE,
    checkpoint_dtype,
    resolve_device,
    resolve_dtype,
)
from lrsvqa.strategies.registry import strategy_entry
from lrsvqa.version import source_commit

RECORD_SUFFIX = ".run.json"
#: Options that are not part of the strategy's identity: where it runs, and the
#: model and RFM, which are compared by their fingerprints instead of their paths.
_NOT_IDENTITY_OPTIONS = ("device", "device_map", "model_path", "rfm_path")
#: Parts of a record that must be equal to resume.
IDENTITY = ("bench", "questions", "prompt", "strategy", "model", "rfm", "software")


def record_path(answers: Path) -> Path:
    """The run record of an answers file: ``a.jsonl`` -> ``a.run.json``."""
    answers = Path(answers)
    return answers.with_name(answers.stem + RECORD_SUFFIX)


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (paths and other objects as text)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def options_hash(options: Mapping[str, Any]) -> str:
    """Short hash of a strategy's options (device excluded) for default file names."""
    kept = {k: v for k, v in options.items() if k != "device"}
    encoded = json.dumps(_plain(kept), sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:8]


def default_output(bench: str, strategy: str, options: Mapping[str, Any]) -> Path:
    """``outputs/BENCH-MODEL-STRATEGY-HASH.jsonl``: one file per model and setting."""
    parts = [bench]
    model = options.get("model_path")
    if model:
        text = str(model).rstrip("/\\")
        parts.append(Path(text).name if Path(text).expanduser().exists() else text)
    parts += [strategy, options_hash(options)]
    name = "-".join(part.replace("/", "--").replace("\\", "--") for part in parts)
    return Path("outputs") / f"{name}.jsonl"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_run_record(
    *,
    bench: str,
    questions: Path,
    prompt: str,
    strategy: str,
    options: Mapping[str, Any],
    rule: str,
) -> dict[str, Any]:
    """The run record of one ``lrsvqa eval`` configuration (see the module docstring).

    The options are recorded as the strategy parses them, defaults filled in, so a
    value given as text on the command line and as a number from Python is one run.

    Raises:
        KeyError: Unknown strategy.
        ValueError: An option the strategy does not have or cannot parse.
    """
    model_options, own = strategy_entry(strategy).parse(options)
    options = dataclasses.asdict(model_options) | dataclasses.asdict(own)
    model = options.get("model_path")
    if "dtype" in options:
        options["dtype"] = resolved_dtype(options["dtype"], options.get("device"), model)
    rfm = options.get("rfm_path")
    return {
        "bench": bench,
        "questions": {"path": str(questions), "sha256": _file_sha256(questions)},
        "prompt": prompt,
        "strategy": {
            "name": strategy,
            "options": _plain({k: v for k, v in options.items() if k not in _NOT_IDENTITY_OPTIONS}),
        },
        "model": fingerprint(model) if model else None,
        "rfm": fingerprint(rfm) if rfm else None,
        "software": {
            "lrsvqa": lrsvqa.__version__,
            "torch": _version("torch"),
            "transformers": _version("transformers"),
        },
        "commit": source_commit(),
        "device": _plain(options.get("device")),
        "scoring_rule": rule,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def resolved_dtype(dtype: str, device: str | None, model: str | None) -> str:
    """The dtype a run computes in, as a plain name: ``auto`` resolved as the load resolves it.

    Recording ``auto`` would let a float32 run on the CPU resume a bfloat16 one on a GPU.
    """
    if dtype != AUTO:
        resolved = resolve_dtype(dtype)
    else:
        where = resolve_device(device or DEFAULT_DEVICE)
        stated = None
        if where.type != "cpu" and model:
            from transformers import AutoConfig

            try:
                stated = checkpoint_dtype(AutoConfig.from_pretrained(model))
            except (OSError, ValueError):
                stated = None  # the load itself reports a checkpoint it cannot read
        resolved = resolve_dtype(AUTO, where, stated)
    return str(resolved).removeprefix("torch.")


def _identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """The compared parts, with checkpoints compared by hash when they have one."""
    identity = {key: record.get(key) for key in IDENTITY}
    questions = identity["questions"] or {}
    identity["questions"] = questions.get("sha256")
    for key in ("model", "rfm"):
        value = identity[key]
        if value and (value.get("config_sha256") or value.get("weights_sha256")):
            identity[key] = {k: v for k, v in value.items() if k != "path"}
    return identity


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two records' identities, in words, most telling first."""
    a, b = _identity(old), _identity(new)
    found = []
    for key in IDENTITY:
        if a[key] == b[key]:
            continue
        if key == "questions":
            found.append("the question file's content")
        elif key in ("model", "rfm") and a[key] and b[key]:
            fields = ("config_sha256", "weights_sha256", "path")
            parts = [p.replace("_sha256", "") for p in fields if a[key].get(p) != b[key].get(p)]
            found.append(f"{key} ({', '.join(parts)} differ)")
        elif key == "strategy" and a[key] and b[key] and a[key]["name"] == b[key]["name"]:
            left, right = a[key]["options"], b[key]["options"]
            changed = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
            found += [f"option {k}: {left.get(k)!r} -> {right.get(k)!r}" for k in changed]
        elif key == "software":
            changed = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
            found += [f"{k} {a[key].get(k)} -> {b[key].get(k)}" for k in changed]
        else:
            found.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return found


def read_run_record(answers: Path) -> dict[str, Any] | None:
    """The record beside ``answers``, or ``None`` when there is none.

    Raises:
        RunMismatchError: The record exists but is not a JSON object.
    """
    path = record_path(answers)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunMismatchError(path, f"unreadable run record ({exc})") from None
    if not isinstance(record, dict):
        raise RunMismatchError(path, "unreadable run record (not a JSON object)")
    return record


def check_resume(answers: Path, record: Mapping[str, Any], *, has_answers: bool) -> None:
    """Refuse to add this run's answers to a file another run made.

    Raises:
        RunMismatchError: ``answers`` holds answers and its record is missing or
            differs; the message names what differs and how to start a new file.
    """
    if not has_answers:
        return
    how = f"give --out NEW.jsonl for a new file, or delete {answers} and its {RECORD_SUFFIX}"
    old = read_run_record(answers)
    if old is None:
        raise RunMismatchError(
            answers, f"has answers but no run record {record_path(answers).name}; {how}"
        )
    diffs = differences(old, record)
    if diffs:
        raise RunMismatchError(answers, f"made by another run ({'; '.join(diffs)}); {how}")


def write_run_record(answers: Path, record: Mapping[str, Any]) -> None:
    """Write the record beside ``answers`` atomically."""
    path = record_path(answers)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def merge_run_records(shards: Sequence[Path], output: Path) -> None:
    """Give a merged file its shards' record; refuse shards of different runs.

    Shards without records (written by other tools) leave the output without one.

    Raises:
        RunMismatchError: Two shards' records differ.
    """
    records = [read_run_record(shard) for shard in shards]
    if any(record is None for record in records):
        return
    first = records[0]
    for shard, record in zip(shards[1:], records[1:], strict=True):
        diffs = differences(first, record)
        if diffs:
            raise RunMismatchError(shard, f"another run than {shards[0]} ({'; '.join(diffs)})")
    write_run_record(output, first)
