"""Stage 1: objects a unique reference can name, found from detection labels.

Writes one ``targets.jsonl`` record per image: its size, per-category object counts
(for count questions) and the chosen targets with their reference text. Images
already in the file are skipped on a rerun.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrsvqa.bench.construct.store import TARGETS_FILE, JsonlAppender, read_jsonl
from lrsvqa.bench.templates import (
    DEFAULT_MARGINS,
    UniquenessMargins,
    UniqueReference,
    find_unique_references,
    labelled_image_size,
)
from lrsvqa.errors import InputFileError
from lrsvqa.labels import (
    ImageLabels,
    LabeledObject,
    LabelFormat,
    find_image,
    guess_format,
    iter_label_files,
    read_labels,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetsReport:
    """What stage 1 did: images newly processed, skipped as done, and targets found."""

    images: int
    skipped: int
    targets: int


def choose_targets(
    objects: Sequence[LabeledObject],
    *,
    margins: UniquenessMargins,
    max_targets: int,
    rng: random.Random,
) -> list[tuple[int, UniqueReference, list[str]]]:
    """Pick up to ``max_targets`` nameable objects, each with one reference to use.

    Objects flagged ``difficult`` are never picked: a question about an object the
    annotators could barely see would test the labels, not the model.

    Returns:
        ``(object index, chosen reference, all reference texts)`` sorted by index.
    """
    by_object: dict[int, list[UniqueReference]] = defaultdict(list)
    for ref in find_unique_references(objects, margins=margins):
        if not objects[ref.index].attributes.get("difficult"):
            by_object[ref.index].append(ref)
    picked = sorted(rng.sample(sorted(by_object), min(max_targets, len(by_object))))
    return [(i, rng.choice(by_object[i]), [r.text for r in by_object[i]]) for i in picked]


def _image_record(
    labels: ImageLabels,
    image: Path,
    images_dir: Path,
    *,
    margins: UniquenessMargins,
    max_targets: int,
    seed: int,
) -> dict[str, Any]:
    height, width = labelled_image_size(image, labels.image_size)
    rng = random.Random(f"{seed}:{labels.name}")
    targets = []
    for n, (index, ref, texts) in enumerate(
        choose_targets(labels.objects, margins=margins, max_targets=max_targets, rng=rng),
        start=1,
    ):
        obj = labels.objects[index]
        targets.append(
            {
                "target_id": f"{labels.name}-{n}",
                "reference": ref.text,
                "references": texts,
                **obj.to_dict(),
            }
        )
    return {
        "name": labels.name,
        "image": image.relative_to(images_dir).as_posix(),
        "height": height,
        "width": width,
        "counts": dict(sorted(Counter(o.category for o in labels.objects).items())),
        "targets": targets,
    }


def run_targets(
    images_dir: Path,
    labels_path: Path,
    out_dir: Path,
    *,
    fmt: LabelFormat | None = None,
    margins: UniquenessMargins = DEFAULT_MARGINS,
    max_targets_per_image: int = 8,
    seed: int = 0,
) -> TargetsReport:
    """Find targets in every labelled image not yet in ``targets.jsonl``.

    Args:
        images_dir: Folder of the large images; paths are stored relative to it.
        labels_path: A label file or a folder of them.
        out_dir: Pipeline output folder.
        fmt: Label format; ``None`` guesses each file's from its suffix.
        margins: How clearly a reference must single out its object.
        max_targets_per_image: Cap on targets per image (a random, seeded subset),
            so one crowded harbour does not dominate the benchmark.
        seed: Base seed; each image derives its own from it and its name.

    Raises:
        InputFileError: If two label files share a name (target ids would collide).
    """
    path = out_dir / TARGETS_FILE
    done = {record["name"] for record in read_jsonl(path)}
    seen: set[str] = set()
    images = skipped = found = 0
    with JsonlAppender(path) as out:
        for label_file in iter_label_files(labels_path, fmt):
            name = label_file.stem
            if name in seen:
                raise InputFileError(
                    label_file, f"two label files named {name!r}; target ids would collide"
                )
            seen.add(name)
            if name in done:
                skipped += 1
                continue
            labels = read_labels(label_file, fmt or guess_format(label_file))
            image = find_image(images_dir, labels)
            record = _image_record(
                labels,
                image,
                images_dir,
                margins=margins,
                max_targets=max_targets_per_image,
                seed=seed,
            )
            out.write(record)
            images += 1
            found += len(record["targets"])
            logger.info("%s: %d targets", name, len(record["targets"]))
    return TargetsReport(images=images, skipped=skipped, targets=found)


def load_targets(out_dir: Path) -> list[dict[str, Any]]:
    """Stage 1 image records, for the later stages."""
    return read_jsonl(out_dir / TARGETS_FILE)
