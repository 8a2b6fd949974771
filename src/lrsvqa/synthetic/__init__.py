"""A procedural world of very large labelled images, for tests and benchmarks without data.

Scenes up to 32,768 px per side of farmland, water, towns and highways, with facilities
(harbours, airfields, parking lots, tank farms, walled compounds) whose kind shows at
coarse scale, holding small objects (ships, planes, vehicles, storage tanks, buildings)
whose colour, shape and count can only be read at full resolution. Pixels are rendered
on demand, window by window, from a seed; scenes are written as pyramidal TIFFs with
JSON labels.
"""

from lrsvqa.synthetic.facilities import FACILITY_KINDS, Facility, FacilityKind
from lrsvqa.synthetic.objects import CATEGORIES, COLORS, Category, SceneObject
from lrsvqa.synthetic.scene import Scene, SceneSpec, generate_scene
from lrsvqa.synthetic.terrain import Region
from lrsvqa.synthetic.world import generate_world, world_specs, write_scene

__all__ = [
    "CATEGORIES",
    "COLORS",
    "FACILITY_KINDS",
    "Category",
    "Facility",
    "FacilityKind",
    "Region",
    "Scene",
    "SceneObject",
    "SceneSpec",
    "generate_scene",
    "generate_world",
    "world_specs",
    "write_scene",
]
