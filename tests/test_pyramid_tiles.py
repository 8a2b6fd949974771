"""Lazy DIP tiles: PyramidReader pixels follow the geometry and read only what they need."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrsvqa.imagery.errors import ImageReadError
from lrsvqa.imagery.pyramid import build_pyramid
from lrsvqa.imagery.reader import open_image
from lrsvqa.imagery.texture import render_texture
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.imagery.writer import write_pyramidal_tiff

H, W = 600, 900
B, MIN_SIDE = 64, 128  # small tiles keep a 4-level pyramid on a small image
RGB = render_texture(0, 0, H, W, seed=11)
PAD = 7


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiles") / "scene.tif"
    return write_pyramidal_tiff(
        path, H, W, lambda y, x, h, w: RGB[y : y + h, x : x + w], tile_size=128
    )


@pytest.fixture
def reader(scene: Path) -> Iterator[PyramidReader]:
    with PyramidReader.open(scene, tile_size=B, min_short_side=MIN_SIDE, pad_value=PAD) as r:
        yield r


def test_open_builds_the_geometry(reader: PyramidReader) -> None:
    assert reader.geometry == build_pyramid(H, W, B, MIN_SIDE)
    assert [lv.grid for lv in reader.geometry.levels] == [(2, 2), (3, 4), (5, 8), (10, 15)]


def test_tiles_are_padded_rgb_squares(reader: PyramidReader) -> None:
    for level in reader.geometry.levels:
        rows, cols = level.grid
        rh, rw = level.resized_size
        corner = reader.tile(level.index, rows - 1, cols - 1)
        assert corner.shape == (B, B, 3) and corner.dtype == np.uint8
        content_h, content_w = rh - (rows - 1) * B, rw - (cols - 1) * B
        assert (corner[content_h:] == PAD).all() and (corner[:, content_w:] == PAD).all()
        assert (corner[:content_h, :content_w] != PAD).any()


def test_tiles_are_the_mosaic_of_the_level_image(reader: PyramidReader) -> None:
    for level in reader.geometry.levels:
        canvas = reader.level_image(level.index)
        assert canvas.shape[:2] == level.canvas_size
        rh, rw = level.resized_size
        assert (canvas[rh:] == PAD).all() and (canvas[:, rw:] == PAD).all()
        for row, col in level.tiles():
            tile = reader.tile(level.index, row, col)
            expected = canvas[row * B : (row + 1) * B, col * B : (col + 1) * B]
            assert np.abs(tile.astype(int) - expected).max() <= 2


def test_finest_tiles_equal_resizing_the_whole_image(reader: PyramidReader) -> None:
    level = reader.geometry.levels[-1]
    rh, rw = level.resized_size
    canvas = np.full((*level.canvas_size, 3), PAD, np.uint8)
    canvas[:rh, :rw] = np.asarray(Image.fromarray(RGB).resize((rw, rh), Image.Resampling.BILINEAR))
    for row, col in [(0, 0), (4, 7), (9, 14), (9, 0)]:
        tile = reader.tile(level.index, row, col)
        expected = canvas[row * B : (row + 1) * B, col * B : (col + 1) * B]
        assert np.abs(tile.astype(int) - expected).max() <= 2


def test_coarse_tiles_come_from_an_overview_window(reader: PyramidReader) -> None:
    calls: list[tuple[int, tuple[int, int], tuple[int, int]]] = []
    source = reader.image._source
    original = source.read

    def spy(level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        calls.append((level, rows, cols))
        return original(level, rows, cols)

    source.read = spy  # type: ignore[method-assign]
    coarse = reader.geometry.levels[0]  # 75 x 112 stretched by r = 1.71 to 128 x 192
    reader.tile(0, 1, 1)
    ((stored, (r0, r1), (c0, c1)),) = calls
    # Needs 128/600 of full resolution: the 150 x 225 overview (1/4) is the coarsest with it.
    assert reader.image.level_sizes[stored] == (150, 225)
    span = B / coarse.scale * 2  # tile side in overview pixels (level is 1/8, overview 1/4)
    assert r1 - r0 <= span + 6 and c1 - c0 <= span + 6
    calls.clear()
    reader.tile(3, 5, 5)
    ((stored, (r0, r1), (c0, c1)),) = calls
    assert stored == 0 and r1 - r0 <= B + 6 and c1 - c0 <= B + 6


def test_thumbnail_is_the_padded_global_view(reader: PyramidReader) -> None:
    thumb = reader.thumbnail()
    assert thumb.shape == (B, B, 3)
    rh, rw = reader.geometry.thumbnail.resized_size
    assert (rh, rw) == (43, 64)
    assert (thumb[rh:] == PAD).all()
    expected = np.asarray(Image.fromarray(RGB).resize((rw, rh), Image.Resampling.BOX))
    assert np.abs(thumb[:rh].astype(int) - expected).mean() < 3


def test_level_image_preview_fits_max_side(reader: PyramidReader) -> None:
    full = reader.level_image(3)
    preview = reader.level_image(3, max_side=96)
    assert max(preview.shape[:2]) == 96 and preview.shape[:2] == (64, 96)
    shrunk = np.asarray(Image.fromarray(full).resize((96, 64), Image.Resampling.BOX))
    # Compare away from the padding edge, where the two differ by construction.
    assert np.abs(preview[:60, :88].astype(int) - shrunk[:60, :88]).mean() < 3
    with pytest.raises(ValueError):
        reader.level_image(0, max_side=0)


def test_tiles_keep_the_requested_order(reader: PyramidReader) -> None:
    positions = [(2, 3), (0, 0), (2, 3), (1, 7)]
    for tile, (row, col) in zip(reader.tiles(2, positions), positions, strict=True):
        np.testing.assert_array_equal(tile, reader.tile(2, row, col))


def test_concurrent_reads_match_sequential_reads(reader: PyramidReader) -> None:
    jobs = [(lv.index, r, c) for lv in reader.geometry.levels for r, c in lv.tiles()]
    random.Random(0).shuffle(jobs)
    sequential = [reader.tile(*job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda job: reader.tile(*job), jobs))
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("level", "row", "col"), [(4, 0, 0), (0, 2, 0), (0, 0, 2), (1, -1, 0)])
def test_bad_tile_indices_raise(reader: PyramidReader, level: int, row: int, col: int) -> None:
    with pytest.raises(IndexError):
        reader.tile(level, row, col)


def test_geometry_must_match_the_image(scene: Path) -> None:
    with open_image(scene) as image:
        with pytest.raises(ValueError, match="geometry is for"):
            PyramidReader(image, build_pyramid(H + 1, W))
        with pytest.raises(ValueError, match="pad_value"):
            PyramidReader(image, build_pyramid(H, W), pad_value=256)


def test_open_passes_reader_options(tmp_path: Path, scene: Path) -> None:
    with pytest.raises(ImageReadError, match="pixel"):
        PyramidReader.open(scene, max_pixels=1000)
    with PyramidReader.open(scene, tile_size=B, min_short_side=MIN_SIDE, bands=(3,)) as grey:
        tile = grey.tile(3, 0, 0)
    assert (tile[:, :, 0] == tile[:, :, 1]).all() and (tile[:, :, 1] == tile[:, :, 2]).all()


def test_closing_the_reader_closes_the_file(scene: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with PyramidReader.open(scene) as pyramid:
        pyramid.thumbnail()
    assert len(os.listdir("/proc/self/fd")) == before
