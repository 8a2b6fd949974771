"""Dynamic Image Pyramid (DIP) geometry, paper section 4.1.1.

Pure geometry: sizes, tile grids, scale factors and coordinate maps. Nothing here
reads pixels; :class:`lrsvqa.imagery.tiles.PyramidReader` pairs this geometry with
an image reader.

Conventions:
    * Sizes are ``(height, width)``; boxes are ``(x0, y0, x1, y1)`` in pixels,
      half-open, in the coordinates of the *original* image unless stated.
    * Levels are numbered coarse to fine: ``levels[0]`` is the paper's level 1
      (the coarsest tiled level), ``levels[-1]`` is the original resolution.
    * Each level is resized by ``r_p`` (eq. 3) so one side fills whole tiles and
      is padded at the bottom/right to ``N_h * B`` x ``N_w * B`` (eq. 2).
    * A vision-token grid is ``tokens_per_side`` tokens per tile side, laid out
      over the whole level canvas: ``N_h * g`` rows by ``N_w * g`` columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from lrsvqa.types import Box

DEFAULT_TILE_SIZE = 336
DEFAULT_MIN_SHORT_SIDE = 1008
# Which halving rule builds the DIP levels (see :func:`level_sizes`).
OFFICIAL_DIP_RULE = "official"
PAPER_TEXT_DIP_RULE = "paper-text"
DIP_RULES = (OFFICIAL_DIP_RULE, PAPER_TEXT_DIP_RULE)
DEFAULT_DIP_RULE = OFFICIAL_DIP_RULE
_EDGE_EPS = 1e-6


def _content_to_image(
    box: Box, resized_size: tuple[int, int], image_height: int, image_width: int
) -> Box:
    """Scale a box on a resized-and-padded canvas back to original pixels, clipped."""
    rh, rw = resized_size
    sy, sx = image_height / rh, image_width / rw
    x0, y0, x1, y1 = box
    return (
        min(max(x0 * sx, 0.0), image_width),
        min(max(y0 * sy, 0.0), image_height),
        min(max(x1 * sx, 0.0), image_width),
        min(max(y1 * sy, 0.0), image_height),
    )


@dataclass(frozen=True)
class Level:
    """One DIP level: a downsampled copy of the image cut into ``B`` x ``B`` tiles.

    Attributes:
        index: Position in the pyramid, 0 = coarsest tiled level.
        downsample: Factor from the original image (1 = original): a power of two,
            or under the official DIP rule, for the coarsest level, the factor that
            brings the long side to 1,008 px.
        height: Height ``H_p`` of the downsampled image before eq. 3 resizing.
        width: Width ``W_p`` of the downsampled image before eq. 3 resizing.
        tile_size: Tile side ``B``.
        image_height: Height of the original image.
        image_width: Width of the original image.
        fixed_grid: Tile grid to use instead of eq. 2 (an anyres grid), or None.
    """

    index: int
    downsample: float
    height: int
    width: int
    tile_size: int
    image_height: int
    image_width: int
    fixed_grid: tuple[int, int] | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """Tile grid ``(N_h, N_w)`` of eq. 2 (or the fixed grid)."""
        if self.fixed_grid is not None:
            return self.fixed_grid
        return math.ceil(self.height / self.tile_size), math.ceil(self.width / self.tile_size)

    @property
    def num_tiles(self) -> int:
        """Number of tiles ``N_h * N_w``."""
        rows, cols = self.grid
        return rows * cols

    @property
    def scale(self) -> float:
        """Scale factor ``r_p`` of eq. 3 (>= 1: the level is stretched to fill tiles)."""
        rows, cols = self.grid
        return min(rows * self.tile_size / self.height, cols * self.tile_size / self.width)

    @cached_property
    def resized_size(self) -> tuple[int, int]:
        """Size ``(h, w)`` of the content after resizing by ``r_p``; the rest is padding."""
        rows, cols = self.grid
        h = min(rows * self.tile_size, max(1, round(self.height * self.scale)))
        w = min(cols * self.tile_size, max(1, round(self.width * self.scale)))
        return h, w

    @property
    def canvas_size(self) -> tuple[int, int]:
        """Padded canvas ``(N_h * B, N_w * B)``."""
        rows, cols = self.grid
        return rows * self.tile_size, cols * self.tile_size

    @property
    def padding(self) -> tuple[int, int]:
        """Bottom and right padding ``(pad_h, pad_w)`` that keeps the aspect ratio."""
        (ch, cw), (rh, rw) = self.canvas_size, self.resized_size
        return ch - rh, cw - rw

    def canvas_to_image(self, box: Box) -> Box:
        """Map a box in this level's canvas pixels to original-image pixels, clipped."""
        return _content_to_image(box, self.resized_size, self.image_height, self.image_width)

    def image_to_canvas(self, box: Box) -> Box:
        """Map a box in original-image pixels to this level's canvas pixels."""
        rh, rw = self.resized_size
        sy, sx = rh / self.image_height, rw / self.image_width
        x0, y0, x1, y1 = box
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy

    def tile_canvas_box(self, row: int, col: int) -> Box:
        """Canvas box of tile ``(row, col)``."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"tile ({row}, {col}) outside level {self.index} grid {rows}x{cols}")
        b = self.tile_size
        return col * b, row * b, (col + 1) * b, (row + 1) * b

    def tile_image_box(self, row: int, col: int) -> Box:
        """Original-image box covered by the content of tile ``(row, col)``."""
        return self.canvas_to_image(self.tile_canvas_box(row, col))

    def tile_has_content(self, row: int, col: int) -> bool:
        """Whether the tile shows any image pixels (not only padding)."""
        x0, y0, _, _ = self.tile_canvas_box(row, col)
        rh, rw = self.resized_size
        return y0 < rh and x0 < rw

    def tiles(self) -> list[tuple[int, int]]:
        """All tile indices in row-major order."""
        rows, cols = self.grid
        return [(r, c) for r in range(rows) for c in range(cols)]

    def token_grid(self, tokens_per_side: int) -> tuple[int, int]:
        """Vision-token grid ``(rows, cols)`` over the whole canvas."""
        rows, cols = self.grid
        return rows * tokens_per_side, cols * tokens_per_side

    def token_canvas_box(self, row: int, col: int, tokens_per_side: int) -> Box:
        """Canvas box of the vision token at global grid position ``(row, col)``."""
        step = self.tile_size / tokens_per_side
        return col * step, row * step, (col + 1) * step, (row + 1) * step

    def token_image_box(self, row: int, col: int, tokens_per_side: int) -> Box:
        """Original-image box of the vision token at global grid position ``(row, col)``."""
        return self.canvas_to_image(self.token_canvas_box(row, col, tokens_per_side))

    def tiles_covering(self, image_box: Box) -> list[tuple[int, int]]:
        """Tiles of this level whose content intersects an original-image box.

        Empty boxes (zero area after clipping to the image) cover no tile.
        """
        x0, y0, x1, y1 = image_box
        x0, x1 = max(x0, 0.0), min(x1, float(self.image_width))
        y0, y1 = max(y0, 0.0), min(y1, float(self.image_height))
        if x1 <= x0 or y1 <= y0:
            return []
        cx0, cy0, cx1, cy1 = self.image_to_canvas((x0, y0, x1, y1))
        b = self.tile_size
        rows, cols = self.grid
        # A tolerance keeps float noise on a shared edge from reaching the neighbour tile.
        r0 = min(rows - 1, int(cy0 / b + _EDGE_EPS))
        c0 = min(cols - 1, int(cx0 / b + _EDGE_EPS))
        r1 = min(rows - 1, max(r0, math.ceil(cy1 / b - _EDGE_EPS) - 1))
        c1 = min(cols - 1, max(c0, math.ceil(cx1 / b - _EDGE_EPS) - 1))
        return [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


@dataclass(frozen=True)
class Thumbnail:
    """The global view: the whole image resized so its long side is ``B``, padded to ``B x B``."""

    tile_size: int
    image_height: int
    image_width: int

    @cached_property
    def resized_size(self) -> tuple[int, int]:
        """Content size ``(h, w)`` inside the ``B x B`` square."""
        scale = self.tile_size / max(self.image_height, self.image_width)
        h = min(self.tile_size, max(1, round(self.image_height * scale)))
        w = min(self.tile_size, max(1, round(self.image_width * scale)))
        return h, w

    @property
    def padding(self) -> tuple[int, int]:
        """Bottom and right padding ``(pad_h, pad_w)``."""
        rh, rw = self.resized_size
        return self.tile_size - rh, self.tile_size - rw

    def canvas_to_image(self, box: Box) -> Box:
        """Map a thumbnail-canvas box to original-image pixels, clipped."""
        return _content_to_image(box, self.resized_size, self.image_height, self.image_width)


@dataclass(frozen=True)
class PyramidGeometry:
    """Full DIP geometry: a thumbnail plus levels ordered coarse to fine."""

    image_height: int
    image_width: int
    tile_size: int
    min_short_side: int
    levels: tuple[Level, ...]
    thumbnail: Thumbnail

    @property
    def num_levels(self) -> int:
        """Number of tiled levels ``P`` (the pyramid has ``P + 1`` layers with the thumbnail)."""
        return len(self.levels)

    def next_level_tiles(
        self, level_index: int, token_positions: list[tuple[int, int]], tokens_per_side: int
    ) -> list[tuple[int, int]]:
        """Tiles of level ``level_index + 1`` covering the ground of the given tokens.

        Args:
            level_index: Index of the level the tokens come from (0 = coarsest).
            token_positions: Global token-grid positions ``(row, col)`` at that level.
            tokens_per_side: Vision tokens per tile side of the encoder.

        Returns:
            Sorted, de-duplicated ``(row, col)`` tiles of the next level.
        """
        if level_index + 1 >= self.num_levels:
            raise IndexError(f"level {level_index} is the finest; there is no next level")
        level, finer = self.levels[level_index], self.levels[level_index + 1]
        selected: set[tuple[int, int]] = set()
        for row, col in token_positions:
            box = level.token_image_box(row, col, tokens_per_side)
            selected.update(finer.tiles_covering(box))
        return sorted(selected)


@dataclass(frozen=True)
class PyramidConfig:
    """How the Dynamic Image Pyramid of an image is built.

    Attributes:
        tile_size: Tile side ``B`` of the vision encoder (336 for CLIP-L/14-336).
        min_short_side: Bound of the coarsest level, px (the paper's 1,008 = 3 tiles).
        dip_rule: ``"official"`` or ``"paper-text"`` halving (:func:`level_sizes`).
    """

    tile_size: int = DEFAULT_TILE_SIZE
    min_short_side: int = DEFAULT_MIN_SHORT_SIDE
    dip_rule: str = DEFAULT_DIP_RULE

    def __post_init__(self) -> None:
        if self.tile_size < 1 or self.min_short_side < 1:
            raise ValueError(
                f"tile_size and min_short_side must be positive, got "
                f"{self.tile_size} and {self.min_short_side}"
            )
        if self.dip_rule not in DIP_RULES:
            raise ValueError(
                f"dip_rule must be one of {', '.join(DIP_RULES)}, got {self.dip_rule!r}"
            )


def level_sizes(
    height: int,
    width: int,
    min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
    rule: str = DEFAULT_DIP_RULE,
) -> list[tuple[float, int, int]]:
    """Sizes of the downsampled copies, coarse to fine, as ``(downsample, h, w)``.

    Two rules, which agree on square images (2,016 px -> 2 levels, the paper's
    "3-layer DIP supporting up to 2,016 x 2,016 pixels"; 4,000 px -> 3 levels):

    * ``"official"`` (default; the authors' code, ``pyramid_crop`` in
      ``llava/mm_utils.py``, which produced the paper's results): scales 1, 1/2,
      1/4, ... while the *long* side stays at least ``min_short_side``, plus a last
      level whose long side is exactly ``min_short_side``. This bounds the coarsest
      level of long strips (27,328 x 3,000: 3 tiles).
    * ``"paper-text"`` (the paper's sentence): halve while the *shorter* side is
      longer than ``min_short_side``, so the coarsest short side lies in
      ``(min/2, min]``; a 27,328 x 3,000 strip keeps 63 tiles at its coarsest.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if min_short_side < 1:
        raise ValueError(f"min_short_side must be positive, got {min_short_side}")
    if rule not in DIP_RULES:
        raise ValueError(f"unknown DIP rule {rule!r}; known: {', '.join(DIP_RULES)}")
    if rule == OFFICIAL_DIP_RULE:
        min_scale = min(1.0, min_short_side / max(height, width))
        scales = [1.0]
        while scales[-1] / 2 >= min_scale:
            scales.append(scales[-1] / 2)
        if scales[-1] > min_scale:
            scales.append(min_scale)
        factors = [1 / scale for scale in reversed(scales)]
        return [(f, max(1, round(height / f)), max(1, round(width / f))) for f in factors]
    sizes: list[tuple[float, int, int]] = [(1, height, width)]
    factor = 1
    while min(height, width) / factor > min_short_side:
        factor *= 2
        sizes.append((factor, max(1, round(height / factor)), max(1, round(width / factor))))
    return sizes[::-1]


def build_pyramid(
    height: int,
    width: int,
    tile_size: int = DEFAULT_TILE_SIZE,
    min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
    dip_rule: str = DEFAULT_DIP_RULE,
) -> PyramidGeometry:
    """Build the DIP geometry for an image of ``height`` x ``width`` pixels.

    Args:
        height: Original image height in pixels.
        width: Original image width in pixels.
        tile_size: Tile side ``B`` (336 for CLIP-L/14-336).
        min_short_side: The 1,008 px bound of the coarsest level (see :func:`level_sizes`).
        dip_rule: ``"official"`` or ``"paper-text"`` (:func:`level_sizes`).

    Returns:
        The pyramid geometry, levels ordered coarse to fine.
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    levels = tuple(
        Level(
            index=i,
            downsample=factor,
            height=h,
            width=w,
            tile_size=tile_size,
            image_height=height,
            image_width=width,
        )
        for i, (factor, h, w) in enumerate(level_sizes(height, width, min_short_side, dip_rule))
    )
    return PyramidGeometry(
        image_height=height,
        image_width=width,
        tile_size=tile_size,
        min_short_side=min_short_side,
        levels=levels,
        thumbnail=Thumbnail(tile_size, height, width),
    )


def grid_geometry(
    height: int, width: int, grid: tuple[int, int], tile_size: int = DEFAULT_TILE_SIZE
) -> PyramidGeometry:
    """A single-level geometry on a given tile grid (e.g. an anyres grid, no DIP).

    The image is resized by eq. 3's rule (fit inside the grid, aspect kept) and padded,
    which is how LLaVA-NeXT fits an image into its chosen grid resolution.
    """
    if grid[0] < 1 or grid[1] < 1:
        raise ValueError(f"grid must be at least 1x1, got {grid}")
    level = Level(0, 1, height, width, tile_size, height, width, fixed_grid=tuple(grid))
    return PyramidGeometry(
        image_height=height,
        image_width=width,
        tile_size=tile_size,
        min_short_side=min(height, width),
        levels=(level,),
        thumbnail=Thumbnail(tile_size, height, width),
    )
