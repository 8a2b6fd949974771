"""Optional GDAL backend (through rasterio) for what tifffile cannot read, and for URLs.

JPEG2000, VRT mosaics, NITF and every other raster GDAL opens, and images in object
storage (``https://``, ``s3://``, ``gs://``, ``/vsi...`` paths, through GDAL's virtual
file systems, which fetch only the byte ranges a read needs). It offers the reader the
same interface as the tifffile backend: the stored levels (full resolution and each
overview, opened with GDAL's ``OVERVIEW_LEVEL``) read window by window at native
resolution, so the reader's level choice, resampling, stretch and pixel limit are
shared by every format.

GDAL's block cache is bounded to :data:`DEFAULT_GDAL_CACHE_BYTES` (or
``LRSVQA_GDAL_CACHE_MB``) for every call this backend makes, instead of GDAL's default
of 5% of RAM per process.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from typing import Any

import numpy as np

from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.georef import GeoReference

GDAL_CACHE_ENV = "LRSVQA_GDAL_CACHE_MB"
DEFAULT_GDAL_CACHE_BYTES = int(os.environ.get(GDAL_CACHE_ENV, "64")) * 2**20
INSTALL_HINT = "install the optional GDAL backend: pip install 'lrsvqa[geo]'"

_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|/vsi[a-z0-9_]+/)", re.IGNORECASE)
# Formats recognised without GDAL, so a missing backend gets a precise message.
_GDAL_MAGIC = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000 codestream"),
    (b"<VRTDataset", "VRT"),
    (b"NITF", "NITF"),
    (b"NSIF", "NITF"),
)


def is_remote(location: str) -> bool:
    """Whether ``location`` is a URL or a GDAL virtual-file-system path, not a local file."""
    return bool(_REMOTE.match(location))


def gdal_format_name(head: bytes) -> str | None:
    """Name of a GDAL-only format recognised from a file's first bytes, or None."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for magic, name in _GDAL_MAGIC:
        if stripped.startswith(magic):
            return name
    return None


def available() -> bool:
    """Whether rasterio (and so GDAL) is installed."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


class GdalSource:
    """Windowed access to every stored level of a raster GDAL opens, thread-safe.

    Args:
        location: Local path, URL or ``/vsi...`` path.
        cache_bytes: GDAL block-cache bound while this source reads.

    Raises:
        ImageReadError: GDAL cannot open it, or its bands differ in type.
    """

    def __init__(self, location: str, cache_bytes: int = DEFAULT_GDAL_CACHE_BYTES) -> None:
        import rasterio

        self._location = location
        self._lock = threading.Lock()
        self._env = rasterio.Env(
            GDAL_CACHEMAX=cache_bytes,
            # Listing a remote "directory" to find side-car files costs requests.
            GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
        )
        self._datasets: list[Any] = []
        try:
            with self._env, warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                base = rasterio.open(location)
                self._datasets.append(base)
                for level in range(len(base.overviews(1)) if base.count else 0):
                    self._datasets.append(rasterio.open(location, overview_level=level))
        except rasterio.errors.RasterioError as exc:
            self.close()
            raise ImageReadError(location, f"GDAL cannot open it ({_first_line(exc)})") from None
        except BaseException:
            self.close()
            raise
        if base.count < 1:
            self.close()
            raise ImageReadError(location, "GDAL opened it but it has no raster bands")
        if len(set(base.dtypes)) > 1:
            self.close()
            raise ImageReadError(location, f"bands of different pixel types {set(base.dtypes)}")
        self.num_bands = base.count
        self.dtype = np.dtype(base.dtypes[0])
        self.sizes = tuple((ds.height, ds.width) for ds in self._datasets)
        self.driver = base.driver

    def chunk_rows(self, level: int) -> int:
        """Block height of ``level``: slab reads align to it."""
        return max(1, int(self._datasets[level].block_shapes[0][0]))

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Native pixels ``(h, w, bands)`` of a window; GDAL fetches only its blocks."""
        from rasterio.windows import Window

        (r0, r1), (c0, c1) = rows, cols
        with self._lock, self._env:
            data = self._datasets[level].read(window=Window(c0, r0, c1 - c0, r1 - r0))
        return np.moveaxis(data, 0, -1)

    def georeference(self) -> GeoReference:
        """CRS, geotransform, nodata, descriptions and colours from the GDAL dataset."""
        base = self._datasets[0]
        crs = base.crs
        epsg = crs.to_epsg() if crs else None
        georeferenced = crs is not None or not base.transform.is_identity
        return GeoReference(
            epsg=epsg,
            crs_wkt=crs.to_wkt() if crs and epsg is None else None,
            crs_name=_crs_name(crs),
            geotransform=tuple(base.transform.to_gdal()) if georeferenced else None,
            nodata=base.nodata,
            descriptions=tuple(base.descriptions),
            colours=tuple(c.name.lower() for c in base.colorinterp),
        )

    def close(self) -> None:
        """Close every level's dataset."""
        with self._lock:
            for dataset in self._datasets:
                dataset.close()
            self._datasets = []


def crs_wkt(location: str) -> str | None:
    """WKT of a raster's CRS as GDAL reads it (header only), or None if it has none."""
    import rasterio

    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(location) as dataset:
                return dataset.crs.to_wkt() if dataset.crs else None
    except rasterio.errors.RasterioError:
        return None


def _crs_name(crs: Any) -> str | None:
    """The CRS's own name from its WKT (``PROJCRS["WGS 84 / UTM zone 33N", ...``), or None."""
    if crs is None:
        return None
    match = re.match(r'\s*\w+\["([^"]*)"', crs.to_wkt())
    return match.group(1) if match else None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
