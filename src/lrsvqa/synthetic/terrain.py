"""Procedural land cover: water, farmland, city blocks and highways.

The terrain is a set of parameters, not pixels. :meth:`Terrain.render` turns any
rectangle of global pixel coordinates into RGB, and every value it computes is a
function of a pixel's own global coordinates (see :mod:`lrsvqa.synthetic.noise`),
so windows rendered separately tile seamlessly and bit-exactly.

Ground sample distance is fixed (parcels, city blocks and roads have the same pixel
size in every scene); only the large-scale layout is scaled to the scene, so small and
large scenes both contain water, farmland and town.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from lrsvqa.synthetic.noise import FloatArray, UIntArray, ValueNoise, hash1, hash2, unit

Coords = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


class Region(IntEnum):
    """What the ground under a pixel is; the names are the labels' ``background`` values."""

    FIELD = 0
    WATER = 1
    URBAN = 2
    ROAD = 3

    @property
    def label(self) -> str:
        """Lower-case name used in labels and questions."""
        return self.name.lower()


def _table(*colors: tuple[int, int, int]) -> FloatArray:
    """A colour table, channel-major ``(3, n)`` so each channel is one cheap gather."""
    return np.ascontiguousarray(np.asarray(colors, dtype=np.float32).T)


def _color(r: int, g: int, b: int) -> FloatArray:
    """One colour as a float32 ``(3,)`` vector."""
    return np.array([r, g, b], dtype=np.float32)


# Background colours are muted on purpose: object colours are saturated, so an object's
# colour stays unambiguous against any ground.
_CROPS = _table(
    (96, 124, 58), (124, 140, 70), (150, 132, 84), (118, 96, 64),
    (84, 108, 52), (168, 156, 98), (104, 118, 80),
)  # fmt: skip
_ROOFS = _table(
    (150, 150, 150), (118, 118, 124), (172, 166, 154), (108, 100, 96),
    (136, 112, 98), (96, 102, 110), (160, 150, 130),
)  # fmt: skip
_HEDGE = _color(58, 74, 44)
_WATER_DEEP = _color(22, 50, 72)
_WATER_SHALLOW = _color(60, 112, 118)
_CONCRETE = _color(138, 133, 124)
_CANOPY = _color(52, 82, 46)
_STREET = _color(72, 72, 76)
_HIGHWAY = _color(86, 86, 90)
_MARKING = _color(205, 200, 185)

_HEDGE_WIDTH = 3.0
_SHADOW_OFFSET = 5.0
_SHADOW_DARKENING = 0.5
_DASH_PERIOD = 30.0
_LOTS_PER_BLOCK_SIDE = 2


def _pick(h: UIntArray, n: int) -> UIntArray:
    """Map hashes to indices in ``[0, n)`` by multiply-shift (integer modulo is slow)."""
    return ((h & np.uint32(0xFFFF)) * np.uint32(n)) >> np.uint32(16)


def _bits(h: UIntArray, shift: int, width: int) -> FloatArray:
    """``width`` bits of a hash starting at ``shift``, as float32 integers."""
    return ((h >> np.uint32(shift)) & np.uint32((1 << width) - 1)).astype(np.float32)


def _frac(x: FloatArray) -> FloatArray:
    """Fractional part (``np.remainder`` on floats is an order of magnitude slower)."""
    return x - np.floor(x)


def _gather(table: FloatArray, index: UIntArray) -> FloatArray:
    """Planar ``(3, h, w)`` image of colours ``table[:, index]``."""
    out = np.empty((3, *index.shape), dtype=np.float32)
    for c in range(3):
        np.take(table[c], index, out=out[c])
    return out


def _paint(rgb: FloatArray, mask: BoolArray, color: FloatArray) -> None:
    """Set the masked pixels of a planar image to a colour or to another planar image.

    Written as ``rgb * (1 - m) + color * m`` with a 0/1 float mask: exact, and several
    times faster than boolean indexing or ``np.copyto(..., where=)``.
    """
    m = mask.astype(np.float32)
    keep = np.float32(1.0) - m
    for c in range(3):
        rgb[c] *= keep
        rgb[c] += color[c] * m


