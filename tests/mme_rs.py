"""A tiny MME-RealWorld-RS benchmark for tests: the official JSON fields, generated images.

The items are laid out as MME-RealWorld's released annotation file lays out its
"Remote Sensing" subtask (``Question_id``, ``Image``, ``Text``, ``Answer choices`` as
``(X) text``, ``Ground truth`` letter, ``Task``, ``Subtask``, ``Category`` one of
position, color, count), and option E is the dataset's "does not feature" refusal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.tiny_models import WORDS

NONE = "The image does not feature the ship."
#: (category, image, question, option texts A-E) of each item.
LAYOUT = [
    ("color", "a.png", "What color is the ship?", ("red", "blue", "green", "white", NONE)),
    ("count", "a.png", "How many ship are there?", ("2", "4", "6", "8", NONE)),
    ("position", "b.png", "Where is the ship?", ("top left", "top right", "bottom", "left", NONE)),
    ("color", "b.png", "What color is the roof?", ("white", "red", "blue", "green", NONE)),
    ("count", "b.png", "How many red ship are there?", ("4", "2", "8", "6", NONE)),
]
#: A tiny model's vocabulary covering the questions and options.
MME_WORDS = (*WORDS, "where", "roof", "green", "white", "top", "left", "right", "bottom")
MME_WORDS += ("image", "does", "not", "feature", "a", "b", "c", "d", "e")


def write_mme_rs(root: Path, truths: list[str], images: bool = True) -> Path:
    """``root/MME_RealWorld_RS.json`` with one item per :data:`LAYOUT` row.

    Args:
        root: Data root; the images go to ``root/remote_sensing/``.
        truths: Ground-truth letter of each item.
        images: Also write the (random, 500 x 700 px) images.
    """
    rows = [
        {
            "Question_id": f"perception/remote_sensing/{category}/{index:04d}",
            "Question Type": "Multiple Choice",
            "Image": f"remote_sensing/{image}",
            "Text": text,
            "Answer choices": [
                f"({letter}) {option}" for letter, option in zip("ABCDE", options, strict=True)
            ],
            "Ground truth": truth,
            "Task": "Perception",
            "Subtask": "Remote Sensing",
            "Category": category,
        }
        for index, ((category, image, text, options), truth) in enumerate(
            zip(LAYOUT, truths, strict=True)
        )
    ]
    if images:
        (root / "remote_sensing").mkdir(parents=True, exist_ok=True)
        for seed, name in enumerate(sorted({image for _, image, _, _ in LAYOUT})):
            pixels = np.random.default_rng(seed).integers(0, 256, (500, 700, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "remote_sensing" / name)
    path = root / "MME_RealWorld_RS.json"
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path
