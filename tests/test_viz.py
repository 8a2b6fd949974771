"""Overlays: fixed size whatever the image or title, folders created, legend per level."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.app.viz import DPI, FIGURE_INCHES, _wrapped, save_attention_overlay
from lrsvqa.imagery.pyramid import build_pyramid

SIZE = (int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI))


@pytest.mark.parametrize(("height", "width"), [(2100, 1500), (600, 27328)])
def test_overlay_has_a_fixed_size_and_creates_its_folder(tmp_path, height, width):
    geometry = build_pyramid(height, width)
    thumbnail = np.full((geometry.tile_size, geometry.tile_size, 3), 90, np.uint8)
    rows, cols = geometry.levels[0].grid
    scores = np.random.default_rng(0).random((rows * 24, cols * 24))
    tiles = [(1, [(r, c) for r in range(rows) for c in range(cols)])]
    if len(geometry.levels) > 1:
        tiles.append((2, [(0, 0), (0, 1)]))
    path = tmp_path / "missing" / "deeper" / "overlay.png"
    long_title = "What is the colour of the ship near the harbour? " * 12 + "\n" + "red " * 80
    save_attention_overlay(path, thumbnail, geometry, scores, tiles, title=long_title)
    with Image.open(path) as picture:
        assert picture.size == SIZE


def test_title_is_wrapped_and_cut():
    lines = _wrapped("word " * 200 + "\nanswer").splitlines()
    assert len(lines) == 4 and all(len(line) <= 90 for line in lines)
    assert lines[-1].endswith("…")
    assert _wrapped("Q?\nA.") == "Q?\nA."


def test_pyramid_overlay_creates_missing_folders(tmp_path):
    Image.fromarray(np.zeros((1200, 900, 3), np.uint8)).save(tmp_path / "scene.png")
    overlay = tmp_path / "out" / "x.png"
    result = CliRunner().invoke(
        app, ["pyramid", str(tmp_path / "scene.png"), "--overlay", str(overlay)]
    )
    assert result.exit_code == 0, result.output
    assert overlay.is_file()
