"""Open very large images lazily and read any region at any resolution as 8-bit RGB.

TIFF and BigTIFF (tiled or stripped, any tifffile codec, with or without overviews)
are read window by window with tifffile + imagecodecs + zarr: only the tiles or
strips a window touches are decoded, and uncompressed contiguous data is read row
by row, so even a single 2 GB strip costs only the bytes of the window. PNG and
JPEG go through Pillow; they cannot be decoded by window, so they are decoded whole
once (JPEG at 1/2, 1/4 or 1/8 scale when that is enough) and kept. Everything else
(JPEG2000, VRT, NITF, ...) and remote URLs go through the optional GDAL backend
(:mod:`lrsvqa.imagery.gdal`) with the same window-and-overview semantics. The choice
of tifffile + zarr, and of GDAL for remote files, is measured in
``benchmarks/reader_choice.py``.

Bands are numbered from 1, as in GDAL. Without an explicit choice, the bands the file
calls red, green and blue are shown (:func:`lrsvqa.imagery.georef.rgb_from_meaning`);
otherwise bands 1-3, with a notice. Nodata pixels are left out of the stretch and of
resampling and come out black.

Decompression-bomb protection: :func:`open_image` refuses images with more than
``max_pixels`` pixels *before decoding anything*. The default is
:data:`DEFAULT_MAX_PIXELS` (2**30, about 32,768 x 32,768), taken from the
``LRSVQA_MAX_PIXELS`` environment variable when set at import time. Pass
``max_pixels=None``, or set ``LRSVQA_MAX_PIXELS=0`` (or ``none``), to switch the
check off. PNG and JPEG are decoded whole, so for them the limit is also capped at
:data:`WHOLE_DECODE_MAX_PIXELS`, Pillow's own bomb threshold (about 179 Mpx, some
540 MB of RGB): a 1 MB PNG claiming 20,000 x 20,000 px is refused, not decoded into
4 GB. The same switch turns that cap off. :meth:`LargeImage.read_region` refuses
outputs larger than :data:`MAX_REGION_PIXELS`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Sequence
from functools import cached_property
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import tifffile
import zarr
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

from lrsvqa.errors import OptionError
from lrsvqa.imagery import gdal
from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.georef import GeoReference, rgb_from_meaning, tiff_georeference
from lrsvqa.imagery.radiometry import (
    DEFAULT_PERCENTILES,
    BandChoice,
    dtype_limits,
    needs_stretch,
    percentile_limits,
    resolve_bands,
    stretch_to_uint8,
    validate_percentiles,
)
from lrsvqa.types import Box

Size = tuple[int, int]

MAX_PIXELS_ENV = "LRSVQA_MAX_PIXELS"
BUILTIN_MAX_PIXELS = 2**30
#: Cap of the pixel limit for formats decoded whole (PNG, JPEG): the size at which
#: Pillow's own ``Image.open`` raises ``DecompressionBombError``. The reader builds
#: Pillow's plugin classes directly, which skips that check, so it is applied here.
WHOLE_DECODE_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
#: Largest output of one ``read_region`` call (8192 x 8192): beyond it the output and
#: its float intermediates take gigabytes.
MAX_REGION_PIXELS = 2**26

# A stored level up to this much coarser than asked for is still used: DIP levels
# stretch a power-of-two level by r_p (1.008 for 27,328 px), and reading the 2x finer
# level for under 2% of extra resolution would quadruple the pixels decoded.
RESOLUTION_TOLERANCE = 0.02

# Windows taller than this many source pixels are read and resampled in slabs of
# rows, so a thumbnail of a file without overviews never holds the full image.
_SLAB_BUDGET_PIXELS = 2**22

# Low-resolution view on which stretch percentiles are measured (long side, px).
_STATS_SIDE = 1024

_GEOKEY_DIRECTORY = 34735  # GeoTIFF's GeoKeyDirectoryTag
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_REDUCTIONS = (2, 4, 8)
# A resampled pixel with less than this share of valid source pixels under it is nodata.
_MIN_VALID_WEIGHT = 0.5
# Colour of each band of the Pillow modes the reader produces.
_PILLOW_COLOURS = {
    "L": ("gray",),
    "LA": ("gray", "alpha"),
    "RGB": ("red", "green", "blue"),
    "RGBA": ("red", "green", "blue", "alpha"),
}
# Pillow modes without a direct numpy view, and what to convert them to.
_PILLOW_CONVERT = {
    "1": "L",
    "P": "RGB",
    "PA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def parse_max_pixels(text: str) -> int | None:
    """Parse a pixel limit such as ``"1000000000"`` or ``"1_000_000_000"``.

    ``"0"``, ``"none"`` and ``"off"`` (any case) disable the limit and give ``None``.
    """
    value = text.strip().lower()
    if value in ("0", "none", "off"):
        return None
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"pixel limit must be an integer or 'none', got {text!r}") from None
    if limit < 0:
        raise ValueError(f"pixel limit must not be negative, got {text!r}")
    return limit


DEFAULT_MAX_PIXELS: int | None = (
    parse_max_pixels(os.environ[MAX_PIXELS_ENV])
    if os.environ.get(MAX_PIXELS_ENV)
    else BUILTIN_MAX_PIXELS
)


class _Source(Protocol):
    """Pixel access to the levels a file stores, full resolution first."""

    sizes: tuple[Size, ...]
    num_bands: int
    dtype: np.dtype

    def chunk_rows(self, level: int) -> int:
        """Rows decoded together at ``level``: slab reads align to this."""

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Native pixels ``(h, w, num_bands)`` of a window of ``level``."""

    def georeference(self) -> GeoReference:
        """CRS, geotransform, nodata and band meaning, from metadata only."""

    def close(self) -> None:
        """Release file handles."""


