"""Rendering of synthetic scenes: deterministic, and independent of how it is windowed."""

from __future__ import annotations

import numpy as np
import pytest

from lrsvqa.synthetic import COLORS, Region, Scene, SceneSpec, generate_scene
from lrsvqa.synthetic.noise import ValueNoise, hash2

SPEC = SceneSpec(seed=0, height=2048, width=2304)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return generate_scene(SPEC)


@pytest.fixture(scope="module")
def full(scene: Scene) -> np.ndarray:
    return scene.render_window(0, 0, scene.height, scene.width)


def test_noise_depends_only_on_global_coordinates() -> None:
    noise = ValueNoise(5, (700.0, 90.0, 7.0), (1.0, 0.3, 0.1))
    ys, xs = np.arange(100.0, 700.0), np.arange(-50.0, 650.0)
    grid = noise.sample(ys, xs)
    assert np.array_equal(noise.sample(ys[123:321], xs[77:500]), grid[123:321, 77:500])
    assert np.array_equal(noise.sample(ys[::7], xs[3::11]), grid[::7, 3::11])
    lo, hi = noise.bounds(ys[0], xs[0], ys[-1], xs[-1])
    assert lo <= grid.min() and grid.max() <= hi
    assert grid.std() > 0.1


def test_hash_mixes_seed_and_both_coordinates() -> None:
    grid = hash2(np.arange(64)[None, :], np.arange(64)[:, None], 1)
    assert len(np.unique(grid)) == grid.size
    assert not np.array_equal(grid, hash2(np.arange(64)[None, :], np.arange(64)[:, None], 2))
    assert not np.array_equal(grid, grid.T)


def test_same_seed_same_scene_other_seed_other_scene(scene: Scene) -> None:
    again = generate_scene(SPEC)
    other = generate_scene(SceneSpec(seed=1, height=SPEC.height, width=SPEC.width))
    assert again.objects == scene.objects
    assert other.objects != scene.objects
    window = (300, 700, 400, 600)
    assert np.array_equal(again.render_window(*window), scene.render_window(*window))
    assert not np.array_equal(other.render_window(*window), scene.render_window(*window))


def test_scene_holds_every_land_cover_and_its_objects(scene: Scene, full: np.ndarray) -> None:
    # The windowing tests below are only meaningful if every texture path is exercised.
    codes = scene.terrain.regions(np.arange(0.0, scene.height, 4), np.arange(0.0, scene.width, 4))
    assert set(np.unique(codes)) == set(Region)
    for obj in scene.objects:
        x, y = (int(v) for v in obj.center)
        patch = full[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3)
        assert (patch == COLORS[obj.color]).all(axis=1).any()


@pytest.mark.parametrize(
    "window",
    [
        (0, 0, 1, 1),
        (511, 511, 2, 2),
        (100, 37, 700, 1100),
        (1000, 1500, 1048, 804),
        (2047, 0, 1, 2304),
        (0, 2303, 2048, 1),
        (333, 444, 555, 666),
    ],
)
def test_window_equals_crop_of_whole_image(scene: Scene, full: np.ndarray, window) -> None:
    y0, x0, h, w = window
    assert np.array_equal(scene.render_window(y0, x0, h, w), full[y0 : y0 + h, x0 : x0 + w])


def test_object_windows_equal_crops(scene: Scene, full: np.ndarray) -> None:
    # Windows cutting through objects: an object must not depend on the window either.
    for obj in scene.objects:
        x0, y0, x1, y1 = (int(v) for v in obj.hbox)
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        for window in ((y0 - 3, x0 - 5, cy - y0 + 3, x1 - x0 + 10), (cy, cx, y1 - cy + 4, 9)):
            wy, wx, h, w = window
            assert np.array_equal(scene.render_window(*window), full[wy : wy + h, wx : wx + w])


def test_other_tiling_reassembles_the_same_image(scene: Scene, full: np.ndarray) -> None:
    tile = 336  # not a divisor of the render block: cuts fall everywhere
    out = np.zeros_like(full)
    for y in range(0, scene.height, tile):
        for x in range(0, scene.width, tile):
            h, w = min(tile, scene.height - y), min(tile, scene.width - x)
            out[y : y + h, x : x + w] = scene.render_window(y, x, h, w)
    assert np.array_equal(out, full)


def test_land_cover_on_a_sparse_grid_matches_full_resolution(scene: Scene) -> None:
    ys, xs = np.arange(0.0, scene.height), np.arange(0.0, scene.width)
    dense = scene.terrain.regions(ys, xs)
    assert np.array_equal(scene.terrain.regions(ys[5::16], xs[::16]), dense[5::16, ::16])
    cover = scene.terrain.cover(ys, xs)
    assert np.array_equal(scene.terrain.cover(ys[::32], xs[7::32]), cover[::32, 7::32])
    # Streets and highways are ROAD in regions() but keep their land cover in cover().
    roads = dense == Region.ROAD
    assert roads.any() and not (cover[roads] == Region.ROAD).any()


def test_skipping_noise_by_bounds_never_changes_pixels(scene: Scene, monkeypatch) -> None:
    # Render small windows once with the shortcut and once with noise evaluated everywhere.
    step = 128
    windows = [
        (np.arange(y, y + step, dtype=float), np.arange(x, x + step, dtype=float))
        for y in range(0, scene.height, step)
        for x in range(0, scene.width, step)
    ]
    fast = [scene.terrain.render(ys, xs) for ys, xs in windows]
    monkeypatch.setattr(ValueNoise, "bounds", lambda *_: (-np.inf, np.inf))
    for (ys, xs), expected in zip(windows, fast, strict=True):
        assert np.array_equal(scene.terrain.render(ys, xs), expected)


@pytest.mark.parametrize(
    "window", [(-1, 0, 10, 10), (0, 0, 0, 5), (2040, 0, 9, 5), (0, 2300, 5, 5)]
)
def test_window_outside_scene_is_rejected(scene: Scene, window) -> None:
    with pytest.raises(ValueError, match="outside"):
        scene.render_window(*window)
