import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from tests.tiny_models import WORDS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ask")
    model, processor = build_tiny_llava(WORDS)
    model_dir = save_tiny_llava(model, processor, root / "model")
    RegionFocusModule.from_llm(LlavaAdapter(model, processor), [0, 2, 4]).save(root / "rfm")
    pixels = np.random.default_rng(0).integers(0, 256, (2100, 1500, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "scene.png")
    return root, model_dir


def test_ask_prints_answer_trace_and_writes_overlay(files):
    root, model_dir = files
    overlay = root / "overlay.png"
    result = CliRunner().invoke(
        app,
        [
            "ask",
            str(root / "scene.png"),
            "what color is the ship?",
            "--model",
            str(model_dir),
            "--rfm",
            str(root / "rfm"),
            "--max-new-tokens",
            "3",
            "--overlay",
            str(overlay),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "A:" in result.output and "coarse-to-fine trace" in result.output
    assert "descend" in result.output  # 2100 px: two DIP levels
    with Image.open(overlay) as picture:
        assert picture.size[0] > 200


def test_ask_json_training_free(files):
    root, model_dir = files
    result = CliRunner().invoke(
        app,
        [
            "ask",
            str(root / "scene.png"),
            "how many ships are there?",
            "--model",
            str(model_dir),
            "--rfm-layers",
            "0,3",
            "--alpha",
            "0.5",
            "--fixed-layers",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    trace = json.loads(result.stdout.strip().splitlines()[-1])
    assert trace["final_level"] == 1 and len(trace["levels"]) == 1
    assert trace["retained_tokens"] == trace["levels"][0]["tokens_encoded"] // 2


def test_ask_reports_bad_inputs_clearly(files, tmp_path):
    root, model_dir = files
    missing = CliRunner().invoke(
        app, ["ask", str(tmp_path / "nope.tif"), "q", "--model", str(model_dir)]
    )
    assert missing.exit_code == 2
    assert missing.stderr == f"error: {tmp_path / 'nope.tif'}: no such file\n"
    wrong = CliRunner().invoke(
        app, ["ask", str(root / "scene.png"), "q", "--model", str(tmp_path / "no-model")]
    )
    assert wrong.exit_code == 2
    assert wrong.stderr == f"error: {tmp_path / 'no-model'}: no such folder\n"


def test_ask_geojson_in_the_image_crs(files, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    from lrsvqa.imagery.pyramid import build_pyramid

    root, model_dir = files
    transform = Affine(0.5, 0.0, 330_000.0, 0.0, -0.5, 5_600_000.0)
    pixels = np.asarray(Image.open(root / "scene.png"))
    path = tmp_path / "geo.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=1500, height=2100, count=3, dtype="uint8",
        crs="EPSG:32631", transform=transform, photometric="RGB", tiled=True,
    ) as ds:  # fmt: skip
        ds.write(np.moveaxis(pixels, -1, 0))
    out = tmp_path / "where.geojson"
    result = CliRunner().invoke(
        app,
        ["ask", str(path), "what color is the ship?", "--model", str(model_dir),
         "--rfm", str(root / "rfm"), "--max-new-tokens", "2", "--json", "--geojson", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    trace = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("{")))
    assert trace["image"]["georeference"]["epsg"] == 32631
    collection = json.loads(out.read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32631"
    geometry = build_pyramid(2100, 1500)
    tiles = [f for f in collection["features"] if f["properties"]["kind"] == "tile"]
    tokens = [f for f in collection["features"] if f["properties"]["kind"] == "token"]
    assert len(tiles) == sum(len(level["tiles_encoded"]) for level in trace["levels"])
    assert len(tokens) == trace["retained_tokens"]
    for feature in tiles:
        p = feature["properties"]
        x0, y0, x1, y1 = geometry.levels[p["level"] - 1].tile_image_box(p["row"], p["col"])
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == pytest.approx(list(transform @ (x0, y0)))
        assert ring[2] == pytest.approx(list(transform @ (x1, y1)))
        assert 0.0 <= p["score"] <= 1.0
    for level in {f["properties"]["level"] for f in tiles}:
        total = sum(f["properties"]["score"] for f in tiles if f["properties"]["level"] == level)
        assert total == pytest.approx(1.0, abs=1e-4)
    # Map coordinates lie inside the image footprint.
    xs = [x for f in collection["features"] for x, _ in f["geometry"]["coordinates"][0]]
    assert min(xs) >= 330_000.0 - 1e-6 and max(xs) <= 330_000.0 + 750.0 + 1e-6


def test_ask_with_pooled_tiles_and_no_newlines(files):
    root, model_dir = files
    overlay = root / "pooled.png"
    args = ["ask", str(root / "scene.png"), "what?", "--model", str(model_dir)]
    options = ["--hr-pool", "2", "--no-newline", "--fixed-layers", "2", "--json"]
    result = CliRunner().invoke(app, [*args, *options, "--overlay", str(overlay)])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("{")]
    trace = json.loads(line)
    level = trace["levels"][0]
    # 8 x 8 encoder tokens per tile pooled to 4 x 4; the thumbnail stays at 64; no row ends.
    assert level["tokens_encoded"] == 16 * len(level["tiles_encoded"])
    assert trace["vision_tokens_encoded"] == 64 * (1 + len(level["tiles_encoded"]))
    assert trace["vision_tokens_to_llm"] == 64 + trace["retained_tokens"]
    assert overlay.is_file()
    bad = CliRunner().invoke(app, [*args, "--hr-pool", "0"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    mode = CliRunner().invoke(app, [*args, "--hr-pool-mode", "nearest"])
    assert mode.exit_code != 0 and "bilinear, average, max" in mode.output


def test_cli_module_imports_no_torch():
    code = "import sys, lrsvqa.app.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
