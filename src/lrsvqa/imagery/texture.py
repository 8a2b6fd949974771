"""A cheap, seamless procedural texture for demo, test and benchmark images.

Every pixel is a pure function of its position, so any window can be rendered on
its own and neighbouring windows stitch without seams. That lets
:func:`lrsvqa.imagery.writer.write_pyramidal_tiff` build 27,328 px images tile by
tile. The content mimics an aerial scene at several scales (field parcels, a road
grid, smooth illumination, fine grain) so resampling and compression behave as
they would on real imagery, not on a flat or random image.
"""

from __future__ import annotations

import numpy as np

_PARCEL_H, _PARCEL_W = 173, 229
_ROAD_PERIOD, _ROAD_WIDTH = 1024, 12
_ROAD_GREY = 185
# Crops, forest, bare soil, dry grass, water, built-up: mean RGB of each cover type.
_LAND_COVER = np.array(
    [[96, 140, 60], [40, 80, 45], [150, 115, 80], [185, 170, 110], [50, 80, 120], [130, 128, 125]],
    dtype=np.int16,
)


def _mix(values: np.ndarray, seed: int) -> np.ndarray:
    """Integer hash of ``uint32`` values: neighbouring inputs give unrelated outputs."""
    h = values.astype(np.uint32) ^ np.uint32(seed * 0x9E3779B1 & 0xFFFFFFFF)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h


def render_texture(y0: int, x0: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Render the window ``[y0, y0 + height) x [x0, x0 + width)`` of the texture.

    Args:
        y0: Top row of the window in image pixels.
        x0: Left column of the window in image pixels.
        height: Window height.
        width: Window width.
        seed: Chooses a different (but equally seamless) texture.

    Returns:
        ``(height, width, 3)`` ``uint8`` RGB pixels.
    """
    ys = np.arange(y0, y0 + height, dtype=np.int64)
    xs = np.arange(x0, x0 + width, dtype=np.int64)

    # Parcels: a land-cover colour per block plus a per-block tint, from small tables.
    by, bx = ys // _PARCEL_H, xs // _PARCEL_W
    keys = np.arange(by[0], by[-1] + 1)[:, None] * 40_503 + np.arange(bx[0], bx[-1] + 1)[None, :]
    cover = _LAND_COVER[_mix(keys, seed) % np.uint32(len(_LAND_COVER))]
    tint = (_mix(keys, seed + 1) % np.uint32(31)).astype(np.int16) - 15
    table = cover + tint[:, :, None]
    parcel = np.repeat(np.repeat(table, np.bincount(by - by[0]), 0), np.bincount(bx - bx[0]), 1)

    # Illumination: a smooth separable wave, sin(a + b) = sin a cos b + cos a sin b.
    ay, ax = ys.astype(np.float32) / 397.0, xs.astype(np.float32) / 311.0
    wave = np.sin(ay)[:, None] * np.cos(ax)[None, :] + np.cos(ay)[:, None] * np.sin(ax)[None, :]
    shade = (wave * 24.0).astype(np.int16)

    # Grain: per-pixel hash noise in [0, 16).
    grain = (_mix(ys[:, None] * 92_821 + xs[None, :] * 1_299_709, seed + 7) & np.uint32(15)).astype(
        np.int16
    )

    rgb = parcel + (shade + grain - 8)[:, :, None]
    np.clip(rgb, 0, 255, out=rgb)
    roads = ((ys % _ROAD_PERIOD) < _ROAD_WIDTH)[:, None] | ((xs % _ROAD_PERIOD) < _ROAD_WIDTH)[
        None, :
    ]
    rgb[roads] = _ROAD_GREY
    return rgb.astype(np.uint8)
