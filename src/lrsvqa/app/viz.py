"""Pictures of where the model looked: RFM attention and selected tiles over the thumbnail.

Mirrors the paper's Fig. 6 (RFM attention over the initial tiles) and adds the boxes
of the tiles that coarse-to-fine inference encoded at its finest level.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from lrsvqa.imagery.pyramid import PyramidGeometry
from lrsvqa.types import Box  # noqa: E402


def save_attention_overlay(
    path: Path,
    thumbnail: np.ndarray,
    geometry: PyramidGeometry,
    coarse_scores: np.ndarray | None,
    selected_boxes: list[Box],
    title: str = "",
    target_boxes: list[Box] | None = None,
) -> Path:
    """Write a PNG: thumbnail, coarse-level RFM scores as a heat map, selected tiles.

    Args:
        path: Output PNG path.
        thumbnail: The ``B x B`` thumbnail (content at top-left, padding after).
        geometry: The image's pyramid geometry.
        coarse_scores: Score map over the coarsest level's token grid, or None.
        selected_boxes: Original-image boxes of the finest tiles encoded.
        title: Figure title (e.g. the question and answer).
        target_boxes: Optional ground-truth boxes to outline.
    """
    thumb = geometry.thumbnail
    content_h, content_w = thumb.resized_size
    to_thumb_x = content_w / geometry.image_width
    to_thumb_y = content_h / geometry.image_height
    figure, axes = plt.subplots(figsize=(6, 6 * max(content_h, 1) / max(content_w, 1) + 0.6))
    axes.imshow(thumbnail[:content_h, :content_w], extent=(0, content_w, content_h, 0))
    if coarse_scores is not None:
        level = geometry.levels[0]
        canvas_h, canvas_w = level.canvas_size
        level_h, level_w = level.resized_size
        # The score grid spans the padded canvas; scale it so the content part lands on
        # the thumbnail content.
        extent = (0, canvas_w * content_w / level_w, canvas_h * content_h / level_h, 0)
        axes.imshow(coarse_scores, extent=extent, cmap="jet", alpha=0.45, interpolation="nearest")
    for boxes, colour, width in ((selected_boxes, "white", 1.2), (target_boxes or [], "red", 2)):
        for x0, y0, x1, y1 in boxes:
            axes.add_patch(
                Rectangle(
                    (x0 * to_thumb_x, y0 * to_thumb_y),
                    (x1 - x0) * to_thumb_x,
                    (y1 - y0) * to_thumb_y,
                    fill=False,
                    edgecolor=colour,
                    linewidth=width,
                )
            )
    axes.set_xlim(0, content_w)
    axes.set_ylim(content_h, 0)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
