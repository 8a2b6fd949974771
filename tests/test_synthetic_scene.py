"""Objects of synthetic scenes: placement, labels, and visibility across pyramid scales."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lrsvqa.imagery.pyramid import build_pyramid
from lrsvqa.synthetic import CATEGORIES, COLORS, SceneSpec, generate_scene
from lrsvqa.synthetic.facilities import FACILITY_KINDS
from lrsvqa.synthetic.objects import OUTLINE_WIDTH

SPECS = [SceneSpec(seed, 2048 + 512 * (seed % 3), 2048 + 256 * (seed % 5)) for seed in range(8)]


def _palette_distance(rgb: np.ndarray, color: str) -> float:
    return float(np.linalg.norm(np.asarray(rgb, dtype=float) - COLORS[color]))


def _nearest_color(rgb: np.ndarray) -> str:
    return min(COLORS, key=lambda name: _palette_distance(rgb, name))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"seed{s.seed}")
def test_objects_inside_apart_and_uniquely_ordered(spec: SceneSpec) -> None:
    objects = generate_scene(spec).objects
    assert spec.min_objects <= len(objects) <= spec.max_objects
    for obj in objects:
        x0, y0, x1, y1 = obj.hbox
        assert 0 <= x0 < x1 <= spec.width and 0 <= y0 < y1 <= spec.height
    for a, b in itertools.combinations(objects, 2):
        ax0, ay0, ax1, ay1 = a.hbox
        bx0, by0, bx1, by1 = b.hbox
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a, b)
        # Distinct rows and columns: "top-most"/"left-most" of any subset is unique.
        assert abs(a.center[0] - b.center[0]) >= 40
        assert abs(a.center[1] - b.center[1]) >= 40


def test_scenes_vary_in_categories_colours_and_places() -> None:
    objects = [obj for spec in SPECS for obj in generate_scene(spec).objects]
    assert {o.category for o in objects} == set(CATEGORIES)
    assert len({o.color for o in objects}) >= 6
    assert {o.attributes["background"] for o in objects} == {
        k.background for k in FACILITY_KINDS.values()
    }
    assert {o.attributes.get("setting") for o in objects} >= {"urban", "rural"}
    # Most categories come in two shapes, and both are drawn.
    shapes = {(o.category, o.shape) for o in objects}
    assert shapes == {(c.name, s.name) for c in CATEGORIES.values() for s in c.shapes}


@pytest.mark.parametrize("spec", SPECS[:4], ids=lambda s: f"seed{s.seed}")
def test_labels_describe_what_is_drawn(spec: SceneSpec) -> None:
    scene = generate_scene(spec)
    for shape, obj in zip(scene.shapes, scene.objects, strict=True):
        assert obj.shape == shape.shape in {s.name for s in CATEGORIES[obj.category].shapes}
        assert obj.color == shape.color in COLORS
        assert obj.attributes.get("setting", "urban") in ("urban", "rural")
        # Each object stands inside the rim of a facility of its category, whose
        # surface is the label's background.
        facility = scene.facilities[obj.attributes["facility_index"]]
        assert facility.category == obj.category
        assert obj.attributes["facility"] == facility.kind.name
        assert obj.attributes["background"] == facility.kind.background
        rim = facility.rim
        x0, y0, x1, y1 = obj.hbox
        assert facility.x0 + rim <= x0 and x1 <= facility.x1 - rim
        assert facility.y0 + rim <= y0 and y1 <= facility.y1 - rim
        # The rotated box encloses the horizontal one's centre and matches its size.
        rx = [p[0] for p in obj.rbox]
        ry = [p[1] for p in obj.rbox]
        assert min(rx) <= obj.center[0] <= max(rx) and min(ry) <= obj.center[1] <= max(ry)
        assert obj.hbox[2] - obj.hbox[0] <= max(rx) - min(rx) + 2


@pytest.mark.parametrize("spec", SPECS[:4], ids=lambda s: f"seed{s.seed}")
def test_colour_and_size_readable_in_a_full_resolution_tile(spec: SceneSpec) -> None:
    scene = generate_scene(spec)
    for shape, obj in zip(scene.shapes, scene.objects, strict=True):
        x0, y0, near = shape.footprint(OUTLINE_WIDTH)
        ys = np.arange(y0, y0 + near.shape[0], dtype=float)
        xs = np.arange(x0, x0 + near.shape[1], dtype=float)
        inside = shape.signed_distance(ys, xs) < 0
        crop = scene.render_window(y0, x0, *near.shape)
        mean = crop[inside].mean(axis=0)
        assert _palette_distance(mean, obj.color) < 3
        assert _nearest_color(mean) == obj.color
        # Large enough to show its shape: at least 24 px long and a few hundred pixels.
        assert max(obj.hbox[2] - obj.hbox[0], obj.hbox[3] - obj.hbox[1]) >= 20
        assert inside.sum() >= 100
        # And set apart from the ground by a uniform outline of a contrasting colour.
        outline = np.unique(crop[near & ~inside], axis=0)
        assert len(outline) == 1 and _palette_distance(outline[0], obj.color) > 100


def test_objects_are_sub_pixel_in_the_thumbnail_of_a_16k_scene() -> None:
    spec = SceneSpec(seed=6, height=16384, width=16384)
    scene = generate_scene(spec)
    assert len({o.category for o in scene.objects}) >= 3
    geometry = build_pyramid(spec.height, spec.width)
    factor = spec.width / geometry.thumbnail.resized_size[1]
    block = round(factor)
    for shape, obj in zip(scene.shapes, scene.objects, strict=True):
        # Geometry: under one thumbnail pixel; 2-4 px at 1,008 px and on the coarsest level.
        x0, y0, mask = shape.footprint()
        assert mask.sum() / factor**2 < 1
        assert obj.attributes["length_px"] * 1008 / spec.width <= 4
        cx0, cy0, cx1, cy1 = geometry.levels[0].image_to_canvas(obj.hbox)
        assert max(cx1 - cx0, cy1 - cy0) <= 4
        # Pixels: block-average the thumbnail pixels around the object (as a thumbnail
        # would) and check its colour is washed out by the ground around it.
        by0, bx0 = (y0 // block - 1) * block, (x0 // block - 1) * block
        rows = math.ceil((y0 + mask.shape[0]) / block) + 1 - by0 // block
        cols = math.ceil((x0 + mask.shape[1]) / block) + 1 - bx0 // block
        window = scene.render_window(by0, bx0, rows * block, cols * block).astype(float)
        is_object = np.zeros(window.shape[:2], dtype=bool)
        is_object[y0 - by0 : y0 - by0 + mask.shape[0], x0 - bx0 : x0 - bx0 + mask.shape[1]] = mask
        blocks = window.reshape(rows, block, cols, block, 3)
        share = is_object.reshape(rows, block, cols, block).mean(axis=(1, 3))
        r, c = np.unravel_index(share.argmax(), share.shape)
        assert share[r, c] < 0.7
        pixel = blocks[r, :, c].reshape(-1, 3)
        ground = pixel[~is_object.reshape(rows, block, cols, block)[r, :, c].ravel()].mean(axis=0)
        contrast = _palette_distance(ground, obj.color)
        assert _palette_distance(pixel.mean(axis=0), obj.color) > 0.3 * contrast


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="sides"):
        SceneSpec(seed=0, height=1000, width=4096)
    with pytest.raises(ValueError, match="object range"):
        SceneSpec(seed=0, height=4096, width=4096, min_objects=5, max_objects=2)
    spec = SceneSpec(seed=9, height=4096, width=2048, min_objects=4, max_objects=6)
    assert SceneSpec.from_dict(spec.to_dict()) == spec
    assert 4 <= len(generate_scene(spec).objects) <= 6


def _sited(spec: SceneSpec):
    """The scene with its objects replaced by sited ones, as the training sampler adds them."""
    import dataclasses

    from lrsvqa.synthetic.scene import add_objects, candidate_placements

    scene = generate_scene(spec)
    bare = dataclasses.replace(scene, shapes=(), labels=())
    added = add_objects(
        bare, candidate_placements(bare, 40, seed=spec.seed), 6, np.random.default_rng(0)
    )
    return dataclasses.replace(bare, shapes=tuple(p.shape for p in added))


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 mean pooling, the ideal downsampling of a pyramid level."""
    h, w = image.shape[:2]
    return image.astype(float).reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))