class _RawLevel:
    """An uncompressed, contiguous level read with ``os.pread``, one row run at a time.

    A memory map would be shorter, but the kernel maps 64 KiB around every page it
    faults in, so one 336 px window of a 27k px strip TIFF would show ~20 MB resident;
    positioned reads cost exactly the bytes of the window and need no file lock.
    """

    def __init__(self, fd: int, page: tifffile.TiffPage, byteorder: str) -> None:
        self._fd = fd
        self._offset = int(page.dataoffsets[0])
        self._dtype = page.dtype.newbyteorder(byteorder)
        self._planar = page.axes == "SYX"
        self._samples = page.samplesperpixel
        self._width = page.imagewidth
        self._plane = page.imagelength * page.imagewidth * self._dtype.itemsize

    @staticmethod
    def supports(level: tifffile.TiffPageSeries, num_bands: int) -> bool:
        """Whether ``level`` is one raw page of a layout this class addresses."""
        page = level.keyframe
        return (
            hasattr(os, "pread")
            and len(level.pages) == 1
            and page.is_memmappable
            and page.axes in ("YX", "YXS", "SYX")
            and page.samplesperpixel == num_bands
        )

    def _pread(self, size: int, offset: int) -> np.ndarray:
        data = os.pread(self._fd, size, self._offset + offset)
        if len(data) != size:
            raise OSError(f"short read: {len(data)} of {size} bytes at {self._offset + offset}")
        return np.frombuffer(data, self._dtype)

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Pixels ``(h, w, samples)`` of the window."""
        (r0, r1), (c0, c1) = rows, cols
        item = self._dtype.itemsize
        out = np.empty((r1 - r0, c1 - c0, self._samples), self._dtype)
        for r in range(r0, r1):
            if self._planar:
                for s in range(self._samples):
                    offset = s * self._plane + (r * self._width + c0) * item
                    out[r - r0, :, s] = self._pread((c1 - c0) * item, offset)
            else:
                offset = (r * self._width + c0) * self._samples * item
                run = self._pread((c1 - c0) * self._samples * item, offset)
                out[r - r0] = run.reshape(c1 - c0, self._samples)
        return out.astype(self._dtype.newbyteorder("="), copy=False)


class _TiffSource:
    """Windowed TIFF access: zarr over tifffile, or positioned reads for raw data."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tif = tifffile.TiffFile(path)
        self._fd: int | None = None
        try:
            self._open(path)
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path) -> None:
        first = self._tif.pages.first
        if first.imagelength < 1 or first.imagewidth < 1:
            raise ImageReadError(path, f"zero-sized image ({first.imagelength}x{first.imagewidth})")
        series = self._tif.series[0]
        levels = sorted(series.levels, key=lambda s: -math.prod(s.shape))
        self._check_complete(path, levels)
        axes, shape = series.axes, series.shape
        y, x = axes.index("Y"), axes.index("X")
        extra = [i for i, n in enumerate(shape) if i not in (y, x) and n > 1]
        if len(extra) > 1:
            raise ImageReadError(path, f"unsupported layout {axes} {shape}: expected one band axis")
        band_axis = extra[0] if extra else None
        self.num_bands = shape[band_axis] if band_axis is not None else 1
        if series.dtype is None:
            raise ImageReadError(path, "unsupported pixel type (sample format / bit depth)")
        self.dtype = np.dtype(series.dtype)
        self.sizes = tuple((level.shape[y], level.shape[x]) for level in levels)
        # Index every axis: Y and X by the window, the band axis whole, others at 0.
        self._selection: list[Any] = [
            "Y" if i == y else "X" if i == x else slice(None) if i == band_axis else 0
            for i in range(len(shape))
        ]
        kept = [i for i in range(len(shape)) if i in (y, x, band_axis)]
        self._order = [kept.index(i) for i in (y, x, band_axis) if i is not None]
        group = zarr.open(series.aszarr(), mode="r")
        arrays = (
            [group]
            if isinstance(group, zarr.Array)
            else [group[str(i)] for i in range(len(series.levels))]
        )
        by_level = {id(s): a for s, a in zip(series.levels, arrays, strict=True)}
        self._levels: list[_RawLevel | Any] = []
        self._chunk_rows: list[int] = []
        for level in levels:
            if _RawLevel.supports(level, self.num_bands):
                if self._fd is None:
                    self._fd = os.open(path, os.O_RDONLY)
                self._levels.append(_RawLevel(self._fd, level.keyframe, self._tif.byteorder))
                self._chunk_rows.append(1)
            else:
                self._levels.append(by_level[id(level)])
                self._chunk_rows.append(self._rows_per_chunk(level.keyframe))

    def _check_complete(self, path: Path, levels: list[tifffile.TiffPageSeries]) -> None:
        """Detect truncation up front: every tile or strip is listed and ends in the file.

        A page without offsets would otherwise read as all black.
        """
        size = self._tif.filehandle.size
        for level in levels:
            for page in level.pages:
                if page is None:
                    continue
                counts = (len(page.dataoffsets), len(page.databytecounts))
                if not all(counts) or counts[0] != counts[1]:
                    raise ImageReadError(
                        path, "truncated or corrupt file: its tile/strip offsets are missing"
                    )
                ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts)
                if ends.size and int(ends.max()) > size:
                    raise ImageReadError(
                        path,
                        f"truncated file: image data runs to byte {int(ends.max())} "
                        f"but the file has {size} bytes",
                    )

    @staticmethod
    def _rows_per_chunk(page: tifffile.TiffPage) -> int:
        rows = page.tilelength if page.is_tiled else page.rowsperstrip
        return max(1, min(rows or page.imagelength, page.imagelength))

    def chunk_rows(self, level: int) -> int:
        """Tile or strip height of ``level`` (1 for raw rows)."""
        return self._chunk_rows[level]

    def georeference(self) -> GeoReference:
        """GeoTIFF and GDAL tags of the first page, already parsed by tifffile.

        A CRS without an EPSG code (user-defined GeoKeys) is given as WKT, which only
        GDAL can write from GeoKeys: when it is installed, it reads the header for it.
        """
        georef = tiff_georeference(self._tif, self.num_bands)
        if georef.epsg is None and _GEOKEY_DIRECTORY in self._tif.pages.first.tags:
            wkt = gdal.crs_wkt(self._path) if gdal.available() else None
            if wkt:
                georef = dataclasses.replace(georef, crs_wkt=wkt)
        return georef

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Decode only the tiles or strips under the window."""
        reader = self._levels[level]
        if isinstance(reader, _RawLevel):
            return reader.read(rows, cols)
        selection = tuple(
            slice(*rows) if t == "Y" else slice(*cols) if t == "X" else t for t in self._selection
        )
        data = np.asarray(reader[selection]).transpose(self._order)
        return data if data.ndim == 3 else data[:, :, None]

    def close(self) -> None:
        """Close the TIFF and the raw-read descriptor."""
        self._levels = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()


class _PillowSource:
    """PNG and JPEG: decoded whole on first use (JPEG at a reduced DCT scale if enough)."""

    #: Formats decoded whole get the pixel limit capped (see the module docstring).
    decodes_whole = True

    def __init__(self, path: Path, factory: type[ImageFile.ImageFile]) -> None:
        self._path = path
        self._factory = factory
        with factory(str(path)) as im:
            width, height = im.size
            self._mode = _PILLOW_CONVERT.get(im.mode, im.mode)
        probe = np.asarray(Image.new(self._mode, (1, 1)))
        self.num_bands = 1 if probe.ndim == 2 else probe.shape[2]
        self.dtype = probe.dtype
        # JPEG decodes at 1/2, 1/4, 1/8 scale for free; Pillow's draft() needs the
        # request to be at least 2x the scale on each side to land on that scale.
        reductions = _JPEG_REDUCTIONS if factory is JpegImagePlugin.JpegImageFile else ()
        self._scales = (1, *(s for s in reductions if min(height, width) >= 2 * s))
        self.sizes = tuple((math.ceil(height / s), math.ceil(width / s)) for s in self._scales)
        self._decoded: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def chunk_rows(self, level: int) -> int:
        """Rows of a decoded level are sliced individually."""
        return 1

    def georeference(self) -> GeoReference:
        """No georeferencing; the band colours follow the decoded mode."""
        return GeoReference(colours=_PILLOW_COLOURS.get(self._mode, ()))

    def _decode(self, level: int) -> np.ndarray:
        with self._lock:
            if level not in self._decoded:
                height, width = self.sizes[level]
                scale = self._scales[level]
                with self._factory(str(self._path)) as im:
                    if scale > 1:
                        im.draft(im.mode, (im.size[0] // scale, im.size[1] // scale))
                    im.load()
                    if im.size != (width, height):
                        raise OSError(f"decoder returned {im.size}, expected {(width, height)}")
                    data = np.asarray(im.convert(self._mode) if im.mode != self._mode else im)
                self._decoded[level] = data if data.ndim == 3 else data[:, :, None]
            return self._decoded[level]

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Slice the decoded level."""
        return self._decode(level)[rows[0] : rows[1], cols[0] : cols[1]]

    def close(self) -> None:
        """Forget decoded pixels (Pillow files are closed after each decode)."""
        with self._lock:
            self._decoded.clear()


