"""Band selection and contrast stretch from any sensor data type to 8-bit RGB.

The vision encoder expects 8-bit RGB; remote-sensing rasters are often 16-bit,
floating point or multispectral. Pure numpy, no I/O: the reader decides *which*
pixels to measure (a low-resolution level) and this module decides *how* to map them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_PERCENTILES = (2.0, 98.0)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class BandChoice:
    """The source bands shown as red, green and blue, and why.

    Attributes:
        rgb: 1-based source band shown as each of R, G and B (GDAL's numbering).
        notice: Set when the file did not say which bands are red, green and blue and
            a default was taken: a sentence naming the bands used, for the user.
    """

    rgb: RGB
    notice: str | None = None


def resolve_bands(
    num_bands: int,
    bands: Sequence[int] | None = None,
    from_meaning: RGB | None = None,
) -> BandChoice:
    """Choose the three source bands shown as red, green and blue.

    Args:
        num_bands: Bands in the image.
        bands: 1-based band numbers as in GDAL, one (shown as grey) or three (R, G,
            B). ``None`` takes ``from_meaning``, else replicates a single band, else
            shows bands 1, 2, 3 with a notice.
        from_meaning: Bands the file's colour interpretation or band descriptions
            call red, green and blue, if it says.

    Returns:
        The choice and, for a default the file does not back, a notice.

    Raises:
        ValueError: The choice is ambiguous (two bands and no ``bands``), has the
            wrong length, or names a band the image does not have.
    """
    if num_bands < 1:
        raise ValueError(f"image has {num_bands} bands")
    if bands is None:
        if from_meaning is not None:
            return BandChoice(from_meaning)
        if num_bands == 1:
            return BandChoice((1, 1, 1))
        if num_bands == 2:
            raise ValueError(
                "2-band image: choose bands explicitly (1-based), e.g. bands=(1,) for grey "
                "or bands=(1, 2, 2) for a false-colour composite"
            )
        return BandChoice(
            (1, 2, 3),
            notice=(
                f"showing bands 1, 2, 3 of {num_bands} as red, green, blue: the file does not "
                "say which bands are red, green and blue (choose with --bands, e.g. 3,2,1)"
            ),
        )
    chosen = tuple(int(b) for b in bands)
    if len(chosen) not in (1, 3):
        raise ValueError(f"bands must name 1 (grey) or 3 (RGB) bands, got {len(chosen)}")
    bad = [b for b in chosen if not 1 <= b <= num_bands]
    if bad:
        raise ValueError(
            f"bands {bad} out of range for a {num_bands}-band image (bands count from 1)"
        )
    if len(chosen) == 1:
        return BandChoice((chosen[0], chosen[0], chosen[0]))
    return BandChoice((chosen[0], chosen[1], chosen[2]))


def validate_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """Check a ``(low, high)`` percentile pair with ``0 <= low < high <= 100``."""
    if len(percentiles) != 2:
        raise ValueError(f"percentiles must be a (low, high) pair, got {percentiles!r}")
    low, high = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return low, high


def needs_stretch(dtype: np.dtype) -> bool:
    """Whether values must be rescaled to reach 8 bits (everything except ``uint8``)."""
    return np.dtype(dtype) != np.uint8


def percentile_limits(
    sample: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band stretch limits from a sample of the image.

    Per-band limits balance sensors whose bands have very different gains. NaN and
    infinite values (common nodata markers in float rasters) are ignored; a band with
    no finite value gets the limits ``(0, 1)``.

    Args:
        sample: ``(h, w, bands)`` pixels, typically a low-resolution view.
        percentiles: ``(low, high)`` percentiles mapped to 0 and 255.

    Returns:
        ``(low, high)`` arrays of one value per band.
    """
    low_q, high_q = validate_percentiles(percentiles)
    flat = np.asarray(sample, dtype=np.float64).reshape(-1, sample.shape[-1])
    low = np.zeros(flat.shape[1])
    high = np.ones(flat.shape[1])
    for band in range(flat.shape[1]):
        values = flat[:, band]
        values = values[np.isfinite(values)]
        if values.size:
            low[band], high[band] = np.percentile(values, (low_q, high_q))
    return low, high


def dtype_limits(dtype: np.dtype) -> tuple[float, float]:
    """Fixed stretch limits when percentiles are disabled: the type's full range.

    Floats (and booleans) are assumed to lie in ``[0, 1]``, as reflectances do.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind in "bf":
        return 0.0, 1.0
    raise ValueError(f"unsupported pixel type {dtype}")


def stretch_to_uint8(
    array: np.ndarray, low: np.ndarray | float, high: np.ndarray | float
) -> np.ndarray:
    """Linearly map ``low -> 0`` and ``high -> 255`` per band, clip, round to ``uint8``.

    A band whose limits coincide (a flat band) maps its value to 0 and anything
    above it to 255. NaN becomes 0, the usual rendering of nodata.

    Args:
        array: ``(..., bands)`` pixels of any real type.
        low: Value(s) shown as 0, broadcast over the last axis.
        high: Value(s) shown as 255, broadcast over the last axis.

    Returns:
        ``uint8`` array of the same shape.
    """
    low32 = np.asarray(low, dtype=np.float32)
    span = np.asarray(high, dtype=np.float32) - low32
    span = np.where(span > 0, span, np.float32(1.0))
    scaled = (np.asarray(array, dtype=np.float32) - low32) * (np.float32(255.0) / span)
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled).astype(np.uint8)
