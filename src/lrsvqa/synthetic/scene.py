"""Synthetic scenes: a terrain plus a few labelled objects, rendered window by window.

:func:`generate_scene` draws everything from ``SceneSpec.seed`` (layout and objects,
no pixels); :meth:`Scene.render_window` renders any rectangle on demand, and the
result does not depend on how the image is cut into windows.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lrsvqa.labels import LabeledObject
from lrsvqa.synthetic.facilities import FACILITY_KINDS, FACILITY_MIN_SIDE, FACILITY_SHARE, Facility
from lrsvqa.synthetic.objects import (
    CATEGORIES,
    COLORS,
    OUTLINE_WIDTH,
    SITE_MIN_RADIUS,
    SITE_RADIUS_SHARE,
    SceneObject,
)
from lrsvqa.synthetic.terrain import Region, Terrain, make_terrain

MIN_SIDE = 2048
DEFAULT_OBJECT_RANGE = (3, 12)  # fewest and most objects per scene unless asked otherwise
RENDER_BLOCK = 512
EDGE_MARGIN = 32
MIN_GAP = 32
MIN_AXIS_OFFSET = 48
BACKGROUND_PURITY = 0.85
SETTING_RADIUS = 256
SETTING_STEP = 16
URBAN_MIN_FRACTION = 0.3
RURAL_MAX_FRACTION = 0.05
ROAD_VEHICLE_SHARE = 0.6
ATTEMPTS_PER_CATEGORY = 150
MAX_PER_FACILITY = 4
# Chances of 1, 2, 3 and 4 objects in a facility: lone objects are common enough that
# "the only ship" is a frequent reference.
FACILITY_COUNT_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
DECOY_RANGE = (1, 3)  # empty facilities per scene
FACILITY_GAP = 64.0
FACILITY_SIZE_SPREAD = 1.25  # long side drawn up to this factor above the minimum
FACILITY_MIN_SHORT = 224.0  # room for a 64 px object inside the rim (and beside a runway)
_M_TOP_PAD = -2  # glibc mallopt parameter
_HEAP_PAD = 64 << 20


@functools.cache
def _keep_freed_memory() -> None:
    """Ask glibc to keep 64 MB of freed heap instead of returning it to the OS at once.

    Rendering allocates and frees many short-lived 1 MB arrays per block; with the
    default trimming every block pays page faults for memory it just released, which
    doubled render time on a VM where faults are costly. Elsewhere this is a no-op.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TOP_PAD, _HEAP_PAD)


@dataclass(frozen=True)
class SceneSpec:
    """What to generate; everything else follows from these fields.

    Attributes:
        seed: Seed of layout, textures and objects.
        height: Image height in pixels.
        width: Image width in pixels.
        min_objects: Fewest objects to place.
        max_objects: Most objects to place (the count is drawn uniformly in between).
    """

    seed: int
    height: int
    width: int
    min_objects: int = DEFAULT_OBJECT_RANGE[0]
    max_objects: int = DEFAULT_OBJECT_RANGE[1]

    def __post_init__(self) -> None:
        if min(self.height, self.width) < MIN_SIDE:
            raise ValueError(f"scene sides must be >= {MIN_SIDE}, got {self.height}x{self.width}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"bad object range {self.min_objects}..{self.max_objects}")

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form, as stored in manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: int(v) for k, v in data.items()})


