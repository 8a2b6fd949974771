"""Labelled objects: the common form detection labels are read into.

Readers for DOTA, FAIR1M and JSON/GeoJSON labels, the template-QA generator and the
benchmark-construction pipeline all speak :class:`LabeledObject`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Box = tuple[float, float, float, float]
Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class LabeledObject:
    """One labelled object in a large image.

    Attributes:
        category: Object class name, e.g. ``"ship"``.
        hbox: Horizontal box ``(x0, y0, x1, y1)`` in original-image pixels.
        rbox: Rotated box as 4 corner points, when the labels have one.
        color: Colour name, when the labels carry it (synthetic scenes do).
        shape: Shape name, when known.
        attributes: Any further per-object facts (e.g. ``{"setting": "urban"}``).
    """

    category: str
    hbox: Box
    rbox: Polygon | None = None
    color: str | None = None
    shape: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> float:
        """Area of the horizontal box in square pixels."""
        x0, y0, x1, y1 = self.hbox
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        """Centre ``(x, y)`` of the horizontal box."""
        x0, y0, x1, y1 = self.hbox
        return (x0 + x1) / 2, (y0 + y1) / 2
