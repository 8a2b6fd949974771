"""Strategies of the registry on a saved tiny Qwen-VL checkpoint, and their counts."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from lrsvqa.budgets import native_size
from lrsvqa.flops import ModelDims, load_model_dims
from lrsvqa.models.qwen_adapter import QwenVLAdapter
from lrsvqa.models.tiny_qwen import save_tiny_qwen_vl
from lrsvqa.strategies.builtin import model_dims, shared_adapter
from lrsvqa.strategies.registry import build_strategy, count_strategy
from tests.qwen_models import QWEN_KINDS, hf_generate, tiny_qwen_model
from tests.tiny_models import random_image

QUESTION = "what color is the ship?"


@pytest.fixture(scope="module", params=QWEN_KINDS)
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return save_tiny_qwen_vl(*tiny_qwen_model(request.param), folder / "model")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "scene.png"
    Image.fromarray(random_image(700, 900, seed=4)).save(path)
    return path


def _answer(name, checkpoint, image_path, **options):
    strategy = build_strategy(name, model_path=str(checkpoint), max_new_tokens=4, **options)
    return strategy.answer(strategy.prepare(image_path), QUESTION)


def test_the_shared_cache_picks_the_qwen_adapter_by_model_type(checkpoint):
    adapter = shared_adapter(checkpoint)
    assert isinstance(adapter, QwenVLAdapter)
    assert adapter.tile_size == 448 and adapter.tokens_per_side == 16


@pytest.mark.parametrize("name", ["c2f", "c2f-nodip", "fastv", "pdrop", "thumbnail", "anyres-p4"])
def test_strategies_run_and_count_what_the_model_saw(name, checkpoint, image_path):
    result = _answer(name, checkpoint, image_path)
    assert isinstance(result.answer, str) and result.tflops > 0
    assert result.vision_tokens_to_llm > 0 and result.vision_tokens_encoded % 256 == 0
    json.dumps(result.to_dict())


def test_fastv_without_a_cut_is_the_models_own_decoding(checkpoint, image_path):
    uncut = _answer("fastv", checkpoint, image_path, ratio=0.0, grid_tiles=4)
    anyres = _answer("anyres-p4", checkpoint, image_path)
    assert uncut.answer == anyres.answer
    assert uncut.vision_tokens_to_llm == anyres.vision_tokens_to_llm


def test_native_equals_hf_generate_and_the_adapter_on_one_tile(checkpoint, tmp_path):
    pixels = random_image(448, 448, seed=7)
    path = tmp_path / "tile.png"
    Image.fromarray(pixels).save(path)
    result = _answer("native", checkpoint, path, max_pixels=448 * 448)
    adapter = shared_adapter(checkpoint)
    reference, length, _ = hf_generate(adapter, pixels, QUESTION, max_new_tokens=4)
    assert result.answer == reference and result.tokens_to_llm == length
    assert result.vision_tokens_to_llm == 256
    count = count_strategy("native", model_dims(adapter), 448, 448, max_pixels=448 * 448)
    assert count.tokens_to_llm == 256


def test_native_budget_follows_qwens_resize_rule():
    for height, width, budget in [(27328, 600, 1003520), (4000, 4000, 200704), (90, 30, 3136)]:
        assert native_size(height, width, 28, 3136, budget) == smart_resize(
            height, width, 28, 3136, budget
        )
    dims = ModelDims(64, 128, 4, tile_size=448, patch_size=28, image_newline=False)
    large = count_strategy("native", dims, 4000, 4000, max_pixels=1280 * 28 * 28)
    small = count_strategy("native", dims, 4000, 4000, max_pixels=256 * 28 * 28)
    assert large.tokens_to_llm == 1225 and small.tokens_to_llm == 256


def test_native_is_refused_for_llava(tmp_path):
    from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
    from tests.tiny_models import WORDS

    folder = save_tiny_llava(*build_tiny_llava(WORDS), tmp_path / "llava")
    with pytest.raises(ValueError, match="native"):
        build_strategy("native", model_path=str(folder))


def test_cls_token_reductions_are_refused_for_qwen(checkpoint):
    for name in ("visionzip", "prumerge++"):
        with pytest.raises(ValueError, match="CLS"):
            build_strategy(name, model_path=str(checkpoint))


def test_flops_dims_of_a_qwen_checkpoint(checkpoint):
    dims = load_model_dims(checkpoint)
    assert dims == model_dims(shared_adapter(checkpoint))
    assert (dims.tile_size, dims.patch_size, dims.tokens_per_side) == (448, 28, 16)
    assert not dims.image_newline and dims.hr_pool == 1
    # A Qwen2-VL-7B style config with the text keys at the top level.
    flat = {
        "model_type": "qwen2_vl",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "vision_config": {"patch_size": 14, "spatial_merge_size": 2},
    }
    assert ModelDims.from_config(flat).num_layers == 28


def test_c2f_counts_the_rfm_per_level(checkpoint, image_path):
    result = _answer("c2f", checkpoint, image_path, alpha=0.5)
    trace = result.trace
    assert trace["thumbnail_tokens"] == 256
    assert trace["rfm_vision_tokens"][0] == 256 + trace["tokens_encoded_per_level"][0]
    assert np.isfinite(result.tflops)