def test_painting_resampled_objects_matches_rendering_them() -> None:
    """At scale 1 painting equals drawing; at half scale it nearly equals a downsampled render."""
    import dataclasses

    from lrsvqa.synthetic.objects import paint_resampled

    scene = _sited(SPECS[1])
    bare = dataclasses.replace(scene, shapes=())
    # Solid near the centre, so the centre pixel at half scale is the body's colour.
    solid = [s for s in scene.shapes if s.category in ("storage-tank", "vehicle")]
    assert solid
    for shape in solid[:3]:
        x0, y0, x1, y1 = shape.bounds(10)
        x1, y1 = x0 + (x1 - x0) // 2 * 2, y0 + (y1 - y0) // 2 * 2
        h, w = y1 - y0, x1 - x0
        window = bare.render_window(y0, x0, h, w)
        paint_resampled(window, (x0, y0, x1, y1), [shape])
        assert np.array_equal(window, scene.render_window(y0, x0, h, w))

        small = np.rint(_halve(bare.render_window(y0, x0, h, w))).astype(np.uint8)
        paint_resampled(small, (x0, y0, x1, y1), [shape])
        error = np.abs(small - _halve(scene.render_window(y0, x0, h, w)))
        # Edge pixels blend the object with the mean of all ground under them, not of
        # the uncovered part only: rare, and a few grey levels except beside a
        # facility's high-contrast markings (quays, painted rows).
        assert error.mean() < 0.5 and error.max() <= 24
        centre = small[round((shape.cy - y0) / 2), round((shape.cx - x0) / 2)]
        assert np.abs(centre.astype(int) - COLORS[shape.color]).max() <= 3


