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
    assert_valid_geojson(collection)
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


def assert_valid_geojson(collection: dict) -> None:
    """The structure RFC 7946 requires of a FeatureCollection of polygons."""
    json.dumps(collection, allow_nan=False)  # no NaN or Infinity: not JSON
    assert collection["type"] == "FeatureCollection" and collection["features"]
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and isinstance(feature["properties"], dict)
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        for ring in geometry["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1], ring  # a closed linear ring
            assert all(len(p) == 2 and all(isinstance(v, float | int) for v in p) for p in ring)
        exterior = geometry["coordinates"][0]
        signed_area = sum(
            x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(exterior, exterior[1:], strict=False)
        )
        # Counter-clockwise exterior on a north-up map; y grows down in pixel coordinates.
        pixel = collection.get("coordinates") == "pixel"
        assert (signed_area < 0) if pixel else (signed_area > 0), signed_area


def test_ask_geojson_without_georeference_is_in_pixels(files, tmp_path):
    from lrsvqa.imagery.pyramid import build_pyramid

    root, model_dir = files
    out = tmp_path / "where.geojson"
    result = CliRunner().invoke(
        app,
        ["ask", str(root / "scene.png"), "what?", "--model", str(model_dir), "--rfm",
         str(root / "rfm"), "--max-new-tokens", "2", "--json", "--geojson", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    collection = json.loads(out.read_text())
    assert_valid_geojson(collection)
    assert collection["coordinates"] == "pixel" and "crs" not in collection
    geometry = build_pyramid(2100, 1500)
    for feature in collection["features"]:
        p = feature["properties"]
        if p["kind"] == "tile":
            x0, y0, x1, y1 = geometry.levels[p["level"] - 1].tile_image_box(p["row"], p["col"])
            ring = feature["geometry"]["coordinates"][0]
            assert ring[0] == pytest.approx([x0, y0]) and ring[2] == pytest.approx([x1, y1])


def test_ask_bands_count_from_one_and_unlabelled_bands_get_a_notice(files, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from tests.test_trust import one_line_error

    root, model_dir = files
    data = np.stack([np.full((700, 500), 40 * (b + 1), np.uint8) for b in range(4)])
    path = tmp_path / "bgrn.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=500, height=700, count=4, dtype="uint8",
        photometric="MINISBLACK",
    ) as ds:  # fmt: skip
        ds.write(data)
    args = ["ask", str(path), "what?", "--model", str(model_dir), "--max-new-tokens", "1"]
    plain = CliRunner().invoke(app, args, terminal_width=200)
    assert plain.exit_code == 0, plain.output
    assert "notice: showing bands 1, 2, 3 of 4" in plain.stdout
    chosen = CliRunner().invoke(app, [*args, "--bands", "4,3,2", "--json"])
    assert chosen.exit_code == 0, chosen.output
    trace = json.loads(next(x for x in chosen.stdout.splitlines() if x.startswith("{")))
    assert trace["image"]["bands"] == [4, 3, 2] and trace["image"]["band_notice"] is None
    bad = CliRunner().invoke(app, [*args, "--bands", "0,1,2"])
    one_line_error(bad, str(path), "bands [0] out of range", "count from 1")


def test_eval_strategies_read_the_bands_asked_for(files, tmp_path):
    from lrsvqa.imagery.tiles import PyramidReader
    from lrsvqa.strategies.registry import build_strategy, strategy_entry

    root, model_dir = files
    rgb = np.random.default_rng(1).integers(0, 256, (400, 300, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "small.png")
    for name in ("thumbnail", "c2f", "anyres-p4"):
        strategy = build_strategy(name, model_path=str(model_dir), bands="3")
        assert strategy.bands == (3,)
        prepared = strategy.prepare(tmp_path / "small.png")
        if name == "anyres-p4":
            view = prepared.base
        elif name == "c2f":
            view = prepared.thumbnail()
            prepared.close()
        else:
            view = prepared
        assert (view[..., 0] == view[..., 2]).all()  # band 3 shown as grey
    with PyramidReader.open(tmp_path / "small.png", bands=(3,)) as reader:
        grey = reader.thumbnail()
    thumbnail = build_strategy("thumbnail", model_path=str(model_dir), bands="3")
    np.testing.assert_array_equal(thumbnail.prepare(tmp_path / "small.png"), grey)
    model, _ = strategy_entry("c2f").parse({"bands": "4,3,2"})
    assert model.bands == (4, 3, 2)
    with pytest.raises(ValueError, match="counted from 1"):
        strategy_entry("c2f").parse({"bands": "0,1,2"})
    bad = CliRunner().invoke(
        app,
        ["eval", "--data-root", str(tmp_path), "--strategy", "c2f", "--bands", "0,1,2"],
    )
    assert bad.exit_code == 2 and "counted from 1" in bad.output


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
