"""LLaVA-NeXT "anyres" geometry with at most X grid tiles (the paper's anyres-pX baselines).

Pure arithmetic (no torch, no pixels), shared by the anyres-based strategies and by
:mod:`lrsvqa.flops`. The rules follow LLaVA-NeXT (Liu et al., 2024, "LLaVA-NeXT:
Improved reasoning, OCR, and world knowledge") as the Hugging Face
``LlavaNextImageProcessor`` / ``LlavaNextForConditionalGeneration`` apply them:

1. Candidate resolutions ("grid pinpoints") are ``(r * B, c * B)``; anyres-pX allows
   every grid with ``r * c <= X`` tiles.
2. The best resolution maximises the effective (downscaled, capped at original)
   resolution and, on ties, minimises the wasted canvas.
3. The image is resized to fit that canvas, aspect kept, and padded *centrally*.
4. The canvas is cut into ``B x B`` tiles; a ``B x B`` squashed copy of the whole
   image is the base view.
5. The tiles' token grid is "unpadded": token rows (or columns) that only show the
   central padding are removed, by the same rounding the model applies.
6. The LLM sees ``[base tokens, unpadded grid row by row, each row closed by the
   image_newline embedding]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

ANYRES_MAX_TILES = (4, 9, 25, 144)


def grid_pinpoints(max_tiles: int, tile_size: int) -> list[tuple[int, int]]:
    """Canvas sizes ``(height, width)`` of every grid with at most ``max_tiles`` tiles.

    Ordered by rows then columns; the order only matters for exact ties of
    :func:`select_best_resolution`, and the tests hand the same list to the HF processor.
    """
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    return [
        (rows * tile_size, cols * tile_size)
        for rows in range(1, max_tiles + 1)
        for cols in range(1, max_tiles // rows + 1)
    ]


def select_best_resolution(
    height: int, width: int, pinpoints: list[tuple[int, int]]
) -> tuple[int, int]:
    """LLaVA-NeXT's choice of canvas: most effective pixels, then least waste.

    The effective resolution of a candidate is the area of the image downscaled to fit
    it (pixel sizes truncated), capped at the original area, so upscaling gains
    nothing; among equals, the candidate wasting the least canvas wins, and among
    those the first listed.
    """
    best: tuple[int, int] | None = None
    best_effective, best_waste = 0, math.inf
    for canvas_h, canvas_w in pinpoints:
        scale = min(canvas_w / width, canvas_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = canvas_h * canvas_w - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (canvas_h, canvas_w), effective, waste
    if best is None:
        raise ValueError("no grid pinpoints given")
    return best


@dataclass(frozen=True)
class AnyresGeometry:
    """Where an image lands on an anyres canvas and which of its tokens survive unpadding.

    Attributes:
        image_height: Original image height in pixels.
        image_width: Original image width in pixels.
        tile_size: Tile side ``B``.
        grid: Tile grid ``(rows, cols)`` of the canvas.
    """

    image_height: int
    image_width: int
    tile_size: int
    grid: tuple[int, int]

    @classmethod
    def for_image(cls, height: int, width: int, max_tiles: int, tile_size: int) -> AnyresGeometry:
        """The anyres-pX geometry of an image: best grid among those with <= X tiles."""
        if height < 1 or width < 1:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        canvas_h, canvas_w = select_best_resolution(
            height, width, grid_pinpoints(max_tiles, tile_size)
        )
        return cls(height, width, tile_size, (canvas_h // tile_size, canvas_w // tile_size))

    @property
    def num_tiles(self) -> int:
        """Grid tiles (the base view not included)."""
        return self.grid[0] * self.grid[1]

    @property
    def canvas_size(self) -> tuple[int, int]:
        """Canvas ``(height, width)`` in pixels."""
        return self.grid[0] * self.tile_size, self.grid[1] * self.tile_size

    @cached_property
    def resized_size(self) -> tuple[int, int]:
        """Image size on the canvas: the limiting side fills it, the other rounds up."""
        canvas_h, canvas_w = self.canvas_size
        scale_w, scale_h = canvas_w / self.image_width, canvas_h / self.image_height
        if scale_w < scale_h:
            return min(math.ceil(self.image_height * scale_w), canvas_h), canvas_w
        return canvas_h, min(math.ceil(self.image_width * scale_h), canvas_w)

    @property
    def offset(self) -> tuple[int, int]:
        """Top-left ``(y, x)`` of the image on the canvas (central padding, odd pixel last)."""
        (canvas_h, canvas_w), (h, w) = self.canvas_size, self.resized_size
        return (canvas_h - h) // 2, (canvas_w - w) // 2

    def tiles(self) -> list[tuple[int, int]]:
        """All grid tiles, row-major."""
        rows, cols = self.grid
        return [(r, c) for r in range(rows) for c in range(cols)]

    def unpadded_token_box(self, tokens_per_side: int) -> tuple[int, int, int, int]:
        """Token-grid rows ``[r0, r1)`` and columns ``[c0, c1)`` kept after unpadding.

        The model compares aspect ratios of the original image and the token grid and
        strips ``(grid - round(original * grid / limiting side)) // 2`` token rows (or
        columns) from both ends, whatever the pixel padding was.
        """
        rows = self.grid[0] * tokens_per_side
        cols = self.grid[1] * tokens_per_side
        if self.image_width / self.image_height > cols / rows:
            kept = int(round(self.image_height * (cols / self.image_width), 7))
            pad = (rows - kept) // 2
            return pad, rows - pad, 0, cols
        kept = int(round(self.image_width * (rows / self.image_height), 7))
        pad = (cols - kept) // 2
        return 0, rows, pad, cols - pad

    def unpadded_tokens(self, tokens_per_side: int) -> tuple[int, int]:
        """``(rows, cols)`` of the unpadded token grid."""
        r0, r1, c0, c1 = self.unpadded_token_box(tokens_per_side)
        return r1 - r0, c1 - c0

    def vision_tokens(self, tokens_per_side: int, image_newline: bool) -> int:
        """Tokens the LLM sees: base view + unpadded grid (+ one newline per grid row)."""
        rows, cols = self.unpadded_tokens(tokens_per_side)
        return tokens_per_side**2 + rows * cols + (rows if image_newline else 0)
