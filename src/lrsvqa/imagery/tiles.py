"""Lazy DIP tiles: pixels for :mod:`lrsvqa.imagery.pyramid` geometry, read on demand.

The paper resizes every downsampled copy of the image by ``r_p`` (eq. 3) and cuts it
into ``B x B`` tiles. Materialising those copies for a 27,328 px image costs
gigabytes, and coarse-to-fine inference only ever looks at a few tiles of the finer
levels. :class:`PyramidReader` produces any single tile instead, by reading just the
original-image region under it from the coarsest stored overview that has enough
resolution, so memory follows the tiles requested rather than the image size.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from types import TracebackType
from typing import Any

import numpy as np

from lrsvqa.errors import OptionError
from lrsvqa.imagery.pyramid import (
    DEFAULT_DIP_RULE,
    DEFAULT_MIN_SHORT_SIDE,
    DEFAULT_TILE_SIZE,
    PyramidGeometry,
    build_pyramid,
)
from lrsvqa.imagery.reader import LargeImage, open_image

#: Largest tile side accepted (CLIP encoders use 224-448): a tile is allocated whole.
MAX_TILE_SIZE = 4096


class PyramidReader:
    """Tiles, thumbnail and whole levels of a DIP, read lazily from a large image.

    Every array returned is ``uint8`` RGB laid out exactly as the geometry says: the
    content resized by ``r_p`` in the top-left corner, ``pad_value`` below and to the
    right. Reads are thread-safe, so a background thread may prefetch tiles.
    Closing the reader closes the image.

    Args:
        image: The opened image.
        geometry: Its pyramid, e.g. ``build_pyramid(image.height, image.width)``.
        pad_value: Grey level of the padding.
    """

    def __init__(self, image: LargeImage, geometry: PyramidGeometry, pad_value: int = 0) -> None:
        if (geometry.image_height, geometry.image_width) != (image.height, image.width):
            raise ValueError(
                f"geometry is for {geometry.image_height}x{geometry.image_width} but "
                f"{image.path} is {image.height}x{image.width}"
            )
        if not 0 <= pad_value <= 255:
            raise ValueError(f"pad_value must be in [0, 255], got {pad_value}")
        self.image = image
        self.geometry = geometry
        self.pad_value = pad_value

    @classmethod
    def open(
        cls,
        path: str | PathLike[str],
        tile_size: int = DEFAULT_TILE_SIZE,
        min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
        pad_value: int = 0,
        dip_rule: str = DEFAULT_DIP_RULE,
        **reader_options: Any,
    ) -> PyramidReader:
        """Open ``path`` and build its pyramid.

        Args:
            path: Image file.
            tile_size: Tile side ``B``.
            min_short_side: The 1,008 px bound of the coarsest DIP level.
            pad_value: Grey level of the padding.
            dip_rule: ``"official"`` or ``"paper-text"``
                (:func:`lrsvqa.imagery.pyramid.level_sizes`).
            **reader_options: Passed to :func:`lrsvqa.imagery.reader.open_image`
                (``bands``, ``percentiles``, ``max_pixels``).

        Raises:
            OptionError: ``tile_size`` outside ``1..MAX_TILE_SIZE``.
        """
        if not 1 <= tile_size <= MAX_TILE_SIZE:
            raise OptionError("tile_size", f"{tile_size} is outside 1..{MAX_TILE_SIZE}")
        image = open_image(path, **reader_options)
        try:
            geometry = build_pyramid(image.height, image.width, tile_size, min_short_side, dip_rule)
            return cls(image, geometry, pad_value)
        except BaseException:
            image.close()
            raise

    def _canvas(self, height: int, width: int) -> np.ndarray:
        return np.full((height, width, 3), self.pad_value, dtype=np.uint8)

    def tile(self, level_index: int, row: int, col: int) -> np.ndarray:
        """The ``B x B x 3`` tile ``(row, col)`` of level ``level_index`` (0 = coarsest).

        Raises:
            IndexError: No such level or tile.
        """
        level = self.geometry.levels[level_index]
        x0, y0, x1, y1 = (int(v) for v in level.tile_canvas_box(row, col))
        rh, rw = level.resized_size
        content_h, content_w = min(y1, rh) - y0, min(x1, rw) - x0
        out = self._canvas(level.tile_size, level.tile_size)
        if content_h > 0 and content_w > 0:
            box = level.canvas_to_image((x0, y0, x0 + content_w, y0 + content_h))
            out[:content_h, :content_w] = self.image.read_region(box, (content_h, content_w))
        return out

    def tiles(self, level_index: int, positions: Iterable[tuple[int, int]]) -> list[np.ndarray]:
        """Tiles at ``(row, col)`` positions of one level, in the order given."""
        return [self.tile(level_index, row, col) for row, col in positions]

    def thumbnail(self) -> np.ndarray:
        """The global view: the whole image with its long side ``B``, padded to ``B x B``."""
        thumb = self.geometry.thumbnail
        rh, rw = thumb.resized_size
        out = self._canvas(thumb.tile_size, thumb.tile_size)
        out[:rh, :rw] = self.image.read_region(self._whole_image, (rh, rw))
        return out

    def level_image(self, level_index: int, max_side: int | None = None) -> np.ndarray:
        """A whole level as one padded canvas, the mosaic of all its tiles.

        Args:
            level_index: Level, 0 = coarsest.
            max_side: Shrink the canvas so its longer side is at most this (for
                previews of fine levels); ``None`` keeps ``N_h * B x N_w * B``.

        Returns:
            ``uint8`` RGB canvas.
        """
        level = self.geometry.levels[level_index]
        (ch, cw), (rh, rw) = level.canvas_size, level.resized_size
        factor = 1.0 if max_side is None else min(1.0, max_side / max(ch, cw))
        if factor <= 0:
            raise ValueError(f"max_side must be positive, got {max_side}")
        content = max(1, round(rh * factor)), max(1, round(rw * factor))
        out = self._canvas(max(content[0], round(ch * factor)), max(content[1], round(cw * factor)))
        out[: content[0], : content[1]] = self.image.read_region(self._whole_image, content)
        return out

    @property
    def _whole_image(self) -> tuple[float, float, float, float]:
        return 0.0, 0.0, float(self.image.width), float(self.image.height)

    def close(self) -> None:
        """Close the underlying image."""
        self.image.close()

    def __enter__(self) -> PyramidReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