def _resampling(scale_y: float, scale_x: float) -> tuple[Image.Resampling, float]:
    """Area averaging when shrinking on both axes, bilinear otherwise, with filter support."""
    if scale_y >= 1.0 and scale_x >= 1.0:
        return Image.Resampling.BOX, 0.5
    return Image.Resampling.BILINEAR, 1.0


def _span(start: float, end: float, out_len: int, size: int, support: float) -> tuple[int, int]:
    """Source pixels Pillow's resampler touches for ``out_len`` outputs over ``[start, end)``.

    Mirrors Pillow's coefficient window (centre +- support * max(scale, 1)) plus one
    pixel of slack, so resizing the cropped window equals resizing the whole level.
    """
    scale = (end - start) / out_len
    reach = support * max(scale, 1.0)
    lo = math.floor(start + 0.5 * scale - reach + 0.5) - 1
    hi = math.floor(end - 0.5 * scale + reach + 0.5) + 2
    return max(0, lo), min(size, hi)


def _valid_pixels(window: np.ndarray, nodata: float) -> np.ndarray:
    """Pixels where at least one band holds data, as GDAL's per-dataset nodata mask."""
    if math.isnan(nodata):
        return ~np.all(np.isnan(window), axis=2)
    return ~np.all(window == nodata, axis=2)


