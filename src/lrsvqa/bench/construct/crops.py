"""Stage 2: a context crop around each target with a red box drawn on it.

The paper feeds GPT-4V a crop rather than the whole large image (which it could not
see in detail) and marks the target with a red box, a visual prompt after
Set-of-Mark, so the generated questions are about the right object. Crops are read
lazily from the large image, downscaled on read to at most ``max_side`` pixels.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lrsvqa.bench.construct.store import CROPS_DIR, CROPS_FILE, JsonlAppender, read_jsonl
from lrsvqa.bench.construct.targets import load_targets
from lrsvqa.imagery.reader import open_image

logger = logging.getLogger(__name__)

Window = tuple[int, int, int, int]
BOX_COLOR = (255, 0, 0)


@dataclass(frozen=True)
class CropsReport:
    """What stage 2 did: crops written and targets skipped as already cropped."""

    written: int
    skipped: int


def context_window(
    hbox: Sequence[float], height: int, width: int, *, context: float, min_side: int
) -> Window:
    """A square window centred on the target, shifted (not cut) to stay inside the image.

    Args:
        hbox: Target box ``(x0, y0, x1, y1)``.
        height: Image height.
        width: Image width.
        context: Window side as a multiple of the target's longer side, so the model
            sees the surroundings that "background" and "reasoning" questions need.
        min_side: Smallest window side, so tiny cars still come with their street.
    """
    x0, y0, x1, y1 = hbox
    side = max(float(min_side), context * max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bounds = []
    for centre, limit in ((cx, width), (cy, height)):
        extent = min(float(limit), side)
        start = min(max(0.0, centre - extent / 2), limit - extent)
        bounds.append((math.floor(start), min(limit, math.ceil(start + extent))))
    (wx0, wx1), (wy0, wy1) = bounds
    return wx0, wy0, wx1, wy1


def crop_size(window: Window, max_side: int) -> tuple[int, int]:
    """``(height, width)`` of the saved crop: the window, downscaled to ``max_side``."""
    x0, y0, x1, y1 = window
    scale = min(1.0, max_side / max(x1 - x0, y1 - y0))
    return max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))


def draw_target(crop: np.ndarray, target: dict[str, Any], window: Window) -> Image.Image:
    """The crop with the target outlined in red (its rotated box when known).

    A horizontal box is drawn just outside the object so the line hides none of it.
    """
    image = Image.fromarray(crop)
    x0, y0, x1, y1 = window
    sx, sy = image.width / (x1 - x0), image.height / (y1 - y0)
    line = max(2, round(max(image.size) / 256))
    if target.get("rbox"):
        points = [((x - x0) * sx, (y - y0) * sy) for x, y in target["rbox"]]
        ImageDraw.Draw(image).polygon(points, outline=BOX_COLOR, width=line)
    else:
        bx0, by0, bx1, by1 = target["hbox"]
        box = (
            (bx0 - x0) * sx - line,
            (by0 - y0) * sy - line,
            (bx1 - x0) * sx + line,
            (by1 - y0) * sy + line,
        )
        ImageDraw.Draw(image).rectangle(box, outline=BOX_COLOR, width=line)
    return image


def run_crops(
    images_dir: Path,
    out_dir: Path,
    *,
    context: float = 3.0,
    min_side: int = 512,
    max_side: int = 1024,
) -> CropsReport:
    """Crop and mark every stage-1 target that has no crop yet.

    A target counts as done when ``crops.jsonl`` lists it and its PNG exists, so a
    deleted crop is redone. Each image is opened once for all its targets.
    """
    path = out_dir / CROPS_FILE
    done = {r["target_id"] for r in read_jsonl(path) if (out_dir / r["crop"]).exists()}
    pending: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    skipped = 0
    for record in load_targets(out_dir):
        for target in record["targets"]:
            if target["target_id"] in done:
                skipped += 1
            else:
                pending[record["image"]].append((record, target))
    (out_dir / CROPS_DIR).mkdir(parents=True, exist_ok=True)
    written = 0
    with JsonlAppender(path) as out:
        for image_path, items in pending.items():
            with open_image(images_dir / image_path) as large:
                for record, target in items:
                    window = context_window(
                        target["hbox"],
                        record["height"],
                        record["width"],
                        context=context,
                        min_side=min_side,
                    )
                    pixels = large.read_region(window, out_size=crop_size(window, max_side))
                    crop = f"{CROPS_DIR}/{target['target_id']}.png"
                    draw_target(pixels, target, window).save(out_dir / crop)
                    out.write({"target_id": target["target_id"], "crop": crop, "window": window})
                    written += 1
            logger.info("%s: %d crops", image_path, len(items))
    return CropsReport(written=written, skipped=skipped)
