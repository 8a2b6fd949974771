"""The default-model recipe on a tiny Qwen2-VL: build, hashes, load, coarse-to-fine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.app.default_model import QWEN2_VL, DefaultModelConfig
from lrsvqa.app.shipped import SHIPPED_DIR, SMOKE_RECIPE, read_manifest, shipped_default
from lrsvqa.imagery.pyramid import DEFAULT_TILE_SIZE

QWEN_SMOKE = replace(SMOKE_RECIPE, architecture=QWEN2_VL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """``lrsvqa build-default --smoke --architecture qwen2-vl --out DIR``."""
    out = tmp_path_factory.mktemp("qwen-default")
    result = CliRunner().invoke(
        app, ["build-default", "--smoke", "--architecture", QWEN2_VL, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_the_architecture_changes_the_model_hash_but_not_the_llava_one() -> None:
    llava, qwen = DefaultModelConfig(), DefaultModelConfig(architecture=QWEN2_VL)
    manifest = read_manifest(SHIPPED_DIR)
    assert (llava.sft_key(), llava.distill_key()) == (manifest["sft_key"], manifest["distill_key"])
    assert "architecture" not in llava.recipe() and qwen.recipe()["architecture"] == QWEN2_VL
    assert qwen.sft_key() != llava.sft_key() and qwen.distill_key() == llava.distill_key()
    with pytest.raises(ValueError, match="unknown architecture"):
        DefaultModelConfig(architecture="llava-1.5")


def test_an_unknown_architecture_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["build-default", "--smoke", "--architecture", "vit", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown architecture" in result.output


def test_the_qwen_build_loads_with_the_qwen_adapter_and_answers_with_c2f(exported: Path) -> None:
    from lrsvqa.app.inference import ask, load_model
    from lrsvqa.models.qwen_adapter import QwenVLAdapter
    from lrsvqa.strategies.c2f import CoarseToFineConfig

    manifest = read_manifest(exported)
    assert manifest["sft_key"] == QWEN_SMOKE.sft_key() != SMOKE_RECIPE.sft_key()
    assert manifest["recipe"]["architecture"] == QWEN2_VL
    trained = shipped_default(QWEN_SMOKE, root=exported)
    loaded = load_model(trained.model_dir, trained.rfm_dir)
    adapter = loaded.adapter
    assert isinstance(adapter, QwenVLAdapter) and adapter.uses_mrope
    # The tiles it was trained on (recorded in its config): 8 x 8 tokens of 42 px.
    assert (adapter.tile_size, adapter.tokens_per_side) == (DEFAULT_TILE_SIZE, 8)
    assert adapter.config.text_config.hidden_size == QWEN_SMOKE.hidden_size
    assert loaded.rfm.rfm_config.layer_indices == list(QWEN_SMOKE.rfm_layers)
    (scene,) = sorted((exported / "build").glob("default-*/world/train/images/*.tif"))[:1]
    result, reader = ask(loaded, scene, "What is the color of the ship?", CoarseToFineConfig())
    reader.close()
    assert isinstance(result.answer, str)
    assert result.trace_dict()["levels"][0]["level"] == 1
