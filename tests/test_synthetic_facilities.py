"""Facilities (generator version 4): settings that a question's words lead to at coarse scale."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from lrsvqa.bench.templates import REFERENCE_KINDS, generate_questions
from lrsvqa.imagery.pyramid import build_pyramid
from lrsvqa.synthetic import CATEGORIES, SceneObject, SceneSpec, generate_scene
from lrsvqa.synthetic.facilities import FACILITY_KINDS, Facility

SPECS = [SceneSpec(seed, 2048 + 512 * (seed % 3), 2048 + 256 * (seed % 5)) for seed in range(8)]


def _coarse_look(scene, facility: Facility, block: int) -> np.ndarray:
    """Mean colour and texture (std of the block means) of a facility at one pyramid scale."""
    x0, y0 = math.ceil(facility.x0 / block) * block, math.ceil(facility.y0 / block) * block
    rows = int((facility.y1 - y0) // block)
    cols = int((facility.x1 - x0) // block)
    window = scene.render_window(y0, x0, rows * block, cols * block).astype(float)
    pixels = window.reshape(rows, block, cols, block, 3).mean(axis=(1, 3)).reshape(-1, 3)
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)])


def test_facility_kinds_are_told_apart_at_the_coarsest_level_of_16k_scenes() -> None:
    """Prototypes from two scenes classify every facility of two others by its coarse look."""
    looks: dict[int, list[tuple[str, np.ndarray]]] = {}
    for seed in (1, 2, 3, 4):
        spec = SceneSpec(seed=seed, height=16384, width=12288 + 1024 * seed)
        scene = generate_scene(spec)
        geometry = build_pyramid(spec.height, spec.width)
        block = round(max(spec.height, spec.width) / max(geometry.levels[0].resized_size))
        thumb = max(spec.height, spec.width) / max(geometry.thumbnail.resized_size)
        for facility in scene.facilities:
            # Big enough to show: at least 8 px in the thumbnail, objects a few px at most.
            assert min(facility.x1 - facility.x0, facility.y1 - facility.y0) / thumb >= 4
            assert max(facility.x1 - facility.x0, facility.y1 - facility.y0) / thumb >= 8
            looks.setdefault(seed, []).append(
                (facility.category, _coarse_look(scene, facility, block))
            )
        for obj in scene.objects:
            assert obj.attributes["length_px"] / block <= 5
    train = [look for seed in (1, 2) for look in looks[seed]]
    test = [look for seed in (3, 4) for look in looks[seed]]
    prototypes = {
        kind: np.mean([f for k, f in train if k == kind], axis=0) for kind in {k for k, _ in train}
    }
    assert len(prototypes) >= 4
    for kind, feature in test:
        if kind not in prototypes:
            continue
        nearest = min(prototypes, key=lambda k: np.linalg.norm(prototypes[k] - feature))
        assert nearest == kind
    # Colour alone already separates the kinds' grounds by a wide margin.
    grounds = [np.asarray(k.ground, dtype=float) for k in FACILITY_KINDS.values()]
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(grounds) for b in grounds[i + 1 :]]
    assert min(gaps) > 50


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"seed{s.seed}")
def test_scenes_hold_several_kinds_of_facility_and_empty_decoys(spec: SceneSpec) -> None:
    scene = generate_scene(spec)
    occupied = {obj.attributes["facility_index"] for obj in scene.objects}
    assert len(scene.facilities) - len(occupied) >= 1
    assert len({f.category for f in scene.facilities}) >= 2
    for index in occupied:
        held = [o for o in scene.objects if o.attributes["facility_index"] == index]
        assert 1 <= len(held) <= 4
    for i, a in enumerate(scene.facilities):
        for b in scene.facilities[i + 1 :]:
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0


def test_a_facility_renders_the_same_in_any_window() -> None:
    scene = generate_scene(SPECS[3])
    f = scene.facilities[0]
    x0, y0 = int(f.x0) - 5, int(f.y0) - 5
    h, w = int(f.y1 - f.y0) + 10, int(f.x1 - f.x0) + 10
    whole = scene.render_window(y0, x0, h, w)
    top = scene.render_window(y0, x0, h // 2, w)
    right = scene.render_window(y0 + h // 2, x0 + 7, h - h // 2, w - 7)
    assert np.array_equal(whole[: h // 2], top)
    assert np.array_equal(whole[h // 2 :, 7:], right)


AREAS = {  # analytic area over length squared
    "pointed": None,  # the hull's curved outline has no simple closed form
    "barge": 0.3,
    "cross": 0.14 + 0.18 * 0.92 - 0.14 * 0.18 + 0.1 * 0.36 - 0.1 * 0.14,
    "triangle": 0.5,
    "rectangle": 0.44,
    "square": 1.0,
    "circle": math.pi / 4,
    "hexagon": 3 * math.sqrt(3) / 8,
    "L-shape": 0.75,
}


@pytest.mark.parametrize(
    ("category", "shape"), [(c.name, s.name) for c in CATEGORIES.values() for s in c.shapes]
)
def test_every_shape_fills_its_analytic_area(category: str, shape: str) -> None:
    length = 400.0
    obj = SceneObject(category, "red", 1000.0, 1000.0, length, 0.3, 0.0, shape)
    _, _, mask = obj.footprint()
    if AREAS[shape] is not None:
        assert mask.sum() / length**2 == pytest.approx(AREAS[shape], rel=0.03)
    # The shapes of one category differ in more than a few edge pixels.
    others = [s.name for s in CATEGORIES[category].shapes if s.name != shape]
    for other in others:
        _, _, other_mask = SceneObject(
            category, "red", 1000.0, 1000.0, length, 0.3, 0.0, other
        ).footprint()
        assert abs(int(mask.sum()) - int(other_mask.sum())) > 0.05 * length**2 or mask.shape != (
            other_mask.shape
        )


def test_questions_record_how_they_name_their_object() -> None:
    kinds: set[str] = set()
    for spec in SPECS:
        scene = generate_scene(spec)
        records = generate_questions(
            scene.objects, "x.tif", (spec.height, spec.width), seed=spec.seed, max_per_image=None
        )
        for record in records:
            if record["category"] == "count":
                assert "reference_kind" not in record
                continue
            kind = record["reference_kind"]
            assert kind in REFERENCE_KINDS
            kinds.add(kind)
            target = next(o for o in scene.objects if [round(v) for v in o.hbox] == record["hbox"])
            if kind == "setting-qualified":
                assert f"in the {target.attributes['facility']}" in record["text"]
            if kind == "category-unique":
                assert re.search(r"\bthe only ", record["text"])
                assert sum(o.category == target.category for o in scene.objects) == 1
    assert kinds == set(REFERENCE_KINDS)