def _resize(
    window: np.ndarray,
    box: Box,
    out_size: Size,
    resample: Image.Resampling,
    nodata: float | None = None,
) -> np.ndarray:
    """Resize each band of ``window`` over the float ``box`` to ``out_size`` ``(h, w)``.

    With ``nodata``, resampling is normalised by the share of valid pixels under each
    output pixel, so nodata never bleeds into valid edges, and outputs mostly over
    nodata become NaN (``float32`` output).
    """
    h, w = window.shape[:2]
    x0, y0, x1, y1 = box
    box = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
    size = (out_size[1], out_size[0])

    def resized(band: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(band))
        return np.asarray(image.resize(size, resample, box=box))

    if nodata is None:
        return np.stack(
            [
                resized(band if band.dtype == np.uint8 else band.astype(np.float32))
                for band in np.moveaxis(window, 2, 0)
            ],
            axis=-1,
        )
    valid = _valid_pixels(window, nodata)
    weight = resized(valid.astype(np.float32))
    blank = weight < _MIN_VALID_WEIGHT
    safe_weight = np.where(blank, np.float32(1.0), weight)
    bands = []
    for band in np.moveaxis(window, 2, 0):
        band = np.where(valid, band.astype(np.float32), np.float32(0.0))
        out = resized(band) / safe_weight
        out[blank] = np.nan
        bands.append(out)
    return np.stack(bands, axis=-1)