@dataclass(frozen=True)
class Road:
    """A straight highway across the scene.

    Its pixels are those with ``|x * nx + y * ny - offset| < half_width``; ``(nx, ny)``
    is the unit normal, so the road runs along ``(-ny, nx)``.
    """

    nx: float
    ny: float
    offset: float
    half_width: float

    @property
    def angle(self) -> float:
        """Direction of travel in radians (image axes: x right, y down)."""
        return math.atan2(self.nx, -self.ny)

    def signed_distance(self, ys: Coords, xs: Coords) -> FloatArray:
        """Signed distance of each grid pixel from the centre line."""
        col = (xs * self.nx - self.offset).astype(np.float32)
        row = (ys * self.ny).astype(np.float32)
        return row[:, None] + col[None, :]

    def along(self, ys: Coords, xs: Coords) -> FloatArray:
        """Coordinate of each grid pixel along the road (for lane markings)."""
        col = (xs * -self.ny).astype(np.float32)
        row = (ys * self.nx).astype(np.float32)
        return row[:, None] + col[None, :]

    def may_touch(self, y0: float, x0: float, y1: float, x1: float) -> bool:
        """Whether the road can cover any pixel of the box (exact test on its corners)."""
        corners = [x * self.nx + y * self.ny - self.offset for y in (y0, y1) for x in (x0, x1)]
        return min(corners) < self.half_width and max(corners) > -self.half_width


@dataclass(frozen=True)
class _Cover:
    """Land cover of one window before highways are drawn."""

    water: BoolArray
    depth: FloatArray | None  # 0 at the shore .. 1 in deep water; None: uniform
    urban: BoolArray
    street: BoolArray  # urban street pixels

    def codes(self) -> NDArray[np.uint8]:
        """:class:`Region` codes without roads."""
        codes = np.full(self.water.shape, Region.FIELD, dtype=np.uint8)
        codes[self.water] = Region.WATER
        codes[self.urban] = Region.URBAN
        return codes


