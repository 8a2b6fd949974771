"""Hashed-lattice value noise: pure functions of global pixel coordinates.

A scene is rendered window by window, and a pixel must come out identical however
the image is cut. Everything here is therefore computed element-wise from global
coordinates with integer arithmetic and correctly rounded float operations only
(``+ - * /``, ``floor``, ``sqrt``). Transcendental ufuncs are avoided on purpose:
their SIMD and scalar code paths may round differently, which would make a pixel
depend on its position inside the array being rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float32]
UIntArray = NDArray[np.uint32]

_MUL_A = np.uint32(0x85EBCA6B)
_MUL_B = np.uint32(0xC2B2AE35)
_INV_2_24 = np.float32(1.0 / (1 << 24))
# Bilinear interpolation is a convex combination, so an octave never leaves the range of
# its lattice values except by float rounding; this margin covers that rounding.
_BOUND_EPS = 1e-4


def _mix(h: UIntArray) -> UIntArray:
    """Avalanche a uint32 array so that nearby inputs give unrelated outputs."""
    h = h ^ (h >> np.uint32(16))
    h = h * _MUL_A
    h = h ^ (h >> np.uint32(13))
    h = h * _MUL_B
    return h ^ (h >> np.uint32(16))


def _as_u32(values: ArrayLike) -> UIntArray:
    """Integers as uint32, wrapping negatives, so any lattice index can be hashed."""
    return np.atleast_1d(np.asarray(values, dtype=np.int64)).astype(np.uint32)


def hash2(ix: ArrayLike, iy: ArrayLike, seed: int) -> UIntArray:
    """Hash integer coordinates (broadcast against each other) with a seed to uint32.

    The ``iy`` part is mixed first, so with ``iy`` a column and ``ix`` a row only the
    final mix runs over the full 2-D shape.
    """
    with np.errstate(over="ignore"):
        base = _mix(_as_u32(seed & 0xFFFFFFFF))
        return _mix(_mix(base ^ _as_u32(iy)) ^ _as_u32(ix))


def hash1(ix: ArrayLike, seed: int) -> UIntArray:
    """Hash a 1-D integer sequence with a seed to uint32."""
    return hash2(ix, 0, seed)


def unit(h: UIntArray) -> FloatArray:
    """Map uint32 hashes to floats uniform in ``[0, 1)`` (24 significant bits)."""
    return (h >> np.uint32(8)).astype(np.float32) * _INV_2_24


def _smooth(t: NDArray[np.float64]) -> FloatArray:
    """Smoothstep weights, so octaves have no visible creases at lattice lines."""
    t32 = t.astype(np.float32)
    return t32 * t32 * (np.float32(3.0) - np.float32(2.0) * t32)


@dataclass(frozen=True)
class ValueNoise:
    """A sum of value-noise octaves, each a smoothly interpolated lattice of hashed values.

    Attributes:
        seed: Hash seed; octave ``i`` uses ``seed + i``.
        cells: Lattice spacing of each octave in pixels (large = low frequency).
        amplitudes: Weight of each octave; lattice values are uniform in ``[-a, a)``.
    """

    seed: int
    cells: tuple[float, ...]
    amplitudes: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.cells) != len(self.amplitudes) or not self.cells:
            raise ValueError("cells and amplitudes must be non-empty and of equal length")
        if min(self.cells) <= 0:
            raise ValueError(f"lattice cells must be positive, got {self.cells}")

    def _lattice(self, octave: int, iy: NDArray[np.int64], ix: NDArray[np.int64]) -> FloatArray:
        """Lattice values of one octave on the index ranges spanned by ``iy`` and ``ix``."""
        rows = np.arange(iy.min(), iy.max() + 2)
        cols = np.arange(ix.min(), ix.max() + 2)
        u = unit(hash2(cols[None, :], rows[:, None], self.seed + octave))
        amp = np.float32(self.amplitudes[octave])
        return (u * np.float32(2.0) - np.float32(1.0)) * amp

    def sample(self, ys: ArrayLike, xs: ArrayLike) -> FloatArray:
        """Noise on the grid of global coordinates ``ys`` x ``xs``.

        Args:
            ys: Sorted 1-D row coordinates (global pixels; need not be contiguous).
            xs: Sorted 1-D column coordinates.

        Returns:
            A ``(len(ys), len(xs))`` float32 array; a pixel's value depends only on
            its own coordinates.
        """
        ys = np.asarray(ys, dtype=np.float64)
        xs = np.asarray(xs, dtype=np.float64)
        total: FloatArray | None = None
        for octave, cell in enumerate(self.cells):
            fy, fx = ys / cell, xs / cell
            iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
            lat = self._lattice(octave, iy, ix)
            ry, rx = iy - iy.min(), ix - ix.min()
            ty, tx = _smooth(fy - iy), _smooth(fx - ix)
            # Interpolate along x on the small lattice first, then gather whole rows:
            # row gathers are contiguous copies, column gathers are an order slower.
            left = lat[:, rx]
            cols = left + (lat[:, rx + 1] - left) * tx[None, :]
            steps = cols[1:] - cols[:-1]
            value = np.take(cols, ry, axis=0)
            value += np.take(steps, ry, axis=0) * ty[:, None]
            if total is None:
                total = value
            else:
                total += value
        assert total is not None
        return total

    def bounds(self, y0: float, x0: float, y1: float, x1: float) -> tuple[float, float]:
        """Lower and upper bounds of the noise over the closed box ``[y0, y1] x [x0, x1]``.

        Cheap (touches only lattice values), so a renderer can skip evaluating the
        noise per pixel when a whole window is known to lie on one side of a threshold.
        """
        lo = hi = 0.0
        for octave, cell in enumerate(self.cells):
            iy = np.floor(np.array([y0, y1]) / cell).astype(np.int64)
            ix = np.floor(np.array([x0, x1]) / cell).astype(np.int64)
            lat = self._lattice(octave, iy, ix)
            lo += float(lat.min())
            hi += float(lat.max())
        return lo - _BOUND_EPS, hi + _BOUND_EPS
