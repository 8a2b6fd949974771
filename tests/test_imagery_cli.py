from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.app.imagery_demo import run_pyramid_demo
from lrsvqa.imagery.texture import render_texture
from lrsvqa.imagery.writer import write_pyramidal_tiff


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "scene.tif"
    return write_pyramidal_tiff(path, 2100, 3000, render_texture)


def test_pyramid_prints_levels_and_writes_overlay(scene: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["pyramid", str(scene), "--overlay", str(overlay)])
    assert result.exit_code == 0, result.output
    # 2100 x 3000 under the official DIP rule: a first level with a 1,008 px long side,
    # 706 x 1008 (factor 3000 / 1008 = 2.976, 3 x 3 tiles, r = 1), then 1050 x 1500 (4 x 5,
    # r = 1680 / 1500) and 2100 x 3000 (7 x 9, r = 3024 / 3000).
    expected = ["2.976", "706x1008", "3x3", "1050x1500", "4x5", "20", "2100x3000", "7x9", "63"]
    for text in [*expected, "1.0000", "1.1200", "1.0080"]:
        assert text in result.output
    with Image.open(overlay) as image:
        assert image.format == "PNG" and image.width > 3 * image.height > 0
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 200) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)
    assert red.any(), "the tile grid must be drawn"


def test_pyramid_reports_bad_files_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "notes.tif").write_text("not an image")
    result = CliRunner().invoke(app, ["pyramid", str(tmp_path / "notes.tif")])
    assert result.exit_code == 2
    # Whitespace normalised: the console wraps the long temporary path at any space.
    assert "notes.tif: not a supported image" in " ".join(result.output.split())


def test_pyramid_pixel_limit_switch(scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lrsvqa.imagery.reader.DEFAULT_MAX_PIXELS", 1000)
    refused = CliRunner().invoke(app, ["pyramid", str(scene)])
    allowed = CliRunner().invoke(app, ["pyramid", str(scene), "--no-pixel-limit"])
    assert refused.exit_code == 2 and "decompression-bomb" in " ".join(refused.output.split())
    assert allowed.exit_code == 0


def test_demo_writes_scene_and_overlay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_pyramid_demo(tmp_path)
    printed = capsys.readouterr().out
    assert "4000x6000" in printed and "12x18" in printed
    scene = tmp_path / "demo_scene_6000x4000.tif"
    written = scene.stat().st_mtime_ns
    assert (tmp_path / "pyramid_overlay.png").stat().st_size > 10_000
    run_pyramid_demo(tmp_path)
    assert scene.stat().st_mtime_ns == written, "the cached scene must be reused"
