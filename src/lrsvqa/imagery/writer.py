"""Write tiled, pyramidal TIFFs tile by tile, never holding the whole image.

Synthetic scenes reach 32,768 px per side (3 GB of RGB), so both the full
resolution and the overviews are streamed: the caller renders one tile at a time,
each overview level is accumulated as 2x2 means into a raw spill file next to the
output while the finer level is written, and then written from that spill file.
Peak memory is one tile row of the first overview plus a 32 MiB queue of tiles
waiting for tifffile's compression threads.

Overviews are stored as reduced-resolution pages (``NewSubfileType = 1``) after the
full-resolution page, the layout GDAL, libvips, tifffile and QGIS all read as a
pyramid, down to the first level that fits in a single tile.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import tifffile

RenderTile = Callable[[int, int, int, int], np.ndarray]

# Classic TIFF addresses 4 GiB; keep a margin for IFDs and incompressible tiles.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**26
# tifffile queues up to 512 MiB of tiles for its compression threads by default.
_WRITE_BUFFER_BYTES = 2**25


def overview_shapes(height: int, width: int, tile_size: int) -> list[tuple[int, int]]:
    """Sizes of the halved levels written after the full resolution.

    Each level is ``ceil`` of half the previous one, as in GDAL; halving stops at the
    first level that fits in one tile.
    """
    shapes: list[tuple[int, int]] = []
    h, w = height, width
    while max(h, w) > tile_size:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        shapes.append((h, w))
    return shapes


def halve(block: np.ndarray) -> np.ndarray:
    """2x2 mean of ``(h, w, bands)`` pixels; an odd last row/column is averaged with itself.

    Integer results are rounded to nearest so repeated halving does not darken.
    """
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    # Four strided views summed: much faster than a mean over a reshaped 5-D array.
    accumulator = np.uint16 if block.dtype == np.uint8 else np.float64
    total = block[0::2, 0::2].astype(accumulator)
    total += block[1::2, 0::2]
    total += block[0::2, 1::2]
    total += block[1::2, 1::2]
    if block.dtype == np.uint8:
        return ((total + 2) // 4).astype(np.uint8)
    mean = total / 4
    if block.dtype.kind in "ui":
        mean = np.rint(mean)
    return mean.astype(block.dtype)


class _HalvingSpill:
    """Accumulates the next-coarser level, one tile row at a time, into a raw file."""

    def __init__(self, out: BinaryIO, width: int, bands: int, dtype: np.dtype) -> None:
        self._out = out
        self._width = math.ceil(width / 2)
        self._bands = bands
        self._dtype = dtype
        self._row: np.ndarray | None = None

    def add(self, block: np.ndarray, x0: int) -> None:
        """Halve a block whose top-left is column ``x0`` (even) of the current tile row."""
        half = halve(block)
        if self._row is None:
            self._row = np.empty((half.shape[0], self._width, self._bands), self._dtype)
        self._row[:, x0 // 2 : x0 // 2 + half.shape[1]] = half

    def flush(self) -> None:
        """Append the finished tile row to the spill file."""
        if self._row is not None:
            self._row.tofile(self._out)
            self._row = None


def _checked_tile(
    tile: np.ndarray, y0: int, x0: int, shape: tuple[int, int, int], dtype: np.dtype
) -> np.ndarray:
    tile = np.asarray(tile)
    if tile.ndim == 2 and shape[2] == 1:
        tile = tile[:, :, None]
    if tile.shape != shape or tile.dtype != dtype:
        raise ValueError(
            f"render_tile({y0}, {x0}, {shape[0]}, {shape[1]}) returned {tile.dtype}"
            f"{list(tile.shape)}, expected {np.dtype(dtype)}{list(shape)}"
        )
    return tile


def _stored(tile: np.ndarray) -> np.ndarray:
    """Drop the sample axis of single-band tiles: tifffile stores those as plain 2-D pages."""
    return tile[:, :, 0] if tile.shape[2] == 1 else tile


def _rendered_tiles(
    render_tile: RenderTile,
    height: int,
    width: int,
    tile_size: int,
    bands: int,
    dtype: np.dtype,
    spill: _HalvingSpill | None,
) -> Iterator[np.ndarray]:
    """Full-resolution tiles in TIFF order, feeding the first overview on the way."""
    for y0 in range(0, height, tile_size):
        h = min(tile_size, height - y0)
        for x0 in range(0, width, tile_size):
            w = min(tile_size, width - x0)
            tile = _checked_tile(render_tile(y0, x0, h, w), y0, x0, (h, w, bands), dtype)
            if spill is not None:
                spill.add(tile, x0)
                if x0 + w == width:
                    # Before the yield: tifffile stops pulling after the last tile.
                    spill.flush()
            yield _stored(tile)


def _spilled_tiles(
    source: Path,
    height: int,
    width: int,
    tile_size: int,
    bands: int,
    dtype: np.dtype,
    spill: _HalvingSpill | None,
) -> Iterator[np.ndarray]:
    """Tiles of a level read back from its spill file, feeding the next level."""
    row_bytes = width * bands * dtype.itemsize
    with open(source, "rb") as f:
        for y0 in range(0, height, tile_size):
            h = min(tile_size, height - y0)
            band = np.fromfile(f, dtype, count=h * width * bands)
            if band.nbytes != h * row_bytes:
                raise OSError(f"spill file {source} is short at row {y0}")
            band = band.reshape(h, width, bands)
            if spill is not None:
                spill.add(band, 0)
                spill.flush()
            for x0 in range(0, width, tile_size):
                yield _stored(band[:, x0 : x0 + tile_size])


def write_pyramidal_tiff(
    path: str | PathLike[str],
    height: int,
    width: int,
    render_tile: RenderTile,
    *,
    tile_size: int = 512,
    bands: int = 3,
    dtype: npt.DTypeLike = np.uint8,
    compression: str | None = "zlib",
    compression_level: int | None = None,
    overviews: bool = True,
    bigtiff: bool | None = None,
) -> Path:
    """Write a tiled TIFF, with power-of-two overviews, from a tile renderer.

    Args:
        path: Output file (overwritten).
        height: Image height in pixels.
        width: Image width in pixels.
        render_tile: ``render_tile(y0, x0, h, w)`` returns the ``(h, w, bands)`` pixels
            of that window, in the requested ``dtype``. Called once per tile, row-major;
            edge tiles are smaller than ``tile_size``.
        tile_size: TIFF tile side; a multiple of 16 as the TIFF specification requires.
        bands: Samples per pixel (3 is written as RGB, anything else as grey + extra
            samples).
        dtype: Pixel type.
        compression: Any codec tifffile writes (``"zlib"``, ``"zstd"``, ``"lzw"``, ...),
            or ``None``. ``zlib`` (Deflate) is readable by every TIFF reader.
        compression_level: Codec level; ``None`` keeps the codec default. Lower is
            faster, which matters for 30k px synthetic scenes.
        overviews: Also write halved levels down to one tile.
        bigtiff: Force BigTIFF on or off; ``None`` picks BigTIFF when the uncompressed
            pyramid could exceed classic TIFF's 4 GiB.

    Returns:
        The output path.

    Raises:
        ValueError: Bad sizes, or ``render_tile`` returned the wrong shape or type.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size must be a positive multiple of 16, got {tile_size}")
    if bands < 1:
        raise ValueError(f"bands must be positive, got {bands}")
    dtype = np.dtype(dtype)
    path = Path(path)
    levels = [(height, width), *(overview_shapes(height, width, tile_size) if overviews else [])]
    if bigtiff is None:
        total = sum(h * w for h, w in levels) * bands * dtype.itemsize
        bigtiff = total > _CLASSIC_TIFF_LIMIT
    options = {
        "tile": (tile_size, tile_size),
        "dtype": dtype,
        "photometric": "rgb" if bands == 3 else "minisblack",
        "planarconfig": "contig" if bands > 1 else None,
        "compression": compression,
        "compressionargs": None if compression_level is None else {"level": compression_level},
        "metadata": None,
        "buffersize": _WRITE_BUFFER_BYTES,
    }
    with (
        tempfile.TemporaryDirectory(prefix=".pyramid-", dir=path.parent) as spill_dir,
        tifffile.TiffWriter(path, bigtiff=bigtiff) as tif,
    ):
        source: Path | None = None
        for index, (h, w) in enumerate(levels):
            target = Path(spill_dir) / f"level{index + 1}.raw" if index + 1 < len(levels) else None
            with open(target, "wb") if target else contextlib.nullcontext() as out:
                spill = _HalvingSpill(out, w, bands, dtype) if out else None
                if source is None:
                    tiles = _rendered_tiles(render_tile, h, w, tile_size, bands, dtype, spill)
                else:
                    tiles = _spilled_tiles(source, h, w, tile_size, bands, dtype, spill)
                shape = (h, w, bands) if bands > 1 else (h, w)
                tif.write(tiles, shape=shape, subfiletype=1 if index else 0, **options)
            if source is not None:
                source.unlink()
            source = target
    return path
