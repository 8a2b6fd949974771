"""Labelled objects: the common form detection labels are read into.

Readers for DOTA, FAIR1M and JSON/GeoJSON labels, the template-QA generator and the
benchmark-construction pipeline all speak :class:`LabeledObject`, so a new label
format only needs a reader here to work with everything downstream.

Coordinates are original-image pixels with ``y`` pointing down, as in every detection
dataset; sizes are ``(height, width)`` as elsewhere in the package.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lrsvqa.errors import InputFileError
from lrsvqa.types import Box

Polygon = tuple[tuple[float, float], ...]
LabelFormat = Literal["dota", "fair1m", "json", "geojson"]

LABEL_SUFFIXES: dict[str, tuple[str, ...]] = {
    "dota": (".txt",),
    "fair1m": (".xml",),
    "json": (".json",),
    "geojson": (".geojson", ".json"),
}
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

# FAIR1M-1.0's fine-grained classes grouped by the coarse type a person would name
# them by ("the top-most airplane"), so "what type of airplane ..." questions can be
# asked. Courts and roads are left out: "what type of road is the bridge" reads oddly.
FAIR1M_SUPERCATEGORIES: dict[str, str] = {
    **dict.fromkeys(
        (
            "Boeing737", "Boeing747", "Boeing777", "Boeing787", "C919", "A220", "A321",
            "A330", "A350", "ARJ21", "other-airplane",
        ),
        "airplane",
    ),
    **dict.fromkeys(
        (
            "Passenger Ship", "Motorboat", "Fishing Boat", "Tugboat", "Engineering Ship",
            "Liquid Cargo Ship", "Dry Cargo Ship", "Warship", "other-ship",
        ),
        "ship",
    ),
    **dict.fromkeys(
        (
            "Small Car", "Bus", "Cargo Truck", "Dump Truck", "Van", "Trailer", "Tractor",
            "Excavator", "Truck Tractor", "other-vehicle",
        ),
        "vehicle",
    ),
}  # fmt: skip
DOTA_SUPERCATEGORIES: dict[str, str] = {"small-vehicle": "vehicle", "large-vehicle": "vehicle"}


@dataclass(frozen=True)
class LabeledObject:
    """One labelled object in a large image.

    Attributes:
        category: Object class name, e.g. ``"ship"``.
        hbox: Horizontal box ``(x0, y0, x1, y1)`` in original-image pixels.
        rbox: Rotated box as 4 corner points, when the labels have one.
        color: Colour name, when the labels carry it (synthetic scenes do).
        shape: Shape name, when known.
        attributes: Any further per-object facts (e.g. ``{"setting": "urban"}``,
            ``{"difficult": True}``, ``{"supercategory": "ship"}``).
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

    @property
    def footprint_area(self) -> float:
        """Area actually covered: the rotated box's when known, else the horizontal box's.

        "Largest ship" must compare hulls, not the boxes around them: a diagonal ship's
        horizontal box can be twice the area of a bigger ship lying straight.
        """
        return polygon_area(self.rbox) if self.rbox is not None else self.area

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {"category": self.category, "hbox": list(self.hbox)}
        if self.rbox is not None:
            out["rbox"] = [list(p) for p in self.rbox]
        if self.color is not None:
            out["color"] = self.color
        if self.shape is not None:
            out["shape"] = self.shape
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabeledObject:
        """Build from ``{category, hbox|rbox, color?, shape?, attributes?}``.

        ``rbox`` may be 4 ``[x, y]`` points or a flat list of 8 numbers (the LRS-VQA
        spelling); a missing ``hbox`` is taken as the rotated box's bounds.

        Raises:
            ValueError: If the category or both boxes are missing or malformed.
        """
        if not isinstance(data.get("category"), str) or not data["category"]:
            raise ValueError(f"object without a category: {dict(data)!r}")
        rbox = _parse_polygon(data["rbox"]) if data.get("rbox") is not None else None
        if data.get("hbox") is not None:
            hbox = _parse_box(data["hbox"])
        elif rbox is not None:
            hbox = bounds(rbox)
        else:
            raise ValueError(f"object without hbox or rbox: {dict(data)!r}")
        return cls(
            category=data["category"],
            hbox=hbox,
            rbox=rbox,
            color=data.get("color"),
            shape=data.get("shape"),
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True)
class ImageLabels:
    """The labels of one image, as read from one label file.

    Attributes:
        name: Label-file stem; images are matched to labels by it.
        objects: The labelled objects, in file order.
        image_file: Image file name when the label file states it (FAIR1M does).
        image_size: ``(height, width)`` when the label file states it.
        meta: Header facts such as DOTA's ``imagesource`` and ``gsd``.
    """

    name: str
    objects: tuple[LabeledObject, ...]
    image_file: str | None = None
    image_size: tuple[int, int] | None = None
    meta: dict[str, str] = field(default_factory=dict)