class LargeImage:
    """A lazily opened image: size and band layout now, pixels only when read.

    Use as a context manager or call :meth:`close`. Reads are thread-safe.

    Attributes:
        path: The file, or the URL of a remote image.
        bands: 1-based source band shown as each of R, G, B.
        band_notice: Why bands 1-3 are shown when the file does not say which bands are
            red, green and blue, or None.
        percentiles: Stretch percentiles for non-8-bit data, or ``None`` for the full
            range of the data type.
    """

    def __init__(
        self,
        path: Path | str,
        source: _Source,
        bands: BandChoice,
        percentiles: tuple[float, float] | None,
    ) -> None:
        self.path = path
        self.bands = bands.rgb
        self.band_notice = bands.notice
        self.percentiles = percentiles
        self._source = source
        self._limits: tuple[np.ndarray, np.ndarray] | None = None
        self._limits_lock = threading.Lock()

    @property
    def name(self) -> str:
        """The file name, or the last part of a URL."""
        return self.path.name if isinstance(self.path, Path) else self.path.rsplit("/", 1)[-1]

    @cached_property
    def georef(self) -> GeoReference:
        """CRS, geotransform, nodata and band meaning, read from the file's metadata."""
        return self._source.georeference()

    @property
    def nodata(self) -> float | None:
        """Value of pixels without data (shown black, left out of the stretch), or None."""
        return self.georef.nodata

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for traces: source, size, bands shown and georeferencing."""
        return {
            "image": str(self.path),
            "size": [self.height, self.width],
            "num_bands": self.num_bands,
            "dtype": str(self.dtype),
            "bands": list(self.bands),
            "band_notice": self.band_notice,
            "georeference": self.georef.to_dict(),
        }

    @property
    def height(self) -> int:
        """Full-resolution height in pixels."""
        return self._source.sizes[0][0]

    @property
    def width(self) -> int:
        """Full-resolution width in pixels."""
        return self._source.sizes[0][1]

    @property
    def num_bands(self) -> int:
        """Bands (samples per pixel) in the file."""
        return self._source.num_bands

    @property
    def dtype(self) -> np.dtype:
        """Pixel type in the file."""
        return self._source.dtype

    @property
    def level_sizes(self) -> tuple[Size, ...]:
        """``(h, w)`` of every stored level, full resolution first."""
        return self._source.sizes

    @property
    def overview_sizes(self) -> tuple[Size, ...]:
        """``(h, w)`` of reduced levels readable without decoding full resolution.

        TIFF overviews (reduced pages or SubIFDs) or JPEG DCT scales, finest first.
        """
        return self._source.sizes[1:]

    def source_level(self, box: Box, out_size: Size) -> int:
        """Index into :attr:`level_sizes` that :meth:`read_region` reads for this request.

        The coarsest level whose resolution, within :data:`RESOLUTION_TOLERANCE`,
        reaches ``out_size`` over ``box``.
        """
        x0, y0, x1, y1 = self._clip(box)
        need_y, need_x = out_size[0] / (y1 - y0), out_size[1] / (x1 - x0)
        for level in range(len(self.level_sizes) - 1, 0, -1):
            h, w = self.level_sizes[level]
            have_y, have_x = h / self.height, w / self.width
            if (
                have_y * (1 + RESOLUTION_TOLERANCE) >= need_y
                and have_x * (1 + RESOLUTION_TOLERANCE) >= need_x
            ):
                return level
        return 0

    def read_region(self, box: Box, out_size: Size) -> np.ndarray:
        """Read an image region resampled to ``out_size`` as 8-bit RGB.

        Args:
            box: ``(x0, y0, x1, y1)`` in full-resolution pixels, floats allowed;
                must lie inside the image (float noise at the border is clipped).
            out_size: Output ``(h, w)``.

        Returns:
            ``(h, w, 3)`` ``uint8`` array.

        Raises:
            ValueError: Empty or out-of-image box, or non-positive ``out_size``.
            OptionError: ``out_size`` over :data:`MAX_REGION_PIXELS`.
            ImageReadError: The pixels cannot be decoded (corrupt file).
        """
        out_h, out_w = (int(v) for v in out_size)
        if out_h * out_w > MAX_REGION_PIXELS:
            raise OptionError(
                "out_size",
                f"{out_h}x{out_w} = {out_h * out_w:,} pixels is over the limit of "
                f"{MAX_REGION_PIXELS:,} per read of {self.path}",
            )
        raw = self._resample(box, out_size)
        if raw.dtype == np.uint8:
            return raw
        if not needs_stretch(self.dtype):
            # 8-bit data with nodata: NaN marks nodata and becomes black.
            return stretch_to_uint8(raw, 0.0, 255.0)
        low, high = self.stretch_limits()
        return stretch_to_uint8(raw, low, high)

    def stretch_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(low, high)`` values mapped to 0 and 255 for R, G, B.

        Measured once, on a view of at most 1,024 px per side read from the coarsest
        adequate level, so opening a 27k px 16-bit image does not decode it whole.
        """
        with self._limits_lock:
            if self._limits is None:
                if self.percentiles is None:
                    low, high = dtype_limits(self.dtype)
                    self._limits = np.full(3, low), np.full(3, high)
                else:
                    scale = min(1.0, _STATS_SIDE / max(self.height, self.width))
                    size = (max(1, round(self.height * scale)), max(1, round(self.width * scale)))
                    sample = self._resample((0.0, 0.0, self.width, self.height), size)
                    self._limits = percentile_limits(sample, self.percentiles)
            return self._limits

    def _clip(self, box: Box) -> Box:
        x0, y0, x1, y1 = (float(v) for v in box)
        slack_x, slack_y = 1e-6 * self.width, 1e-6 * self.height
        if not (
            -slack_x <= x0 < x1 <= self.width + slack_x
            and -slack_y <= y0 < y1 <= self.height + slack_y
        ):
            raise ValueError(
                f"box {box} is empty or outside the {self.height}x{self.width} image {self.path}"
            )
        return max(x0, 0.0), max(y0, 0.0), min(x1, self.width), min(y1, self.height)

    def _resample(self, box: Box, out_size: Size) -> np.ndarray:
        """R, G, B resampled over ``box``.

        ``uint8`` for 8-bit data without nodata, else ``float32`` with NaN for nodata.
        """
        out_h, out_w = (int(v) for v in out_size)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"out_size must be positive, got {out_size}")
        x0, y0, x1, y1 = self._clip(box)
        level = self.source_level((x0, y0, x1, y1), (out_h, out_w))
        lh, lw = self.level_sizes[level]
        fy, fx = lh / self.height, lw / self.width
        x0, x1, y0, y1 = x0 * fx, x1 * fx, y0 * fy, y1 * fy
        resample, support = _resampling((y1 - y0) / out_h, (x1 - x0) / out_w)
        c0, c1 = _span(x0, x1, out_w, lw, support)
        r0, r1 = _span(y0, y1, out_h, lh, support)
        unique = sorted({b - 1 for b in self.bands})
        nodata = self.nodata

        def source_rows(k0: int, k1: int) -> tuple[int, int]:
            """Source rows that output rows ``[k0, k1)`` need."""
            ty0, ty1 = y0 + (y1 - y0) * k0 / out_h, y0 + (y1 - y0) * k1 / out_h
            return _span(ty0, ty1, k1 - k0, lh, support)

        # Stream the window through a buffer in slabs of whole chunk rows, so each
        # tile or strip is decoded once and memory stays at about one slab, however
        # tall the window (a thumbnail of a file without overviews).
        chunk = self._source.chunk_rows(level)
        slab = max(chunk, _SLAB_BUDGET_PIXELS // (c1 - c0) // chunk * chunk)
        pieces: list[np.ndarray] = []
        buffer: np.ndarray | None = None
        buffer_top = read_top = r0
        done = 0
        while done < out_h:
            end = r1 if r1 - read_top <= slab else read_top - read_top % chunk + slab
            rows = self._read(level, (read_top, end), (c0, c1))[:, :, unique]
            buffer = rows if buffer is None else np.concatenate([buffer, rows])
            read_top = end
            ready = done
            while ready < out_h and (
                read_top == r1 or source_rows(ready, ready + 1)[1] <= read_top
            ):
                ready += 1
            if ready == done:
                continue
            ty0, ty1 = y0 + (y1 - y0) * done / out_h, y0 + (y1 - y0) * ready / out_h
            box = (x0 - c0, ty0 - buffer_top, x1 - c0, ty1 - buffer_top)
            pieces.append(_resize(buffer, box, (ready - done, out_w), resample, nodata))
            done = ready
            if done < out_h:
                keep = max(buffer_top, source_rows(done, done + 1)[0])
                # A copy, so the rest of the slab is freed before the next one arrives.
                buffer, buffer_top = buffer[keep - buffer_top :].copy(), keep
        rgb = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return rgb[:, :, [unique.index(b - 1) for b in self.bands]]

    def _read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        try:
            return self._source.read(level, rows, cols)
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
            raise ImageReadError(
                self.path, f"cannot decode pixels, file is corrupt or truncated ({exc})"
            ) from exc

    def close(self) -> None:
        """Release the file."""
        self._source.close()

    def __enter__(self) -> LargeImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"LargeImage({str(self.path)!r}, {self.height}x{self.width}, "
            f"{self.num_bands} x {self.dtype}, overviews={list(self.overview_sizes)})"
        )


