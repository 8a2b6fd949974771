"""Stage 5: the benchmark in the official LRS-VQA JSONL format, with a summary.

Questions that passed the quality check (all of them when stage 4 has not run) are
written with the official short-answer instruction, the target's ``hbox``/``rbox``
and ``image_size`` as ``[width, height]``, under ids ``{subset}_{n}`` that the
evaluation loaders read the subset from. ``summary.json`` counts questions per
category and per image-size bin, the numbers one reports for a new benchmark.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrsvqa.bench.construct.quality import collect_questions
from lrsvqa.bench.construct.store import (
    ANSWERS_FILE,
    EXPORT_FILE,
    QA_FILE,
    QUALITY_FILE,
    SUMMARY_FILE,
    read_jsonl,
    write_json,
)
from lrsvqa.bench.construct.targets import load_targets
from lrsvqa.bench.templates import lrsvqa_record
from lrsvqa.labels import LabeledObject
from lrsvqa.types import write_lrsvqa_jsonl

# Upper bounds (exclusive) of the longer image side; the paper's images reach 27,328 px.
SIZE_BINS: tuple[tuple[float, str], ...] = (
    (2048, "<2048"),
    (4096, "2048-4095"),
    (8192, "4096-8191"),
    (16384, "8192-16383"),
    (math.inf, ">=16384"),
)


@dataclass(frozen=True)
class ExportReport:
    """Where the benchmark went and how many questions it has."""

    path: Path
    questions: int
    summary: dict[str, Any]


def size_bin(height: int, width: int) -> str:
    """Image-size bin of an image by its longer side."""
    longest = max(height, width)
    return next(label for bound, label in SIZE_BINS if longest < bound)


def _tokens(records: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in records),
        "completion_tokens": sum(r.get("completion_tokens", 0) for r in records),
    }


def run_export(out_dir: Path, *, subset: str = "LRS", seed: int = 0) -> ExportReport:
    """Write ``lrs_vqa.jsonl`` and ``summary.json`` from the earlier stages' files.

    Cheap and deterministic, so it is simply redone on every run.

    Args:
        out_dir: Pipeline output folder.
        subset: Id prefix naming this benchmark part (like ``FAIR`` or ``STAR``).
        seed: Seed of the count-question wording, as given to stage 4.
    """
    quality_path = out_dir / QUALITY_FILE
    kept = (
        set(json.loads(quality_path.read_text(encoding="utf-8"))["kept_questions"])
        if quality_path.exists()
        else None
    )
    images: dict[str, dict[str, Any]] = {}
    targets: dict[str, dict[str, Any]] = {}
    for record in load_targets(out_dir):
        images[record["image"]] = record
        targets.update((t["target_id"], t) for t in record["targets"])
    records = []
    bins: Counter[str] = Counter()
    by_category_bin: Counter[tuple[str, str]] = Counter()
    for q in collect_questions(out_dir, seed=seed):
        if kept is not None and q.qid not in kept:
            continue
        image = images[q.image]
        bin_label = size_bin(image["height"], image["width"])
        bins[bin_label] += 1
        by_category_bin[(q.category, bin_label)] += 1
        records.append(
            lrsvqa_record(
                question_id=f"{subset}_{len(records) + 1}",
                image=q.image,
                category=q.category,
                question=q.question,
                answer=q.answer,
                image_size=(image["height"], image["width"]),
                obj=LabeledObject.from_dict(targets[q.target_id]) if q.target_id else None,
            )
        )
    path = out_dir / EXPORT_FILE
    write_lrsvqa_jsonl(records, path)
    summary = {
        "questions": len(records),
        "images": len({r["image"] for r in records}),
        "quality_checked": kept is not None,
        "per_category": dict(sorted(Counter(r["category"] for r in records).items())),
        "per_size_bin": {label: bins[label] for _, label in SIZE_BINS if bins[label]},
        "per_category_size_bin": {
            category: {
                label: by_category_bin[(category, label)]
                for _, label in SIZE_BINS
                if by_category_bin[(category, label)]
            }
            for category in sorted({category for category, _ in by_category_bin})
        },
        "qa_generation_tokens": _tokens(read_jsonl(out_dir / QA_FILE)),
        "answers_recorded": len(read_jsonl(out_dir / ANSWERS_FILE)),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    return ExportReport(path=path, questions=len(records), summary=summary)