@dataclass(frozen=True)
class Terrain:
    """Parameters of a scene's ground; see the module docstring.

    Attributes:
        height: Scene height in pixels.
        width: Scene width in pixels.
        seed: Seed of all hashed texture detail.
        water: Noise field; water where it is below ``water_level``.
        water_level: Threshold of ``water``.
        shore: Field range over which water shades from shallow to deep.
        urban: Noise field sampled at city-block centres; built-up where above ``urban_level``.
        urban_level: Threshold of ``urban``.
        block: City block size ``(height, width)`` in pixels, streets included.
        block_origin: Offset ``(y, x)`` of the street grid.
        street: Street width in pixels.
        parcel: Mean side of a farmland parcel in pixels.
        tone: Low-frequency brightness variation of farmland.
        ripple: Brightness variation of water.
        canopy: Texture of park trees.
        roads: Highways, drawn over everything else.
    """

    height: int
    width: int
    seed: int
    water: ValueNoise
    water_level: float
    shore: float
    urban: ValueNoise
    urban_level: float
    block: tuple[int, int]
    block_origin: tuple[int, int]
    street: int
    parcel: float
    tone: ValueNoise
    ripple: ValueNoise
    canopy: ValueNoise
    roads: tuple[Road, ...]

    # -- land cover -------------------------------------------------------------------

    def _blocks(self, coords: Coords, axis: int) -> tuple[NDArray[np.int64], Coords]:
        """City-block index and position inside the block (street centred on its edge)."""
        size = self.block[axis]
        shifted = coords + (self.block_origin[axis] + self.street / 2)
        index = np.floor(shifted / size)
        return index.astype(np.int64), shifted - index * size

    def _urban_blocks(self, by: NDArray[np.int64], bx: NDArray[np.int64]) -> BoolArray:
        """Whether each city block of the grid ``by`` x ``bx`` is built up.

        Deciding per block (at its centre) gives towns the crisp, rectilinear edges
        real ones have, at the cost of one noise sample per block instead of per pixel.
        """
        (bh, bw), (oy, ox) = self.block, self.block_origin
        rows = np.arange(by.min(), by.max() + 1)
        cols = np.arange(bx.min(), bx.max() + 1)
        centre_y = (rows + 0.5) * bh - oy - self.street / 2
        centre_x = (cols + 0.5) * bw - ox - self.street / 2
        built = self.urban.sample(centre_y, centre_x) > self.urban_level
        return np.take(built[by - rows[0]], bx - cols[0], axis=1)

    def _water(self, ys: Coords, xs: Coords) -> tuple[BoolArray, FloatArray | None]:
        """Water mask and depth, skipping per-pixel noise when the window is all one side."""
        shape = (len(ys), len(xs))
        lo, hi = self.water.bounds(ys[0], xs[0], ys[-1], xs[-1])
        if lo >= self.water_level:
            return np.zeros(shape, dtype=bool), None
        if hi < self.water_level - self.shore:
            return np.ones(shape, dtype=bool), None
        value = self.water.sample(ys, xs)
        depth = (np.float32(self.water_level) - value) * np.float32(1.0 / self.shore)
        return value < np.float32(self.water_level), np.clip(depth, 0, 1)

    def _cover(self, ys: Coords, xs: Coords) -> _Cover:
        """Water, built-up area and streets of a window."""
        water, depth = self._water(ys, xs)
        by, ly = self._blocks(ys, 0)
        bx, lx = self._blocks(xs, 1)
        urban = self._urban_blocks(by, bx) & ~water
        half = self.street / 2
        street_y = (ly < half) | (ly >= self.block[0] - half)
        street_x = (lx < half) | (lx >= self.block[1] - half)
        street = urban & (street_y[:, None] | street_x[None, :])
        return _Cover(water=water, depth=depth, urban=urban, street=street)

    def _highways(self, ys: Coords, xs: Coords) -> list[tuple[Road, FloatArray]]:
        """Highways crossing the window, each with its absolute distance field."""
        box = (ys[0], xs[0], ys[-1], xs[-1])
        return [(r, np.abs(r.signed_distance(ys, xs))) for r in self.roads if r.may_touch(*box)]

    def cover(self, ys: Coords, xs: Coords) -> NDArray[np.uint8]:
        """Land-cover :class:`Region` codes of the grid ``ys`` x ``xs``, roads ignored.

        This is the layout that decides whether a place is urban or rural. Like every
        method taking coordinates, it accepts any sorted 1-D global coordinates, dense
        or sparse, and gives each pixel the same value either way.
        """
        return self._cover(ys, xs).codes()

    def regions(self, ys: Coords, xs: Coords) -> NDArray[np.uint8]:
        """:class:`Region` codes of a grid as seen from above: roads and streets included."""
        cover = self._cover(ys, xs)
        codes = cover.codes()
        codes[cover.street] = Region.ROAD
        for road, away in self._highways(ys, xs):
            codes[away < road.half_width] = Region.ROAD
        return codes

    # -- textures (planar float32 ``(3, h, w)``) ---------------------------------------

    def _parcel_edges(self, k: NDArray[np.int64]) -> Coords:
        """Left edge of farmland column band ``k``: a jittered regular grid."""
        jitter = (unit(hash1(k, self.seed + 1)).astype(np.float64) - 0.5) * (0.5 * self.parcel)
        return k * self.parcel + jitter

    def _field(self, ys: Coords, xs: Coords) -> FloatArray:
        """Farmland: staggered parcels of crops with row stripes and hedges between them."""
        k = np.floor(xs / self.parcel).astype(np.int64)
        k = k - (xs < self._parcel_edges(k)) + (xs >= self._parcel_edges(k + 1))
        lx = (xs - self._parcel_edges(k)).astype(np.float32)[None, :]
        band = unit(hash1(k, self.seed + 2))
        row_height = (np.float32(self.parcel) * (np.float32(0.55) + np.float32(0.9) * band))[None]
        shift = unit(hash1(k, self.seed + 3))[None, :] * row_height
        yy = ys.astype(np.float32)[:, None] + shift
        j = np.floor(yy / row_height)
        ly = yy - j * row_height
        h = hash2(k[None, :], j.astype(np.int64), self.seed + 4)
        rgb = _gather(_CROPS, _pick(h, _CROPS.shape[1]))
        # Crop rows: a triangle wave across or along the parcel, 5-12 px period.
        along = _bits(h, 16, 1)
        across = lx + (ly - lx) * along
        tri = np.abs(_frac(across / (_bits(h, 17, 3) + np.float32(5.0))) - np.float32(0.5))
        factor = _bits(h, 20, 8) * np.float32(0.3 / 255) + np.float32(0.8)
        factor += np.float32(0.32) * tri
        factor *= np.float32(1.0) + self.tone.sample(ys, xs)
        rgb *= factor[None]
        _paint(rgb, (lx < _HEDGE_WIDTH) | (ly < _HEDGE_WIDTH), _HEDGE)
        return rgb

    def _water_texture(self, ys: Coords, xs: Coords, depth: FloatArray | None) -> FloatArray:
        """Open water, shallow and lighter near the shore, with a faint ripple."""
        shade = np.float32(1.0) + self.ripple.sample(ys, xs)
        if depth is None:
            return _WATER_DEEP[:, None, None] * shade[None]
        steps = _WATER_DEEP - _WATER_SHALLOW
        return np.stack([(_WATER_SHALLOW[c] + steps[c] * depth) * shade for c in range(3)])

    def _town(self, ys: Coords, xs: Coords, street: BoolArray) -> FloatArray:
        """City blocks: 2 x 2 lots per block, each with a roofed building and its shadow.

        One block in ten is a wooded park and one a paved plaza.
        """
        n = _LOTS_PER_BLOCK_SIDE
        by, ly = self._blocks(ys, 0)
        bx, lx = self._blocks(xs, 1)
        lot_h = (self.block[0] - self.street) / n
        lot_w = (self.block[1] - self.street) / n
        qy, qx = ly - self.street / 2, lx - self.street / 2
        sub_y = np.clip(np.floor(qy / lot_h), 0, n - 1).astype(np.int64)
        sub_x = np.clip(np.floor(qx / lot_w), 0, n - 1).astype(np.int64)
        in_y = (qy - sub_y * lot_h).astype(np.float32)[:, None]
        in_x = (qx - sub_x * lot_w).astype(np.float32)[None, :]
        kind = _pick(hash2(bx[None, :], by[:, None], self.seed + 5), 10)
        lot = hash2((bx * n + sub_x)[None, :], (by * n + sub_y)[:, None], self.seed + 6)
        top, left = _bits(lot, 0, 5) + 3, _bits(lot, 5, 5) + 3
        bottom = np.float32(lot_h - 3) - _bits(lot, 10, 5)
        right = np.float32(lot_w - 3) - _bits(lot, 15, 5)

        def footprint(offset: float) -> BoolArray:
            y, x = in_y - np.float32(offset), in_x - np.float32(offset)
            return (y >= top) & (y < bottom) & (x >= left) & (x < right)

        built = kind >= 2
        building = footprint(0) & built
        shadow = footprint(_SHADOW_OFFSET) & built & ~building
        rgb = _gather(_ROOFS, _pick(lot >> np.uint32(16), _ROOFS.shape[1]))
        rgb *= (_bits(lot, 26, 6) * np.float32(0.25 / 63) + np.float32(0.85))[None]
        _paint(rgb, ~building, _CONCRETE)
        _paint(rgb, shadow, _CONCRETE * np.float32(1.0 - _SHADOW_DARKENING))
        park = kind == 0
        if park.any():
            trees = _CANOPY[:, None, None] * (np.float32(1.0) + self.canopy.sample(ys, xs))[None]
            _paint(rgb, park, trees)
        _paint(rgb, street, _STREET)
        return rgb

    def render(self, ys: Coords, xs: Coords) -> NDArray[np.uint8]:
        """RGB ground ``(h, w, 3)`` of a contiguous window of global coordinates ``ys`` x ``xs``.

        Textures are only computed for the land-cover classes present in the window,
        which is what makes rendering fast: most windows hold one class.
        """
        cover = self._cover(ys, xs)
        field = ~(cover.water | cover.urban)
        layers = (
            (field, lambda: self._field(ys, xs)),
            (cover.water, lambda: self._water_texture(ys, xs, cover.depth)),
            (cover.urban, lambda: self._town(ys, xs, cover.street)),
        )
        rgb = np.zeros((3, len(ys), len(xs)), dtype=np.float32)
        for mask, texture in layers:
            if mask.all():
                rgb = texture()
            elif mask.any():
                _paint(rgb, mask, texture())
        for road, away in self._highways(ys, xs):
            on = away < road.half_width
            if not on.any():
                continue
            _paint(rgb, on, _HIGHWAY)
            dash = _frac(road.along(ys, xs) * np.float32(1.0 / _DASH_PERIOD)) < np.float32(0.5)
            edge = on & (away >= road.half_width - 1.5)
            _paint(rgb, ((away < 1.0) & dash) | edge, _MARKING)
        out = np.empty((len(ys), len(xs), 3), dtype=np.uint8)
        for c in range(3):
            out[..., c] = np.clip(rgb[c] + np.float32(0.5), 0, 255)
        return out


