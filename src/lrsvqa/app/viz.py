"""Pictures of where the model looked: RFM attention and selected tiles over the thumbnail.

Mirrors the paper's Fig. 6 (RFM attention over the initial tiles) and adds the tiles
coarse-to-fine inference encoded at each level, one colour per level. The scene stays
visible under a translucent heat map with its colour bar; the figure has a fixed size
(:data:`FIGURE_INCHES` at :data:`DPI`) whatever the image's shape or the title's length.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from lrsvqa.imagery.pyramid import PyramidGeometry
from lrsvqa.types import Box

#: Figure size in inches and its resolution: 8 x 7 in at 100 dpi is 800 x 700 px.
FIGURE_INCHES = (8.0, 7.0)
DPI = 100
#: Opacity of the heat map over the scene.
HEAT_ALPHA = 0.4
#: Characters per title line, and lines kept (the rest is cut with an ellipsis).
TITLE_WIDTH = 90
TITLE_LINES = 4


def _wrapped(title: str) -> str:
    """The title wrapped to :data:`TITLE_WIDTH`, at most :data:`TITLE_LINES` lines."""
    lines = [
        wrapped
        for paragraph in title.splitlines()
        for wrapped in textwrap.wrap(paragraph, TITLE_WIDTH) or [""]
    ]
    if len(lines) > TITLE_LINES:
        lines = [*lines[: TITLE_LINES - 1], lines[TITLE_LINES - 1][: TITLE_WIDTH - 1] + "…"]
    return "\n".join(lines)


def save_attention_overlay(
    path: Path,
    thumbnail: np.ndarray,
    geometry: PyramidGeometry,
    coarse_scores: np.ndarray | None,
    level_tiles: Sequence[tuple[int, Sequence[tuple[int, int]]]],
    title: str = "",
    target_boxes: list[Box] | None = None,
) -> Path:
    """Write a PNG: thumbnail, coarse-level RFM scores as a heat map, tiles per level.

    Args:
        path: Output PNG path (missing folders are created).
        thumbnail: The ``B x B`` thumbnail (content at top-left, padding after).
        geometry: The image's pyramid geometry.
        coarse_scores: Score map over the coarsest level's token grid, or None.
        level_tiles: ``(level, [(row, col), ...])`` of the tiles encoded at each level
            (1 = coarsest), e.g. from ``CoarseToFineResult.levels``.
        title: Figure title (e.g. the question and answer), wrapped.
        target_boxes: Optional ground-truth boxes to outline.
    """
    thumb = geometry.thumbnail
    content_h, content_w = thumb.resized_size
    to_thumb_x = content_w / geometry.image_width
    to_thumb_y = content_h / geometry.image_height
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    axes.imshow(thumbnail[:content_h, :content_w], extent=(0, content_w, content_h, 0))
    if coarse_scores is not None:
        level = geometry.levels[0]
        canvas_h, canvas_w = level.canvas_size
        level_h, level_w = level.resized_size
        # The score grid spans the padded canvas; scale it so the content part lands on
        # the thumbnail content.
        extent = (0, canvas_w * content_w / level_w, canvas_h * content_h / level_h, 0)
        heat = axes.imshow(
            coarse_scores, extent=extent, cmap="inferno", alpha=HEAT_ALPHA, interpolation="nearest"
        )
        figure.colorbar(heat, ax=axes, shrink=0.8, label="RFM attention (coarsest level)")

    def outline(box: Box, colour: object, width: float) -> None:
        x0, y0, x1, y1 = box
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

    palette = colormaps["tab10"].colors
    legend = []
    for index, (number, tiles) in enumerate(level_tiles):
        colour = palette[index % len(palette)]
        level = geometry.levels[number - 1]
        for row, col in tiles:
            outline(level.tile_image_box(row, col), colour, 1.0 + 0.4 * index)
        legend.append(Patch(fill=False, edgecolor=colour, label=f"level {number}: {len(tiles)}"))
    for box in target_boxes or []:
        outline(box, "red", 2.0)
    if target_boxes:
        legend.append(Patch(fill=False, edgecolor="red", label="target"))
    if legend:
        axes.legend(handles=legend, title="tiles encoded", loc="upper right", fontsize=8)
    axes.set_xlim(0, content_w)
    axes.set_ylim(content_h, 0)
    axes.set_axis_off()
    if title:
        axes.set_title(_wrapped(title), fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
