"""Objects of synthetic scenes: categories with distinct shapes, a palette, rasterisation.

Objects are 24-64 px long at full resolution. That is chosen against the DIP
(:mod:`lrsvqa.imagery.pyramid`): in the 336 px thumbnail of a 16k image an object is
a fraction of a pixel, at the coarsest ~1,008 px level it is a 2-4 px blob, and only a
full-resolution tile shows its shape and colour, so questions about them need the
coarse-to-fine search the method is about.

Each object stands on a *site*: a lightened disc of ground around it, 1/96 of the
scene's long side in radius (at least 64 px), like the apron of a parked plane or the
cleared yard of a tank. A site is a 10-20 px bright blob at the coarsest DIP level and
a few pixels in the thumbnail, so it says *where* objects are but not what or which
colour they are: the context a coarse level offers in real imagery, and what the RFM
needs to find where to zoom (an object of 2-4 px alone gives its attention nothing).

Each object is drawn from its parameters as a signed-distance test on global pixel
coordinates, so it renders identically in any window that contains it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lrsvqa.labels import LabeledObject
from lrsvqa.synthetic.noise import FloatArray

# Saturated, mutually distant colours; the ground palette is muted so these stand out.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 60),
    "blue": (30, 80, 235),
    "yellow": (245, 220, 30),
    "white": (245, 245, 245),
    "black": (18, 18, 18),
    "orange": (250, 140, 20),
    "purple": (150, 50, 200),
}
OUTLINE_WIDTH = 2.0
SITE_LIGHTEN = 0.6  # a site moves the ground this share of the way to white
SITE_MIN_RADIUS = 64.0
SITE_RADIUS_SHARE = 1 / 96  # of the scene's long side
_DARK_OUTLINE = (25, 25, 25)
_LIGHT_OUTLINE = (215, 215, 215)

ShapeField = Callable[[FloatArray, FloatArray, float], FloatArray]


def _box(u: FloatArray, v: FloatArray, half_u: float, half_v: float) -> FloatArray:
    """Distance-like field of an axis-aligned box in object coordinates (< 0 inside)."""
    return np.maximum(np.abs(u) - np.float32(half_u), np.abs(v) - np.float32(half_v))


def _hull(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Ship hull: blunt stern, pointed bow at ``+u``, beam 0.3 of the length."""
    t = np.clip(u * np.float32(2.0 / length), -1, 1)
    t2 = t * t
    blunt = np.sqrt(np.float32(1.0) - t2 * t2 * t2)
    pointed = np.float32(1.0) - t2
    half_beam = np.float32(0.15 * length) * np.where(t > 0, pointed, blunt)
    return np.maximum(np.abs(u) - np.float32(length / 2), np.abs(v) - half_beam)


