"""Facilities: the settings each object category lives in, visible at coarse scale.

In real remote-sensing images what a question names can be found at coarse scale
through its context: ships lie in harbours, planes on airfields, cars in parking
lots, tanks in tank farms. A facility here is such a context: an axis-aligned
rectangle at least 1/32 of the scene's long side (>= 10 px in the 336 px thumbnail
of a 32k scene), with a ground colour and a texture of its own kind (quay rim,
runway, painted rows, bund walls, compound wall), so the kind can be told apart at
the coarsest DIP level while the 24-64 px objects inside stay unreadable there.

Pixels are a function of global coordinates only, so a facility renders
identically in any window that contains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FACILITY_SHARE = 1 / 32  # facility long side as a share of the scene's long side
FACILITY_MIN_SIDE = 320.0  # ... but never smaller than this many pixels


@dataclass(frozen=True)
class FacilityKind:
    """What a facility of one kind holds and how it looks.

    Attributes:
        name: Name used in labels and questions, e.g. ``"parking lot"``.
        category: Object category it holds (key of ``objects.CATEGORIES``).
        ground: Surface colour of the interior.
        detail: Colour of the texture lines (rim, rows, walls, runway).
        background: The label's ``background`` value for objects inside.
        aspect: Range of long side over short side.
    """

    name: str
    category: str
    ground: tuple[int, int, int]
    detail: tuple[int, int, int]
    background: str
    aspect: tuple[float, float]


FACILITY_KINDS: dict[str, FacilityKind] = {
    k.category: k
    for k in (
        FacilityKind("harbour", "ship", (28, 62, 118), (205, 200, 190), "water", (1.0, 1.6)),
        FacilityKind("airfield", "plane", (168, 168, 164), (40, 40, 46), "apron", (2.0, 2.6)),
        FacilityKind(
            "parking lot", "vehicle", (72, 72, 78), (235, 235, 235), "asphalt", (1.0, 1.5)
        ),
        FacilityKind(
            "tank farm", "storage-tank", (196, 172, 118), (112, 88, 56), "soil", (1.0, 1.4)
        ),
        FacilityKind("compound", "building", (86, 140, 64), (176, 58, 46), "lawn", (1.0, 1.4)),
    )
}
RIM_SHARE = 0.08  # of the short side: quay, bund or compound wall width
ROW_PERIOD = 28.0  # painted rows of a parking lot, in pixels
ROW_WIDTH = 3.0
RUNWAY_SHARE = 0.22  # runway width as a share of the airfield's short side
DASH_PERIOD = 60.0  # runway centre-line dashes
BUND_CELLS = 3  # a tank farm is split by bund walls into this many cells per side


@dataclass(frozen=True)
class Facility:
    """One facility in full-resolution pixel coordinates (half-open box).

    Attributes:
        category: Object category it is made for; key of :data:`FACILITY_KINDS`.
        x0: Left edge.
        y0: Top edge.
        x1: Right edge.
        y1: Bottom edge.
    """

    category: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def kind(self) -> FacilityKind:
        """The facility's :class:`FacilityKind`."""
        return FACILITY_KINDS[self.category]

    @property
    def rim(self) -> float:
        """Width of the rim (quay, bund or wall) in pixels."""
        return RIM_SHARE * min(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def horizontal(self) -> bool:
        """Whether the long side runs along x."""
        return self.x1 - self.x0 >= self.y1 - self.y0

    def runway(self) -> tuple[float, float, float, float]:
        """Box of an airfield's runway along its long side, on the far edge from the origin."""
        if self.horizontal:
            width = RUNWAY_SHARE * (self.y1 - self.y0)
            return (
                self.x0 + self.rim,
                self.y1 - self.rim - width,
                self.x1 - self.rim,
                self.y1 - self.rim,
            )
        width = RUNWAY_SHARE * (self.x1 - self.x0)
        return (
            self.x1 - self.rim - width,
            self.y0 + self.rim,
            self.x1 - self.rim,
            self.y1 - self.rim,
        )

    def interior(self, margin: float) -> tuple[float, float, float, float]:
        """Box where an object's centre may go, ``margin`` inside the rim (and off the runway)."""
        pad = self.rim + margin
        x0, y0, x1, y1 = self.x0 + pad, self.y0 + pad, self.x1 - pad, self.y1 - pad
        if self.category == "plane":
            rx0, ry0, _, _ = self.runway()
            if self.horizontal:
                y1 = ry0 - margin
            else:
                x1 = rx0 - margin
        return x0, y0, x1, y1

    def paint(self, out: NDArray[np.uint8], y0: int, x0: int) -> None:
        """Paint the facility into the full-resolution RGB window ``out`` at ``(y0, x0)``."""
        h, w = out.shape[:2]
        c0, c1 = max(0, int(np.ceil(self.x0 - 0.5)) - x0), min(w, int(np.ceil(self.x1 - 0.5)) - x0)
        r0, r1 = max(0, int(np.ceil(self.y0 - 0.5)) - y0), min(h, int(np.ceil(self.y1 - 0.5)) - y0)
        if c1 <= c0 or r1 <= r0:
            return
        xs = (x0 + np.arange(c0, c1) + 0.5)[None, :]
        ys = (y0 + np.arange(r0, r1) + 0.5)[:, None]
        detail = self._detail(ys, xs)
        patch = out[r0:r1, c0:c1]
        patch[...] = self.kind.ground
        patch[detail] = self.kind.detail

    def _detail(self, ys: NDArray[np.float64], xs: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Pixels of the kind's texture on the grid ``ys`` x ``xs`` (broadcast column/row)."""
        rim = self.rim
        edge = np.minimum(
            np.minimum(xs - self.x0, self.x1 - xs), np.minimum(ys - self.y0, self.y1 - ys)
        )
        on_rim = np.broadcast_to(edge < rim, (ys.shape[0], xs.shape[1]))
        if self.category == "vehicle":  # painted rows across the lot's short side
            along = xs - self.x0 if self.horizontal else ys - self.y0
            rows = np.broadcast_to(np.mod(along, ROW_PERIOD) < ROW_WIDTH, on_rim.shape)
            return rows & ~on_rim | (edge < ROW_WIDTH)
        if self.category == "plane":  # a dark runway with a light centre line
            rx0, ry0, rx1, ry1 = self.runway()
            in_runway = (xs >= rx0) & (xs < rx1) & (ys >= ry0) & (ys < ry1)
            along = xs if self.horizontal else ys
            centre = (
                np.abs(ys - (ry0 + ry1) / 2) if self.horizontal else np.abs(xs - (rx0 + rx1) / 2)
            )
            dash = (np.mod(along, DASH_PERIOD) < DASH_PERIOD / 2) & (centre < 2.0)
            return np.broadcast_to(in_runway & ~dash, on_rim.shape) | (edge < 2.0)
        if self.category == "storage-tank":  # bund walls around a grid of cells
            cell_w = (self.x1 - self.x0) / BUND_CELLS
            cell_h = (self.y1 - self.y0) / BUND_CELLS
            half = rim / 2
            walls_x = np.abs(np.mod(xs - self.x0 + half, cell_w) - half) < half
            walls_y = np.abs(np.mod(ys - self.y0 + half, cell_h) - half) < half
            return on_rim | walls_x | walls_y
        return on_rim  # harbour quay, compound wall

    def cells(self) -> list[tuple[float, float, float, float]]:
        """Bund cells of a tank farm (inside the walls); the whole interior otherwise."""
        if self.category != "storage-tank":
            return [
                (self.x0 + self.rim, self.y0 + self.rim, self.x1 - self.rim, self.y1 - self.rim)
            ]
        cell_w = (self.x1 - self.x0) / BUND_CELLS
        cell_h = (self.y1 - self.y0) / BUND_CELLS
        rim = self.rim
        return [
            (
                self.x0 + i * cell_w + rim,
                self.y0 + j * cell_h + rim,
                self.x0 + (i + 1) * cell_w - rim,
                self.y0 + (j + 1) * cell_h - rim,
            )
            for j in range(BUND_CELLS)
            for i in range(BUND_CELLS)
        ]
