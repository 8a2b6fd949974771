import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.cli import app
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
    assert missing.exit_code != 0
    assert "nope.tif" in str(missing.exception) or "nope.tif" in missing.output
    wrong = CliRunner().invoke(
        app, ["ask", str(root / "scene.png"), "q", "--model", str(tmp_path / "no-model")]
    )
    assert wrong.exit_code != 0
    assert "cannot load a LLaVA model" in str(wrong.exception) + wrong.output