def _gdal_source(location: str | Path, what: str) -> _Source:
    """The GDAL backend for ``location``, or a one-line error saying how to get it."""
    if not gdal.available():
        raise ImageReadError(location, f"{what} needs GDAL: {gdal.INSTALL_HINT}")
    return gdal.GdalSource(str(location))


def _open_source(path: Path) -> _Source:
    """Pick the backend from the file's magic bytes, not its extension.

    TIFF, PNG and JPEG have their own readers; anything else goes to GDAL when it is
    installed, which recognises or refuses it.
    """
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        raise ImageReadError(path, "empty file (0 bytes), not an image")
    try:
        if head[:4] in _TIFF_MAGIC:
            return _TiffSource(path)
        if head.startswith(_PNG_MAGIC):
            if len(head) >= 24 and (head[16:20] == bytes(4) or head[20:24] == bytes(4)):
                width, height = (int.from_bytes(head[i : i + 4], "big") for i in (16, 20))
                raise ImageReadError(path, f"zero-sized image ({height}x{width})")
            return _PillowSource(path, PngImagePlugin.PngImageFile)
        if head.startswith(_JPEG_MAGIC):
            return _PillowSource(path, JpegImagePlugin.JpegImageFile)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - parsers raise many types on bad headers
        raise ImageReadError(
            path, f"cannot parse image header, file is corrupt or truncated ({exc})"
        ) from exc
    known = gdal.gdal_format_name(head)
    if known is not None:
        return _gdal_source(path, f"a {known} file")
    if gdal.available():
        try:
            return gdal.GdalSource(str(path))
        except ImageReadError:
            raise ImageReadError(
                path,
                f"not a supported image (not TIFF, PNG, JPEG or any format GDAL reads); "
                f"starts with {head[:8]!r}",
            ) from None
    raise ImageReadError(
        path,
        f"not a supported image (TIFF, PNG or JPEG; other formats need GDAL: "
        f"{gdal.INSTALL_HINT}); starts with {head[:8]!r}",
    )


