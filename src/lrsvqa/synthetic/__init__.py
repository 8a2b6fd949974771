"""A procedural world of very large labelled images, for tests and benchmarks without data.

Scenes up to 32,768 px per side of farmland, water, towns and highways, with a few
small objects (ships, planes, vehicles, storage tanks, buildings) whose category and
colour can only be read at full resolution. Pixels are rendered on demand, window by
window, from a seed; scenes are written as pyramidal TIFFs with JSON labels.
"""

from lrsvqa.synthetic.objects import CATEGORIES, COLORS, Category, SceneObject
from lrsvqa.synthetic.scene import Scene, SceneSpec, generate_scene
from lrsvqa.synthetic.terrain import Region
from lrsvqa.synthetic.world import generate_world, world_specs, write_scene

__all__ = [
    "CATEGORIES",
    "COLORS",
    "Category",
    "Region",
    "Scene",
    "SceneObject",
    "SceneSpec",
    "generate_scene",
    "generate_world",
    "world_specs",
    "write_scene",
]