def test_added_objects_are_apart_from_the_scene_and_take_new_colours() -> None:
    from lrsvqa.synthetic.scene import MIN_AXIS_OFFSET, add_objects, candidate_placements

    scene = generate_scene(SPECS[2])
    placements = candidate_placements(scene, 100, seed=0)
    assert {p.shape.category for p in placements} >= {"plane", "vehicle", "building"}
    assert all(p.label().attributes["background"] == p.background for p in placements)
    rng = np.random.default_rng(0)
    colours = set()
    for _ in range(20):
        added = add_objects(scene, placements, 5, rng)
        assert 1 <= len(added) <= 5
        shapes = list(scene.shapes) + [p.shape for p in added]
        for a, b in itertools.combinations(shapes, 2):
            assert abs(a.cx - b.cx) >= MIN_AXIS_OFFSET and abs(a.cy - b.cy) >= MIN_AXIS_OFFSET
        colours.update(p.shape.color for p in added)
    assert colours == set(COLORS)


def test_candidates_stand_in_facilities_of_their_category() -> None:
    """Objects added in training keep the world's cue: the setting tells the category."""
    from lrsvqa.synthetic.facilities import FACILITY_KINDS
    from lrsvqa.synthetic.scene import candidate_placements

    scene = generate_scene(SPECS[2])
    placements = candidate_placements(scene, 60, seed=1)
    assert len(placements) == 60
    assert {p.facility for p in placements} == set(range(len(scene.facilities)))
    for placement in placements:
        facility = scene.facilities[placement.facility]
        label = placement.label()
        assert FACILITY_KINDS[label.category].name == facility.kind.name == placement.facility_name
        assert facility.x0 <= placement.shape.cx <= facility.x1
        assert facility.y0 <= placement.shape.cy <= facility.y1
        assert placement.shape.site_radius == 0