def _cross(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Aeroplane: fuselage, swept-free wings and a tailplane."""
    fuselage = _box(u, v, length / 2, 0.07 * length)
    wings = _box(u - np.float32(0.06 * length), v, 0.09 * length, 0.46 * length)
    tail = _box(u + np.float32(0.4 * length), v, 0.05 * length, 0.18 * length)
    return np.minimum(np.minimum(fuselage, wings), tail)


def _rectangle(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Vehicle: a rectangle 0.44 of its length wide."""
    return _box(u, v, length / 2, 0.22 * length)


def _circle(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Storage tank: a disc whose diameter is the length."""
    return np.sqrt(u * u + v * v) - np.float32(length / 2)


def _triangle(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Delta-wing plane: an isosceles triangle pointing to ``+u``, as wide as it is long."""
    half = np.float32(length / 2)
    # Edges from the nose (half, 0) to the rear corners (-half, +-half).
    slanted = (np.abs(v) * np.float32(2) + u - half) / np.float32(np.sqrt(5.0))
    return np.maximum(slanted, -u - half)


def _barge(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Barge: a slim rectangle, beam 0.3 of the length."""
    return _box(u, v, length / 2, 0.15 * length)


def _square(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """A square whose side is the length."""
    return _box(u, v, length / 2, length / 2)


def _hexagon(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Hexagonal tank roof, corner to corner along ``u`` equal to the length."""
    apothem = np.float32(length * math.sqrt(3) / 4)
    au, av = np.abs(u), np.abs(v)
    return np.maximum(av, au * np.float32(math.sqrt(3) / 2) + av * np.float32(0.5)) - apothem


def _l_shape(u: FloatArray, v: FloatArray, length: float) -> FloatArray:
    """Building: a square with one quadrant cut away."""
    quarter = length / 4
    square = _box(u, v, length / 2, length / 2)
    notch = _box(u - np.float32(quarter), v - np.float32(quarter), quarter, quarter)
    return np.maximum(square, -notch)


@dataclass(frozen=True)
class Shape:
    """One outline an object may have.

    Attributes:
        name: Shape name given in labels and answers, e.g. ``"circle"``.
        half_width: Half extent across the long axis, as a fraction of the length.
        sdf: Distance-like field of the shape in object coordinates, < 0 inside.
    """

    name: str
    half_width: float
    sdf: ShapeField


@dataclass(frozen=True)
class Category:
    """An object class and how it looks.

    Attributes:
        name: Label name, e.g. ``"storage-tank"``.
        shapes: Outlines it comes in; the first is the one placed outside facilities.
        lengths: Range of the long side in full-resolution pixels.
        habitat: ``"water"`` (only on water) or ``"land"`` (anywhere but water).
    """

    name: str
    shapes: tuple[Shape, ...]
    lengths: tuple[float, float]
    habitat: str

    def shape(self, name: str) -> Shape:
        """The shape called ``name``."""
        return next(s for s in self.shapes if s.name == name)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category(
            "ship",
            (Shape("pointed", 0.15, _hull), Shape("barge", 0.15, _barge)),
            (40.0, 64.0),
            "water",
        ),
        Category(
            "plane",
            (Shape("cross", 0.46, _cross), Shape("triangle", 0.5, _triangle)),
            (40.0, 64.0),
            "land",
        ),
        Category(
            "vehicle",
            (Shape("rectangle", 0.22, _rectangle), Shape("square", 0.5, _square)),
            (24.0, 32.0),
            "land",
        ),
        Category(
            "storage-tank",
            (Shape("circle", 0.5, _circle), Shape("hexagon", 0.44, _hexagon)),
            (26.0, 44.0),
            "land",
        ),
        Category(
            "building",
            (Shape("L-shape", 0.5, _l_shape), Shape("square", 0.5, _square)),
            (28.0, 44.0),
            "land",
        ),
    )
}


@dataclass(frozen=True)
class SceneObject:
    """One object's geometry and look, in full-resolution pixel coordinates.

    Attributes:
        category: Key into :data:`CATEGORIES`.
        color: Key into :data:`COLORS`.
        cx: Centre column.
        cy: Centre row.
        length: Long side in pixels.
        angle: Direction of the long axis in radians (x right, y down).
        site_radius: Radius of the lightened site around the object; 0 for none
            (objects in a facility, whose setting is the facility).
        shape: Name of one of the category's :class:`Shape` s.
    """

    category: str
    color: str
    cx: float
    cy: float
    length: float
    angle: float
    site_radius: float
    shape: str

    @property
    def kind(self) -> Category:
        """The object's :class:`Category`."""
        return CATEGORIES[self.category]

    @property
    def outline(self) -> Shape:
        """The object's :class:`Shape`."""
        return self.kind.shape(self.shape)

    def _half_extents(self) -> tuple[float, float]:
        """Half sizes along and across the long axis."""
        return self.length / 2, self.outline.half_width * self.length

    def bounds(self, pad: float = 0.0) -> tuple[int, int, int, int]:
        """Integer box ``(x0, y0, x1, y1)``, half-open, holding every pixel within ``pad``."""
        a, b = self._half_extents()
        c, s = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        rx, ry = a * c + b * s + pad + 1, a * s + b * c + pad + 1
        return (
            math.floor(self.cx - rx),
            math.floor(self.cy - ry),
            math.ceil(self.cx + rx) + 1,
            math.ceil(self.cy + ry) + 1,
        )

    def signed_distance(self, ys: NDArray[np.float64], xs: NDArray[np.float64]) -> FloatArray:
        """Distance-like field of the shape on the grid ``ys`` x ``xs`` (< 0 inside)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx = (xs - self.cx).astype(np.float32)
        dy = (ys - self.cy).astype(np.float32)
        u = dy[:, None] * np.float32(s) + dx[None, :] * np.float32(c)
        v = dy[:, None] * np.float32(c) - dx[None, :] * np.float32(s)
        return self.outline.sdf(u, v, self.length)

    def footprint(self, pad: float = 0.0) -> tuple[int, int, NDArray[np.bool_]]:
        """Pixels within ``pad`` of the shape: ``(x0, y0, mask)`` over :meth:`bounds`."""
        x0, y0, x1, y1 = self.bounds(pad)
        sd = self.signed_distance(
            np.arange(y0, y1, dtype=np.float64), np.arange(x0, x1, dtype=np.float64)
        )
        return x0, y0, sd < np.float32(pad)

    def draw(self, out: NDArray[np.uint8], y0: int, x0: int) -> None:
        """Paint the object, with its outline, into the RGB window ``out`` at ``(y0, x0)``."""
        bx0, by0, bx1, by1 = self.bounds(OUTLINE_WIDTH)
        h, w = out.shape[:2]
        bx0, by0 = max(bx0, x0), max(by0, y0)
        bx1, by1 = min(bx1, x0 + w), min(by1, y0 + h)
        if bx1 <= bx0 or by1 <= by0:
            return
        ys = np.arange(by0, by1, dtype=np.float64)
        xs = np.arange(bx0, bx1, dtype=np.float64)
        sd = self.signed_distance(ys, xs)
        patch = out[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
        patch[sd < np.float32(OUTLINE_WIDTH)] = self.outline_color
        patch[sd < 0] = COLORS[self.color]

    def paint_site(self, out: NDArray[np.uint8], image_box: tuple[float, ...]) -> None:
        """Lighten the site in a window that shows ``image_box`` resampled to ``out``'s size.

        Coverage is the disc's with a one-output-pixel soft edge, so the same call
        serves full-resolution windows and pyramid tiles or thumbnails alike.
        """
        r = self.site_radius
        if r <= 0:
            return
        h, w = out.shape[:2]
        x0, y0, x1, y1 = image_box
        sx, sy = w / (x1 - x0), h / (y1 - y0)
        c0, c1 = (
            max(0, math.floor((self.cx - r - x0) * sx) - 1),
            min(w, math.ceil((self.cx + r - x0) * sx) + 1),
        )
        r0, r1 = (
            max(0, math.floor((self.cy - r - y0) * sy) - 1),
            min(h, math.ceil((self.cy + r - y0) * sy) + 1),
        )
        if c1 <= c0 or r1 <= r0:
            return
        # Image-pixel distances from each output pixel's centre, in global coordinates
        # and float64, so a pixel's value does not depend on the window it is in.
        dx = x0 + (np.arange(c0, c1) + 0.5) / sx - self.cx
        dy = y0 + (np.arange(r0, r1) + 0.5) / sy - self.cy
        distance = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
        coverage = np.clip((r - distance) * min(sx, sy) + 0.5, 0, 1).astype(np.float32)
        region = out[r0:r1, c0:c1].astype(np.float32)
        lift = (np.float32(SITE_LIGHTEN) * coverage)[..., None] * (np.float32(255) - region)
        out[r0:r1, c0:c1] = np.clip(np.rint(region + lift), 0, 255).astype(np.uint8)

    @property
    def outline_color(self) -> tuple[int, int, int]:
        """Outline that contrasts with the body: light around black, dark otherwise."""
        return _LIGHT_OUTLINE if self.color == "black" else _DARK_OUTLINE

    def rbox(self) -> tuple[tuple[float, float], ...]:
        """Corners of the rotated box around the shape, clockwise from the rear left."""
        a, b = self._half_extents()
        c, s = math.cos(self.angle), math.sin(self.angle)
        corners = ((-a, -b), (a, -b), (a, b), (-a, b))
        return tuple(
            (round(self.cx + u * c - v * s, 2), round(self.cy + u * s + v * c, 2))
            for u, v in corners
        )

    def hbox(self) -> tuple[float, float, float, float]:
        """Tight horizontal box ``(x0, y0, x1, y1)`` of the drawn body (outline excluded)."""
        x0, y0, mask = self.footprint()
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        return (
            float(x0 + cols[0]),
            float(y0 + rows[0]),
            float(x0 + cols[-1] + 1),
            float(y0 + rows[-1] + 1),
        )

    def label(
        self,
        background: str,
        setting: str | None,
        facility: int | None = None,
        facility_name: str | None = None,
    ) -> LabeledObject:
        """The object as a :class:`LabeledObject` with its surroundings as attributes.

        ``setting`` (rural/urban) is left out where the neighbourhood is mixed;
        ``facility`` is the index of the facility holding the object, if any.
        """
        attributes: dict[str, object] = {
            "background": background,
            "length_px": round(self.length, 1),
        }
        if setting is not None:
            attributes["setting"] = setting
        if facility is not None:
            attributes["facility"] = facility_name
            attributes["facility_index"] = facility
        return LabeledObject(
            category=self.category,
            hbox=self.hbox(),
            rbox=self.rbox(),
            color=self.color,
            shape=self.shape,
            attributes=attributes,
        )


def paint_resampled(
    out: NDArray[np.uint8],
    image_box: tuple[float, float, float, float],
    shapes: Sequence[SceneObject],
) -> None:
    """Paint objects into a window that shows ``image_box`` resampled to ``out``'s size.

    ``out`` is, for instance, a pyramid tile or thumbnail of a scene rendered without
    these objects. Their sites are lightened first; each object is then drawn at full
    resolution, box-filtered to the window's scale and alpha-blended, so it looks as if
    it had been in the image when the pyramid was made; at scale 1 with whole-pixel
    offsets this is :meth:`draw`.

    Args:
        out: ``(h, w, 3)`` uint8 RGB window, painted in place.
        image_box: ``(x0, y0, x1, y1)`` full-resolution box that ``out`` shows.
        shapes: Objects to paint; those outside the box are skipped.
    """
    from PIL import Image

    h, w = out.shape[:2]
    x0, y0, x1, y1 = image_box
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    for shape in shapes:  # sites first: a site never covers another object's body
        shape.paint_site(out, image_box)
    for shape in shapes:
        bx0, by0, bx1, by1 = shape.bounds(OUTLINE_WIDTH)
        c0, c1 = max(0, math.floor((bx0 - x0) * sx)), min(w, math.ceil((bx1 - x0) * sx))
        r0, r1 = max(0, math.floor((by0 - y0) * sy)), min(h, math.ceil((by1 - y0) * sy))
        if c1 <= c0 or r1 <= r0:
            continue
        fx0, fx1 = x0 + c0 / sx, x0 + c1 / sx
        fy0, fy1 = y0 + r0 / sy, y0 + r1 / sy
        ix0, iy0 = math.floor(fx0), math.floor(fy0)
        ix1, iy1 = math.ceil(fx1), math.ceil(fy1)
        sd = shape.signed_distance(
            np.arange(iy0, iy1, dtype=np.float64), np.arange(ix0, ix1, dtype=np.float64)
        )
        alpha = (sd < np.float32(OUTLINE_WIDTH)).astype(np.float32)
        body = sd < 0
        layers = [alpha]
        for channel in range(3):
            colour = np.where(body, COLORS[shape.color][channel], shape.outline_color[channel])
            layers.append(alpha * colour.astype(np.float32))
        box = (fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0)
        a, *premultiplied = (
            np.asarray(
                Image.fromarray(layer, mode="F").resize(
                    (c1 - c0, r1 - r0), Image.Resampling.BOX, box=box
                )
            )
            for layer in layers
        )
        region = out[r0:r1, c0:c1].astype(np.float32)
        blended = region * (1 - a[..., None]) + np.stack(premultiplied, axis=-1)
        out[r0:r1, c0:c1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