def polygon_area(points: Sequence[tuple[float, float]]) -> float:
    """Area of a simple polygon (shoelace formula), whatever its winding."""
    total = 0.0
    for (xa, ya), (xb, yb) in zip(points, [*points[1:], points[0]], strict=True):
        total += xa * yb - xb * ya
    return abs(total) / 2


def bounds(points: Sequence[tuple[float, float]]) -> Box:
    """Horizontal box ``(x0, y0, x1, y1)`` enclosing the points."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _parse_box(value: Any) -> Box:
    """Validate a 4-number ``[x0, y0, x1, y1]`` box."""
    if not isinstance(value, Sequence) or len(value) != 4:
        raise ValueError(f"hbox must be [x0, y0, x1, y1], got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"hbox has x1 < x0 or y1 < y0: {value!r}")
    return x0, y0, x1, y1


def _parse_polygon(value: Any) -> Polygon:
    """Accept 4 ``[x, y]`` points or 8 flat numbers as a rotated box."""
    if isinstance(value, Sequence) and len(value) == 8 and not isinstance(value[0], Sequence):
        flat = [float(v) for v in value]
        return tuple((flat[i], flat[i + 1]) for i in range(0, 8, 2))
    if isinstance(value, Sequence) and len(value) == 4:
        return tuple((float(p[0]), float(p[1])) for p in value)
    raise ValueError(f"rbox must be 4 [x, y] points or 8 numbers, got {value!r}")


def read_dota(path: str | Path) -> ImageLabels:
    """Read a DOTA label file: ``x1 y1 x2 y2 x3 y3 x4 y4 category difficult`` per line.

    The optional ``imagesource:`` and ``gsd:`` header lines go to ``meta``; a
    ``difficult`` flag of 1 is kept as ``attributes["difficult"] = True`` so generators
    can avoid naming hard-to-see objects while still counting them.

    Raises:
        ValueError: On a line that is neither a header nor an object, naming the line.
    """
    path = Path(path)
    objects: list[LabeledObject] = []
    meta: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        tokens = line.split()
        if len(tokens) == 1 and ":" in line:
            key, _, value = line.partition(":")
            meta[key.strip()] = value.strip()
            continue
        if len(tokens) not in (9, 10):
            raise ValueError(f"{path}:{lineno}: expected 8 coordinates, a category, a flag")
        try:
            coords = [float(t) for t in tokens[:8]]
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: bad coordinate in {line!r}") from err
        polygon = tuple((coords[i], coords[i + 1]) for i in range(0, 8, 2))
        category = tokens[8]
        attributes: dict[str, Any] = {}
        if len(tokens) == 10 and tokens[9] == "1":
            attributes["difficult"] = True
        if category in DOTA_SUPERCATEGORIES:
            attributes["supercategory"] = DOTA_SUPERCATEGORIES[category]
        objects.append(LabeledObject(category, bounds(polygon), polygon, attributes=attributes))
    return ImageLabels(name=path.stem, objects=tuple(objects), meta=meta)


def read_fair1m(path: str | Path) -> ImageLabels:
    """Read a FAIR1M XML label file.

    Each ``<object>`` names its class in ``<possibleresult><name>`` and its corners as
    ``<points><point>x,y</point>...`` (the first corner repeated at the end, which is
    dropped). ``<source><filename>`` and ``<size>`` are kept so the image can be
    found and sized without opening it.

    Raises:
        ValueError: On an object without a name or with fewer than 4 points.
    """
    path = Path(path)
    # The stdlib parser is fine for the user's own dataset files (not untrusted input).
    root = ET.parse(path).getroot()
    objects: list[LabeledObject] = []
    for index, node in enumerate(root.iter("object")):
        name = (node.findtext("possibleresult/name") or "").strip()
        points = [
            tuple(float(v) for v in (p.text or "").split(","))
            for p in node.iterfind("points/point")
        ]
        if not name or len(points) < 4 or any(len(p) != 2 for p in points):
            raise ValueError(f"{path}: object {index} lacks a name or 4 x,y points")
        if len(points) > 4 and points[-1] == points[0]:
            points = points[:-1]
        polygon: Polygon = tuple((p[0], p[1]) for p in points)
        coarse = FAIR1M_SUPERCATEGORIES.get(name)
        attributes = {"supercategory": coarse} if coarse else {}
        rbox = polygon if len(polygon) == 4 else None
        objects.append(LabeledObject(name, bounds(polygon), rbox, attributes=attributes))
    width, height = root.findtext("size/width"), root.findtext("size/height")
    size = (int(float(height)), int(float(width))) if width and height else None
    return ImageLabels(
        name=path.stem,
        objects=tuple(objects),
        image_file=(root.findtext("source/filename") or "").strip() or None,
        image_size=size,
    )


def read_json_labels(path: str | Path) -> ImageLabels:
    """Read the simple JSON format: a list of ``{category, hbox|rbox, color?, shape?, ...}``.

    The list may also be wrapped as ``{"image": "name.png", "objects": [...]}`` so a
    scene generator can record which image the labels belong to.

    Raises:
        ValueError: If the document is neither form, or an object is malformed.
    """
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    image_file = None
    if isinstance(data, dict) and isinstance(data.get("objects"), list):
        image_file = data.get("image")
        data = data["objects"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of objects or {{'objects': [...]}}")
    objects = tuple(LabeledObject.from_dict(item) for item in data)
    return ImageLabels(name=path.stem, objects=objects, image_file=image_file)


def read_geojson(path: str | Path) -> ImageLabels:
    """Read a GeoJSON ``FeatureCollection`` whose coordinates are image pixels.

    Each feature is a ``Polygon``; its ``category`` (and optional ``color``/``shape``)
    come from ``properties``, every other property goes to ``attributes``. A polygon
    with 4 distinct corners is also kept as the rotated box.

    Raises:
        ValueError: On a non-FeatureCollection, a non-polygon or a feature without category.
    """
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    objects: list[LabeledObject] = []
    for index, feature in enumerate(data.get("features", [])):
        geometry = feature.get("geometry") or {}
        props = dict(feature.get("properties") or {})
        if geometry.get("type") != "Polygon" or not geometry.get("coordinates"):
            raise ValueError(f"{path}: feature {index} is not a Polygon")
        ring = [(float(x), float(y)) for x, y, *_ in geometry["coordinates"][0]]
        if len(ring) > 1 and ring[-1] == ring[0]:
            ring = ring[:-1]
        category = props.pop("category", None)
        if not isinstance(category, str) or not category:
            raise ValueError(f"{path}: feature {index} has no 'category' property")
        objects.append(
            LabeledObject(
                category=category,
                hbox=bounds(ring),
                rbox=tuple(ring) if len(ring) == 4 else None,
                color=props.pop("color", None),
                shape=props.pop("shape", None),
                attributes=props,
            )
        )
    return ImageLabels(name=path.stem, objects=tuple(objects))


_READERS = {
    "dota": read_dota,
    "fair1m": read_fair1m,
    "json": read_json_labels,
    "geojson": read_geojson,
}


class LabelFileError(InputFileError):
    """A label file cannot be read or holds a malformed object."""


class MissingImageError(InputFileError, FileNotFoundError):
    """No image in the image folder matches a label file."""


def read_labels(path: str | Path, fmt: LabelFormat) -> ImageLabels:
    """Read one label file in the named format.

    Raises:
        ValueError: Unknown format.
        LabelFileError: Unreadable file or malformed content, naming the file (and
            line, when the format has lines).
    """
    if fmt not in _READERS:
        raise ValueError(f"unknown label format {fmt!r}; choose from {sorted(_READERS)}")
    try:
        return _READERS[fmt](path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ET.ParseError) as error:
        where, text = str(path), str(error)
        if text.startswith(where):  # the reader named the file (and line) already
            head, sep, problem = text[len(where) :].partition(": ")
            if sep:
                raise LabelFileError(where + head, problem) from None
        raise LabelFileError(where, f"{type(error).__name__}: {text}") from None


def guess_format(path: str | Path) -> LabelFormat:
    """Label format from a file's suffix, for pipelines given a folder of mixed labels.

    Raises:
        ValueError: For a suffix no reader handles.
    """
    suffix = Path(path).suffix.lower()
    by_suffix: dict[str, LabelFormat] = {
        ".txt": "dota",
        ".xml": "fair1m",
        ".json": "json",
        ".geojson": "geojson",
    }
    if suffix not in by_suffix:
        raise ValueError(f"cannot tell the label format of {path}")
    return by_suffix[suffix]


def iter_label_files(path: str | Path, fmt: LabelFormat | None = None) -> Iterator[Path]:
    """Label files under ``path`` (a file or a folder), sorted so runs are reproducible.

    Args:
        path: One label file, or a folder searched (not recursively) for label files.
        fmt: Only files with this format's suffixes; ``None`` takes every known suffix.
    """
    path = Path(path)
    if path.is_file():
        yield path
        return
    suffixes = LABEL_SUFFIXES[fmt] if fmt else tuple(s for v in LABEL_SUFFIXES.values() for s in v)
    yield from sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def find_image(images_dir: str | Path, labels: ImageLabels) -> Path:
    """The image a label file describes: its stated file name, else the same stem.

    Raises:
        MissingImageError: If no image in ``images_dir`` matches.
    """
    images_dir = Path(images_dir)
    if labels.image_file and (images_dir / labels.image_file).is_file():
        return images_dir / labels.image_file
    for suffix in IMAGE_SUFFIXES:
        for candidate in (suffix, suffix.upper()):
            image = images_dir / f"{labels.name}{candidate}"
            if image.is_file():
                return image
    raise MissingImageError(images_dir, f"no image for labels {labels.name!r}")
