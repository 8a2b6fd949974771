"""Where an image lies on the ground and what its bands mean, read from the file's tags.

GeoTIFF keeps the coordinate reference system in GeoKeys, the pixel-to-map affine
transform in ``ModelTransformation`` or ``ModelTiepoint`` + ``ModelPixelScale``, and
GDAL adds ``GDAL_NODATA`` and a ``GDAL_METADATA`` XML with band descriptions and
colour interpretations. tifffile has already parsed those tags with the first page,
so :func:`tiff_georeference` only interprets them: no pixel is decoded. The GDAL
backend fills the same record from its dataset (``lrsvqa.imagery.gdal``).

Geotransforms use GDAL's order ``(x0, dx, rx, y0, ry, dy)``: map ``x = x0 + col * dx +
row * rx`` and ``y = y0 + col * ry + row * dy`` at pixel corner ``(col, row)``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tifffile

from lrsvqa.types import Box

GeoTransform = tuple[float, float, float, float, float, float]

# GeoKey value meaning "user-defined", i.e. no EPSG code.
_USER_DEFINED = 32767
_PIXEL_IS_POINT = 2
_GDAL_NODATA_TAG = 42113
# TIFF Photometric values and the colour of each sample they imply.
_PHOTOMETRIC_COLOURS = {
    tifffile.PHOTOMETRIC.RGB: ("red", "green", "blue"),
    tifffile.PHOTOMETRIC.MINISBLACK: ("gray",),
    tifffile.PHOTOMETRIC.MINISWHITE: ("gray",),
    tifffile.PHOTOMETRIC.PALETTE: ("palette",),
}
_ALPHA_EXTRASAMPLES = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)


@dataclass(frozen=True)
class GeoReference:
    """Georeferencing and band meaning of one image; every field may be unknown.

    Attributes:
        epsg: EPSG code of the CRS, or None (none, or user-defined).
        crs_wkt: WKT of the CRS when known without an EPSG code (from GDAL), or None.
        crs_name: Human-readable CRS name (GeoTIFF citation or GDAL's), or None.
        geotransform: GDAL-order affine transform from pixel corners to map
            coordinates, or None for an image without georeferencing.
        nodata: Value marking pixels without data, or None.
        descriptions: Per-band description (e.g. ``"NIR"``), None where absent.
        colours: Per-band colour interpretation in lower case (``"red"``,
            ``"alpha"``, ``"undefined"``, ...), None where absent.
    """

    epsg: int | None = None
    crs_wkt: str | None = None
    crs_name: str | None = None
    geotransform: GeoTransform | None = None
    nodata: float | None = None
    descriptions: tuple[str | None, ...] = ()
    colours: tuple[str | None, ...] = ()

    @property
    def crs(self) -> str | None:
        """The CRS as ``EPSG:n``, else its WKT, else None."""
        if self.epsg is not None:
            return f"EPSG:{self.epsg}"
        return self.crs_wkt

    def pixel_to_map(self, x: float, y: float) -> tuple[float, float]:
        """Map coordinates of pixel position ``(x, y)`` (column, row; corners are integers).

        Without a geotransform the pixel position is returned unchanged.
        """
        if self.geotransform is None:
            return x, y
        x0, dx, rx, y0, ry, dy = self.geotransform
        return x0 + x * dx + y * rx, y0 + x * ry + y * dy

    def box_ring(self, box: Box) -> list[list[float]]:
        """Closed ring of a pixel box ``(x0, y0, x1, y1)`` in map coordinates.

        Corners go top-left, bottom-left, bottom-right, top-right, which is
        counter-clockwise on a north-up map (RFC 7946's exterior-ring order). Each
        corner is transformed, so rotated geotransforms give the true quadrilateral.
        """
        x0, y0, x1, y1 = box
        corners = [(x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0)]
        return [list(self.pixel_to_map(x, y)) for x, y in corners]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (NaN nodata written as the string ``"nan"``)."""
        record = asdict(self)
        if self.nodata is not None and math.isnan(self.nodata):
            record["nodata"] = "nan"
        record["crs"] = self.crs
        return record


def _geokey_code(value: Any) -> int | None:
    """EPSG code of a GeoKey value (an enum or an int), None when user-defined or absent."""
    if value is None:
        return None
    code = int(value)
    return None if code in (0, _USER_DEFINED) else code


def _geotransform(tags: dict[str, Any]) -> GeoTransform | None:
    """Affine transform from ModelTransformation, or from one tiepoint and a pixel scale."""
    matrix = tags.get("ModelTransformation")
    if matrix is not None:
        # tifffile hands a 4 x 4 nested list; anything else is malformed.
        m = [float(v) for v in np.asarray(matrix, dtype=np.float64).ravel()]
        if len(m) != 16:
            return None
        return m[3], m[0], m[1], m[7], m[4], m[5]
    tiepoint, scale = tags.get("ModelTiepoint"), tags.get("ModelPixelScale")
    if tiepoint is None or scale is None or len(tiepoint) != 6:
        # Several tiepoints without a scale are ground control points, not an affine map.
        return None
    col, row, _, x, y, _ = (float(v) for v in tiepoint)
    sx, sy = float(scale[0]), float(scale[1])
    return x - col * sx, sx, 0.0, y + row * sy, 0.0, -sy


def _pixel_is_point_shift(transform: GeoTransform) -> GeoTransform:
    """Move the origin from a pixel's centre to its corner, as GDAL does for PixelIsPoint."""
    x0, dx, rx, y0, ry, dy = transform
    return x0 - 0.5 * (dx + rx), dx, rx, y0 - 0.5 * (ry + dy), ry, dy


def parse_nodata(text: str) -> float | None:
    """The value of a ``GDAL_NODATA`` tag (``"0"``, ``"-9999"``, ``"nan"``), None if unreadable."""
    try:
        return float(text.strip().strip("\x00"))
    except ValueError:
        return None


def _gdal_band_items(xml: str | None, num_bands: int) -> dict[str, list[str | None]]:
    """Per-band ``description`` and ``colorinterp`` items of a ``GDAL_METADATA`` tag."""
    items: dict[str, list[str | None]] = {
        "description": [None] * num_bands,
        "colorinterp": [None] * num_bands,
    }
    if not xml:
        return items
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return items
    for item in root.iter("Item"):
        role, sample = item.get("role"), item.get("sample")
        if role in items and sample is not None and sample.isdigit():
            index = int(sample)
            if index < num_bands and item.text:
                items[role][index] = item.text.strip()
    return items


def _photometric_colours(page: tifffile.TiffPage, num_bands: int) -> list[str | None]:
    """Colours the TIFF's Photometric and ExtraSamples tags imply for each sample."""
    base = _PHOTOMETRIC_COLOURS.get(page.photometric, ())
    colours: list[str | None] = list(base[:num_bands]) + [None] * max(0, num_bands - len(base))
    extras = tuple(page.extrasamples or ())
    first_extra = num_bands - len(extras)
    for offset, kind in enumerate(extras):
        if 0 <= first_extra + offset < num_bands:
            alpha = kind in _ALPHA_EXTRASAMPLES
            colours[first_extra + offset] = "alpha" if alpha else "undefined"
    return colours


def tiff_georeference(tif: tifffile.TiffFile, num_bands: int) -> GeoReference:
    """Interpret the GeoTIFF and GDAL tags of the first page; decodes no pixels.

    Args:
        tif: The open TIFF.
        num_bands: Bands of its image (sizes the per-band lists).
    """
    page = tif.pages.first
    geo = page.geotiff_tags or {}
    epsg = _geokey_code(geo.get("ProjectedCSTypeGeoKey")) or _geokey_code(
        geo.get("GeographicTypeGeoKey")
    )
    name = geo.get("PCSCitationGeoKey") or geo.get("GTCitationGeoKey")
    name = name or geo.get("GeogCitationGeoKey")
    transform = _geotransform(geo)
    if transform is not None and int(geo.get("GTRasterTypeGeoKey", 1)) == _PIXEL_IS_POINT:
        transform = _pixel_is_point_shift(transform)
    nodata_tag = page.tags.get(_GDAL_NODATA_TAG)
    nodata = parse_nodata(str(nodata_tag.value)) if nodata_tag is not None else None
    gdal = _gdal_band_items(tif.pages.first.tags.valueof(42112), num_bands)
    photometric = _photometric_colours(page, num_bands)
    colours = tuple(
        (meta.lower() if meta else None) or implied
        for meta, implied in zip(gdal["colorinterp"], photometric, strict=True)
    )
    return GeoReference(
        epsg=epsg,
        crs_name=str(name).strip("|").strip() if name else None,
        geotransform=transform,
        nodata=nodata,
        descriptions=tuple(gdal["description"]),
        colours=colours,
    )


_COLOUR_WORD = re.compile(r"\b(red|green|blue)\b", re.IGNORECASE)


def rgb_from_meaning(georef: GeoReference, num_bands: int) -> tuple[int, int, int] | None:
    """1-based bands the file itself calls red, green and blue, or None if it does not say.

    The colour interpretation wins; otherwise band descriptions that name exactly one
    of the words Red, Green, Blue (e.g. ``"B4 red"``, ``"Red (665 nm)"``). Each colour
    must be claimed by exactly one band.
    """
    for labels in (georef.colours, georef.descriptions):
        found: dict[str, list[int]] = {"red": [], "green": [], "blue": []}
        for index, label in enumerate(labels[:num_bands]):
            words = {w.lower() for w in _COLOUR_WORD.findall(label or "")}
            if len(words) == 1:
                found[words.pop()].append(index + 1)
        if all(len(bands) == 1 for bands in found.values()):
            return found["red"][0], found["green"][0], found["blue"][0]
    return None