@dataclass(frozen=True)
class Scene:
    """A generated scene: terrain parameters and placed objects, no pixels.

    Attributes:
        spec: The spec it was generated from.
        terrain: Ground layout and texture parameters.
        shapes: Geometry of the placed objects.
        labels: Their labels, in the same order.
        facilities: Settings holding the objects, decoys (empty ones) included.
    """

    spec: SceneSpec
    terrain: Terrain
    shapes: tuple[SceneObject, ...]
    labels: tuple[LabeledObject, ...]
    facilities: tuple[Facility, ...]

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return self.spec.height

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return self.spec.width

    @property
    def objects(self) -> list[LabeledObject]:
        """Labels of all objects in the scene."""
        return list(self.labels)

    def render_window(self, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        """Render the ``h`` x ``w`` window whose top-left pixel is ``(y0, x0)``.

        Returns:
            ``(h, w, 3)`` uint8 RGB, bit-identical to the same crop of any other
            window, so a writer may call this per tile in any order.
        """
        if h < 1 or w < 1 or y0 < 0 or x0 < 0 or y0 + h > self.height or x0 + w > self.width:
            raise ValueError(
                f"window ({y0}, {x0}, {h}, {w}) outside the {self.height}x{self.width} scene"
            )
        _keep_freed_memory()
        out = np.empty((h, w, 3), dtype=np.uint8)
        for by in range(0, h, RENDER_BLOCK):
            ys = np.arange(y0 + by, y0 + min(h, by + RENDER_BLOCK), dtype=np.float64)
            for bx in range(0, w, RENDER_BLOCK):
                xs = np.arange(x0 + bx, x0 + min(w, bx + RENDER_BLOCK), dtype=np.float64)
                out[by : by + len(ys), bx : bx + len(xs)] = self.terrain.render(ys, xs)
        for facility in self.facilities:
            facility.paint(out, y0, x0)
        box = (float(x0), float(y0), float(x0 + w), float(y0 + h))
        for shape in self.shapes:  # sites first: a site never covers another object's body
            shape.paint_site(out, box)
        for shape in self.shapes:
            shape.draw(out, y0, x0)
        return out


def _grid(lo: float, hi: float, step: float) -> NDArray[np.float64]:
    """Pixel coordinates ``lo, lo + step, ...`` below ``hi``."""
    return np.arange(lo, hi, step, dtype=np.float64)


@dataclass(frozen=True)
class Placement:
    """An object checked against the terrain, with the surroundings its labels state.

    Its colour does not affect where it may stand, so one placement serves any colour.
    """

    shape: SceneObject
    background: str
    setting: str | None
    facility: int | None = None
    facility_name: str | None = None

    def label(self) -> LabeledObject:
        """The object's label."""
        return self.shape.label(self.background, self.setting, self.facility, self.facility_name)


@dataclass
class _Placer:
    """Rejection sampler that places objects where their labels will be unambiguous."""

    rng: np.random.Generator
    terrain: Terrain
    land: NDArray[np.float64]  # (n, 2) candidate centres (y, x) on land
    water: NDArray[np.float64]  # (n, 2) candidate centres on water
    step: float
    shapes: list[SceneObject]
    labels: list[LabeledObject]

    @classmethod
    def create(cls, rng: np.random.Generator, terrain: Terrain) -> _Placer:
        """Index coarse land and water cells once, so proposals rarely miss their habitat."""
        step = max(32.0, max(terrain.height, terrain.width) / 256)
        ys = _grid(step / 2, terrain.height, step)
        xs = _grid(step / 2, terrain.width, step)
        cover = terrain.cover(ys, xs)
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        cells = np.stack([gy, gx], axis=-1)
        return cls(
            rng, terrain, cells[cover != Region.WATER], cells[cover == Region.WATER], step, [], []
        )

    def _on_road(self, length: float) -> tuple[float, float, float] | None:
        """A centre and heading on a highway for a vehicle of ``length``, or None."""
        if not self.terrain.roads:
            return None
        road = self.terrain.roads[int(self.rng.integers(len(self.terrain.roads)))]
        qy = self.rng.uniform(0, self.terrain.height)
        qx = self.rng.uniform(0, self.terrain.width)
        half_width = CATEGORIES["vehicle"].shapes[0].half_width
        room = max(0.0, road.half_width - half_width * length - 2.5)
        lateral = self.rng.uniform(-room, room)
        off = qx * road.nx + qy * road.ny - road.offset - lateral
        heading = road.angle + math.pi * int(self.rng.integers(2))
        return qy - off * road.ny, qx - off * road.nx, heading

    def _propose(self, name: str) -> SceneObject | None:
        """A random object of category ``name`` in its habitat (not yet checked)."""
        kind = CATEGORIES[name]
        length = float(self.rng.uniform(*kind.lengths))
        color = list(COLORS)[int(self.rng.integers(len(COLORS)))]
        if name == "vehicle" and self.rng.random() < ROAD_VEHICLE_SHARE:
            placed = self._on_road(length)
            if placed is None:
                return None
            cy, cx, angle = placed
        else:
            cells = self.water if kind.habitat == "water" else self.land
            if not len(cells):
                return None
            cy, cx = cells[int(self.rng.integers(len(cells)))] + self.rng.uniform(
                -self.step / 2, self.step / 2, size=2
            )
            angle = float(self.rng.uniform(0, 2 * math.pi))
        long_side = max(self.terrain.height, self.terrain.width)
        site = max(SITE_MIN_RADIUS, SITE_RADIUS_SHARE * long_side)
        return SceneObject(
            name, color, float(cx), float(cy), length, float(angle), site, kind.shapes[0].name
        )

    def _fits(self, obj: SceneObject) -> bool:
        """Inside the image, clear of every placed object on both axes, sites apart."""
        x0, y0, x1, y1 = obj.bounds(OUTLINE_WIDTH + EDGE_MARGIN)
        if x0 < 0 or y0 < 0 or x1 > self.terrain.width or y1 > self.terrain.height:
            return False
        x0, y0, x1, y1 = obj.bounds(OUTLINE_WIDTH + MIN_GAP / 2)
        for other in self.shapes:
            if abs(obj.cx - other.cx) < MIN_AXIS_OFFSET or abs(obj.cy - other.cy) < MIN_AXIS_OFFSET:
                return False
            gap = math.hypot(obj.cx - other.cx, obj.cy - other.cy)
            if gap < obj.site_radius + other.site_radius + MIN_GAP:
                return False
            ox0, oy0, ox1, oy1 = other.bounds(OUTLINE_WIDTH + MIN_GAP / 2)
            if x0 < ox1 and ox0 < x1 and y0 < oy1 and oy0 < y1:
                return False
        return True

    def _background(self, obj: SceneObject) -> str | None:
        """The region under the object if it is clear-cut and suits the category."""
        x0, y0, mask = obj.footprint(OUTLINE_WIDTH)
        ys = np.arange(y0, y0 + mask.shape[0], dtype=np.float64)
        xs = np.arange(x0, x0 + mask.shape[1], dtype=np.float64)
        codes = self.terrain.regions(ys, xs)[mask]
        counts = np.bincount(codes, minlength=len(Region))
        region = Region(int(counts.argmax()))
        if obj.kind.habitat == "water":
            return region.label if counts[Region.WATER] == codes.size else None
        if counts[Region.WATER] or counts[region] < BACKGROUND_PURITY * codes.size:
            return None
        return region.label

    def _setting(self, obj: SceneObject) -> str | None:
        """``"urban"`` or ``"rural"`` from the built-up share around the object.

        None when the neighbourhood is mixed and either answer could be argued.
        """
        r = SETTING_RADIUS
        ys = _grid(max(0.0, obj.cy - r), min(self.terrain.height, obj.cy + r), SETTING_STEP)
        xs = _grid(max(0.0, obj.cx - r), min(self.terrain.width, obj.cx + r), SETTING_STEP)
        share = float(np.mean(self.terrain.cover(ys, xs) == Region.URBAN))
        if share >= URBAN_MIN_FRACTION:
            return "urban"
        if share <= RURAL_MAX_FRACTION:
            return "rural"
        return None

    def candidate(self, name: str) -> Placement | None:
        """An object of category ``name`` that fits, with its surroundings, or None."""
        for _ in range(ATTEMPTS_PER_CATEGORY):
            obj = self._propose(name)
            if obj is None or not self._fits(obj):
                continue
            background = self._background(obj)
            setting = self._setting(obj) if background else None
            if background and setting:
                return Placement(obj, background, setting)
        return None

    def add(self, placement: Placement) -> None:
        """Keep a placement: later objects must stay clear of it."""
        self.shapes.append(placement.shape)
        self.labels.append(placement.label())

    def place(self, name: str) -> bool:
        """Try to place one object of category ``name``; whether it succeeded."""
        placement = self.candidate(name)
        if placement is not None:
            self.add(placement)
        return placement is not None


def _facility_box(
    rng: np.random.Generator, terrain: Terrain, category: str
) -> tuple[float, float, float, float]:
    """A random box for a facility of ``category``: size by scene, aspect by kind."""
    kind = FACILITY_KINDS[category]
    long_side = max(FACILITY_MIN_SIDE, FACILITY_SHARE * max(terrain.height, terrain.width))
    long_side *= float(rng.uniform(1.0, FACILITY_SIZE_SPREAD))
    short_side = max(FACILITY_MIN_SHORT, long_side / float(rng.uniform(*kind.aspect)))
    w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    x0 = float(rng.uniform(EDGE_MARGIN, max(EDGE_MARGIN + 1, terrain.width - w - EDGE_MARGIN)))
    y0 = float(rng.uniform(EDGE_MARGIN, max(EDGE_MARGIN + 1, terrain.height - h - EDGE_MARGIN)))
    return x0, y0, x0 + w, y0 + h


def _place_facility(
    rng: np.random.Generator, terrain: Terrain, category: str, placed: list[Facility]
) -> Facility | None:
    """A facility of ``category`` inside the image, on dry land, apart from ``placed``."""
    for _ in range(ATTEMPTS_PER_CATEGORY):
        x0, y0, x1, y1 = _facility_box(rng, terrain, category)
        if x1 > terrain.width - EDGE_MARGIN or y1 > terrain.height - EDGE_MARGIN:
            continue
        if any(
            x0 < o.x1 + FACILITY_GAP
            and o.x0 < x1 + FACILITY_GAP
            and y0 < o.y1 + FACILITY_GAP
            and o.y0 < y1 + FACILITY_GAP
            for o in placed
        ):
            continue
        step = max(SETTING_STEP, (x1 - x0) / 32)
        cover = terrain.cover(_grid(y0, y1, step), _grid(x0, x1, step))
        if (cover == Region.WATER).any():
            continue
        return Facility(category, x0, y0, x1, y1)
    return None


def _fill_facility(placer: _Placer, facility: Facility, index: int, count: int) -> int:
    """Place up to ``count`` objects of the facility's category inside it; how many fit."""
    rng = placer.rng
    kind = CATEGORIES[facility.category]
    placed = 0
    for _ in range(ATTEMPTS_PER_CATEGORY):
        if placed == count:
            break
        length = float(rng.uniform(*kind.lengths))
        margin = length / 2 + OUTLINE_WIDTH + 2
        if facility.category == "storage-tank":  # one tank per bund cell
            cells = facility.cells()
            cx0, cy0, cx1, cy1 = cells[int(rng.integers(len(cells)))]
            bx0, by0, bx1, by1 = cx0 + margin, cy0 + margin, cx1 - margin, cy1 - margin
        else:
            bx0, by0, bx1, by1 = facility.interior(margin)
        if bx1 <= bx0 or by1 <= by0:
            continue
        obj = SceneObject(
            facility.category,
            list(COLORS)[int(rng.integers(len(COLORS)))],
            float(rng.uniform(bx0, bx1)),
            float(rng.uniform(by0, by1)),
            length,
            float(rng.uniform(0, 2 * math.pi)),
            0.0,
            kind.shapes[int(rng.integers(len(kind.shapes)))].name,
        )
        ox0, oy0, ox1, oy1 = obj.bounds(OUTLINE_WIDTH)
        inside = bx0 - margin <= ox0 and ox1 <= bx1 + margin
        if not (inside and by0 - margin <= oy0 and oy1 <= by1 + margin) or not placer._fits(obj):
            continue
        setting = placer._setting(obj)
        placer.shapes.append(obj)
        placer.labels.append(
            obj.label(facility.kind.background, setting, index, facility.kind.name)
        )
        placed += 1
    return placed


def generate_scene(spec: SceneSpec) -> Scene:
    """Generate a scene's layout and objects (no pixels) deterministically from ``spec``.

    Objects stand in facilities of their category (ships in harbours, planes on
    airfields, ...), 1 to :data:`MAX_PER_FACILITY` per facility, until the drawn
    object count is reached; then 1-3 empty facilities of random kinds are added as
    decoys, so a search guided by the question has to choose. Objects are apart from
    each other with distinct rows and columns (so "top-most"/"left-most" references
    are unique).

    Raises:
        RuntimeError: If fewer than ``spec.min_objects`` objects could be placed.
    """
    rng = np.random.default_rng(spec.seed)
    terrain = make_terrain(rng, spec.height, spec.width)
    placer = _Placer(rng, terrain, np.empty((0, 2)), np.empty((0, 2)), 0.0, [], [])
    names = list(CATEGORIES)
    facilities: list[Facility] = []
    remaining = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    # Categories cycle in a random order, so a scene holds several kinds of facility.
    order = [names[i] for i in rng.permutation(len(names))]
    for attempt in range(ATTEMPTS_PER_CATEGORY):
        if remaining <= 0:
            break
        category = order[attempt % len(order)]
        facility = _place_facility(rng, terrain, category, facilities)
        if facility is None:
            continue
        count = min(remaining, 1 + int(rng.choice(MAX_PER_FACILITY, p=FACILITY_COUNT_WEIGHTS)))
        facilities.append(facility)
        remaining -= _fill_facility(placer, facility, len(facilities) - 1, count)
    for _ in range(int(rng.integers(DECOY_RANGE[0], DECOY_RANGE[1] + 1))):
        decoy = _place_facility(rng, terrain, names[int(rng.integers(len(names)))], facilities)
        if decoy is not None:
            facilities.append(decoy)
    if len(placer.shapes) < spec.min_objects:
        raise RuntimeError(f"placed only {len(placer.shapes)} objects in scene {spec}")
    return Scene(spec, terrain, tuple(placer.shapes), tuple(placer.labels), tuple(facilities))


def candidate_placements(scene: Scene, count: int, seed: int) -> list[Placement]:
    """Up to ``count`` placements in ``scene``'s facilities (empty ones too), apart or not.

    Objects of a category stand only in facilities of its kind, as in
    :func:`generate_scene`, so examples built from them keep the world's cue: the setting
    seen at coarse scale tells where the object a question names can be. Checking fit
    and surroundings is what makes placing slow; done once here, :func:`add_objects` can
    then draw many fresh layouts cheaply.
    """
    rng = np.random.default_rng(seed)
    found: list[Placement] = []
    if not scene.facilities:
        return found
    for n in range(count * 3):
        if len(found) == count:
            break
        index = n % len(scene.facilities)
        facility = scene.facilities[index]
        # A fresh placer per proposal: candidates ignore each other, only the terrain.
        placer = _Placer(rng, scene.terrain, np.empty((0, 2)), np.empty((0, 2)), 0.0, [], [])
        if _fill_facility(placer, facility, index, 1):
            label = placer.labels[0]
            found.append(
                Placement(
                    placer.shapes[0],
                    str(label.attributes["background"]),
                    label.attributes.get("setting"),
                    index,
                    facility.kind.name,
                )
            )
    return found


def add_objects(
    scene: Scene, placements: list[Placement], count: int, rng: np.random.Generator
) -> list[Placement]:
    """Up to ``count`` of ``placements``, recoloured at random, clear of the scene and each other.

    The same spacing rules as :func:`generate_scene` hold between all objects, so
    position references over the scene's and the added objects stay unique.
    """
    # Only the spacing check is used: no candidate centres are needed.
    none = np.empty((0, 2))
    placer = _Placer(rng, scene.terrain, none, none, 0.0, list(scene.shapes), [])
    added: list[Placement] = []
    for index in rng.permutation(len(placements)):
        if len(added) == count:
            break
        placement = placements[int(index)]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        recoloured = replace(placement, shape=replace(placement.shape, color=color))
        if placer._fits(recoloured.shape):
            placer.add(recoloured)
            added.append(recoloured)
    return added