def make_terrain(rng: np.random.Generator, height: int, width: int) -> Terrain:
    """Draw a terrain for a ``height`` x ``width`` scene.

    Water and built-up thresholds are set from quantiles of the fields sampled over
    the scene, so every scene has some water (ships need it) and some town (urban
    questions need it), in proportions that vary from scene to scene.
    """
    seed = int(rng.integers(1 << 31))
    side = max(height, width)
    big = side / rng.uniform(2.0, 3.5)
    water = ValueNoise(seed + 10, (big, big / 2.3, 380.0, 97.0, 23.0), (1.0, 0.5, 0.16, 0.05, 0.02))
    urban = ValueNoise(seed + 20, (big * 0.8, big / 2.7, 700.0), (1.0, 0.5, 0.3))
    step = side / 192
    gy, gx = np.arange(step / 2, height, step), np.arange(step / 2, width, step)
    water_values = water.sample(gy, gx)
    water_level = float(np.quantile(water_values, rng.uniform(0.08, 0.3)))
    land = water_values >= water_level
    urban_level = float(np.quantile(urban.sample(gy, gx)[land], 1 - rng.uniform(0.15, 0.4)))
    roads = []
    for _ in range(int(rng.integers(1, 4))):
        phi = rng.uniform(0, np.pi)
        nx, ny = float(np.cos(phi)), float(np.sin(phi))
        py, px = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        roads.append(Road(nx, ny, px * nx + py * ny, float(rng.uniform(9.0, 13.0))))
    block = (int(rng.integers(180, 300)), int(rng.integers(180, 300)))
    return Terrain(
        height=height,
        width=width,
        seed=seed,
        water=water,
        water_level=water_level,
        shore=0.05,
        urban=urban,
        urban_level=urban_level,
        block=block,
        block_origin=(int(rng.integers(block[0])), int(rng.integers(block[1]))),
        street=int(rng.integers(10, 15)),
        parcel=float(rng.uniform(260.0, 480.0)),
        tone=ValueNoise(seed + 30, (300.0, 60.0), (0.06, 0.03)),
        ripple=ValueNoise(seed + 40, (60.0, 14.0), (0.06, 0.03)),
        canopy=ValueNoise(seed + 50, (7.0, 3.0), (0.2, 0.1)),
        roads=tuple(roads),
    )