def open_image(
    path: str | PathLike[str],
    *,
    bands: Sequence[int] | None = None,
    percentiles: Sequence[float] | None = DEFAULT_PERCENTILES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> LargeImage:
    """Open an image without decoding its pixels.

    Args:
        path: TIFF/BigTIFF/GeoTIFF, PNG or JPEG file (the format is sniffed from the
            content); with the GDAL backend installed also JPEG2000, VRT, NITF and any
            raster GDAL reads, and remote images (``https://``, ``s3://``, ``gs://``,
            ``/vsi...``), fetched by byte ranges.
        bands: 1-based source bands for R, G, B (three numbers) or grey (one), as in
            GDAL. ``None``: the bands the file calls red, green and blue; else a single
            band as grey, or bands 1-3 with :attr:`LargeImage.band_notice` set; two-band
            images must choose.
        percentiles: ``(low, high)`` per-band percentiles mapped to 0 and 255 for
            16-bit, float and other non-8-bit data, measured on a low-resolution view
            without nodata pixels. ``None`` maps the data type's full range (floats:
            ``[0, 1]``). 8-bit data is never stretched.
        max_pixels: Refuse images with more pixels than this (decompression-bomb
            guard); ``None`` disables the check.

    Returns:
        The opened image; close it (or use ``with``) when done.

    Raises:
        ImageReadError: Missing file, not an image, corrupt or truncated file,
            zero-sized image, too many pixels, bands that cannot be shown as RGB, or
            a format or URL that needs the GDAL backend when it is not installed.
    """
    location: Path | str
    if gdal.is_remote(str(path)):
        location = str(path)
    else:
        location = Path(path)
        if not location.exists():
            raise ImageReadError(location, "no such file")
        if not location.is_file():
            raise ImageReadError(location, "not a regular file")
    checked = None if percentiles is None else validate_percentiles(percentiles)
    if isinstance(location, str):
        source = _gdal_source(location, "a remote image")
    else:
        source = _open_source(location)
    try:
        height, width = source.sizes[0]
        if height < 1 or width < 1:
            raise ImageReadError(location, f"zero-sized image ({height}x{width})")
        limit, whole = max_pixels, getattr(source, "decodes_whole", False)
        if limit is not None and whole:
            limit = min(limit, WHOLE_DECODE_MAX_PIXELS)
        if limit is not None and height * width > limit:
            kind = " for a PNG/JPEG, which is decoded whole" if whole else ""
            raise ImageReadError(
                location,
                f"{height}x{width} = {height * width:,} pixels exceeds the limit of "
                f"{limit:,}{kind} (decompression-bomb guard); pass max_pixels=None or set "
                f"{MAX_PIXELS_ENV}=0 to disable it",
            )
        meaning = None
        if bands is None and source.num_bands > 1:
            meaning = rgb_from_meaning(source.georeference(), source.num_bands)
        try:
            choice = resolve_bands(source.num_bands, bands, meaning)
        except ValueError as exc:
            raise ImageReadError(location, str(exc)) from None
    except BaseException:
        source.close()
        raise
    return LargeImage(location, source, choice, checked)
