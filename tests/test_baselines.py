import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaNextImageProcessor, LlavaNextProcessor

from lrsvqa.bench.runner import summarize_trace
from lrsvqa.budgets import pdrop_layers, vision_tokens_per_layer, visionzip_split
from lrsvqa.flops import ModelDims, TokenCount
from lrsvqa.imagery.anyres import AnyresGeometry, grid_pinpoints, select_best_resolution
from lrsvqa.models.attention import layer_attention_rows
from lrsvqa.models.tiny import CHAT_TEMPLATE, build_tiny_llava, save_tiny_llava
from lrsvqa.models.vision_attention import _encoder_parts, encode_with_cls_attention
from lrsvqa.strategies.base import Strategy
from lrsvqa.strategies.builtin import (
    AnyresImage,
    AnyresStrategy,
    CoarseToFineStrategy,
    anyres_sequence,
    shared_adapter,
)
from lrsvqa.strategies.c2f import CoarseToFineResult, LevelTrace
from lrsvqa.strategies.counters import c2f_tiles_from_trace
from lrsvqa.strategies.llm_drop import StagedDecoder
from lrsvqa.strategies.prumerge import iqr_outliers, merge_neighbours, prumerge_crops, select_tokens
from lrsvqa.strategies.registry import build_strategy, count_strategy
from lrsvqa.strategies.visionzip import visionzip_crops
from tests.tiny_models import (
    WORDS,
    builtin_strategies,
    random_image,
    tiny_adapter,
    vanilla_generate,
)

QUESTION = "what color is the ship ?"
IMAGE_SIZE = (500, 800)


def sharpen(adapter, seed=1):
    """Large LLM weights, so greedy answers depend on the input (random tiny models
    otherwise repeat one token whatever they see)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in adapter.language_model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
        adapter.model.lm_head.weight.normal_(0, 0.3)
    return adapter


def anyres_processor(adapter, max_tiles):
    pins = [list(p) for p in grid_pinpoints(max_tiles, adapter.tile_size)]
    b = adapter.tile_size
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            image_grid_pinpoints=pins,
            size={"shortest_edge": b},
            crop_size={"height": b, "width": b},
        ),
        tokenizer=adapter.tokenizer,
        patch_size=b // adapter.tokens_per_side,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; busy shared cores make thread hand-offs slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter()


@pytest.fixture(scope="module")
def sharp():
    return sharpen(tiny_adapter(seed=3))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, processor = build_tiny_llava(WORDS)
    return save_tiny_llava(model, processor, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(random_image(*IMAGE_SIZE, seed=5)).save(path)
    return path


# ---------------------------------------------------------------------- anyres
@pytest.mark.parametrize("max_tiles", [4, 9, 25, 144])
def test_anyres_token_count_equals_hf_processor(adapter, max_tiles):
    processor = anyres_processor(adapter, max_tiles)
    for height, width in [(500, 900), (1000, 700), (2100, 300), (336, 336), (1500, 1500)]:
        inputs = processor(
            images=Image.fromarray(random_image(height, width)), text="<image>", return_tensors="pt"
        )
        expected = int((inputs.input_ids == adapter.config.image_token_id).sum())
        geometry = AnyresGeometry.for_image(height, width, max_tiles, adapter.tile_size)
        assert geometry.vision_tokens(adapter.tokens_per_side, True) == expected
        assert geometry.num_tiles <= max_tiles
        assert inputs.pixel_values.shape[1] == 1 + geometry.num_tiles


def test_best_resolution_rule():
    pins = grid_pinpoints(144, 336)
    assert select_best_resolution(4000, 4000, pins) == (4032, 4032)
    assert select_best_resolution(300, 300, pins) == (336, 336)  # no upscaling gain
    assert select_best_resolution(336, 700, grid_pinpoints(4, 336)) == (336, 1008)
    assert max(r * c for r, c in [(h // 336, w // 336) for h, w in pins]) == 144


def test_anyres_layout_equals_llava_next_packing(adapter, monkeypatch):
    pins = grid_pinpoints(9, adapter.tile_size)
    monkeypatch.setattr(adapter.model.config, "image_grid_pinpoints", [list(p) for p in pins])
    for height, width in [(500, 1100), (1300, 400)]:
        inputs = anyres_processor(adapter, 9)(
            images=Image.fromarray(random_image(height, width)), text="<image>", return_tensors="pt"
        )
        with torch.no_grad():
            expected = adapter.model.model.get_image_features(
                inputs.pixel_values, inputs.image_sizes
            ).pooler_output[0]
        geometry = AnyresGeometry.for_image(height, width, 9, adapter.tile_size)
        pixels = inputs.pixel_values[0, : 1 + geometry.num_tiles]
        monkeypatch.setattr(
            adapter, "encode_tiles", lambda tiles, p=pixels: adapter.encode_pixels(p)
        )
        image = AnyresImage(geometry, np.zeros(0), [np.zeros(0)] * geometry.num_tiles)
        with torch.no_grad():
            torch.testing.assert_close(anyres_sequence(adapter, image), expected)


def test_anyres_answer_equals_vanilla_generation(sharp, image_path, monkeypatch):
    pins = grid_pinpoints(9, sharp.tile_size)
    monkeypatch.setattr(sharp.model.config, "image_grid_pinpoints", [list(p) for p in pins])
    strategy = AnyresStrategy("anyres-p9", sharp, 8, 9)
    prepared = strategy.prepare(image_path)
    result = strategy.answer(prepared, QUESTION)

    processor = anyres_processor(sharp, 9)
    pixel_values = sharp.pixel_values([prepared.base, *prepared.tiles])[None]
    vanilla, prompt_length = vanilla_generate(
        sharp.model, processor, Image.open(image_path), QUESTION, pixel_values, max_new_tokens=8
    )
    assert result.answer == vanilla and len(set(vanilla.split())) > 1
    assert result.tokens_to_llm == prompt_length
    assert prepared.geometry.grid == (2, 3)


# ---------------------------------------------------------------------- vision attention
def test_cls_attention_equals_eager_attention_weights(adapter):
    pixels = torch.randn(3, 3, adapter.tile_size, adapter.tile_size)
    encoded = encode_with_cls_attention(adapter, pixels, batch_size=2)
    tower = adapter.model.model.vision_tower
    _, index = _encoder_parts(adapter)
    previous = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            eager = tower(pixels, output_attentions=True).attentions[index - 1]
    finally:
        tower.config._attn_implementation = previous
    torch.testing.assert_close(encoded.cls_attention, eager.mean(dim=1)[:, 0, 1:])
    with torch.no_grad():
        projected = adapter.model.model.multi_modal_projector(encoded.features)
    torch.testing.assert_close(projected, adapter.encode_pixels(pixels))


# ---------------------------------------------------------------------- VisionZip
def test_visionzip_keeps_dominant_and_merges_the_rest():
    assert visionzip_split(64, 576) == (54, 10)
    assert visionzip_split(64, 64) == (64, 0)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 5, generator=generator)
    attention = torch.rand(2, 16, generator=generator)
    keys = torch.randn(2, 16, 3, generator=generator)
    out = visionzip_crops(features, attention, keys, retained=6)  # 5 dominant + 1 contextual
    assert out.shape == (2, 6, 5)
    for crop in range(2):  # every crop reduced on its own
        top = torch.sort(torch.argsort(-attention[crop])[:5]).values
        torch.testing.assert_close(out[crop, :5], features[crop, top])
        rest = torch.ones(16, dtype=torch.bool)
        rest[top] = False
        torch.testing.assert_close(out[crop, 5], features[crop, rest].mean(dim=0))


def test_visionzip_assigns_by_key_similarity():
    assert visionzip_split(16, 40) == (14, 2)
    attention = torch.cat([torch.linspace(1.0, 0.5, 14), torch.full((26,), 0.1)])
    # Remaining tokens 14..39: targets 14 and 27 (step 13); even keys east, odd north.
    keys = torch.tensor([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(40)])
    features = torch.arange(40.0)[:, None]
    out = visionzip_crops(features[None], attention[None], keys[None], retained=16)[0]
    assert out[:14, 0].tolist() == list(range(14))
    assert out[14, 0].item() == pytest.approx(np.mean(range(14, 40, 2)))
    assert out[15, 0].item() == pytest.approx(np.mean(range(15, 40, 2)))


# ---------------------------------------------------------------------- PruMerge+
def test_prumerge_iqr_outliers_and_spatial_fill():
    attention = torch.linspace(0.0, 1.0, 64)  # Q1 0.25, Q3 0.75: fence near 1.5
    attention[[5, 40, 63]] = torch.tensor([3.0, 2.5, 2.0])
    assert iqr_outliers(attention).tolist() == [5, 40, 63]
    kept = select_tokens(attention, 16)
    assert len(kept) == 16 and {5, 40, 63} <= set(kept.tolist())
    assert torch.equal(kept, torch.sort(kept).values)
    rest = [i for i in kept.tolist() if i not in (5, 40, 63)]
    assert max(np.diff(rest)) <= 2 * math.ceil(61 / 13)  # spread over the crop
    assert select_tokens(attention, 2).tolist() == [5, 40]  # too many outliers: most attended


def test_prumerge_budget_and_merge_weights():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 64, 4, generator=generator)
    attention = torch.rand(2, 64, generator=generator)
    keys = torch.randn(2, 64, 3, generator=generator)
    assert prumerge_crops(features, attention, keys).shape == (2, 16, 4)
    assert prumerge_crops(features, attention, keys, ratio=0.1).shape == (2, 7, 4)
    kept = torch.stack([select_tokens(row, 16) for row in attention])
    unmerged = merge_neighbours(features, attention, keys, kept, 0)
    torch.testing.assert_close(unmerged[1], features[1, kept[1]])
    for k in (3, 48):  # 48 = every pruned token
        merged = merge_neighbours(features, attention, keys, kept, k)
        for crop in range(2):
            i = int(kept[crop, 2])
            pruned = torch.ones(64, dtype=torch.bool)
            pruned[kept[crop]] = False
            candidates = torch.nonzero(pruned).flatten()
            unit = torch.nn.functional.normalize(keys[crop], dim=-1)
            similarity = unit[candidates] @ unit[i]
            nearest = candidates[torch.argsort(-similarity)[:k]]
            members = torch.cat([torch.tensor([i]), nearest])
            weights = attention[crop, members]
            expected = (weights[:, None] * features[crop, members]).sum(0) / weights.sum()
            torch.testing.assert_close(merged[crop, 2], expected)


# ---------------------------------------------------------------------- FastV / PDrop
def test_pdrop_layers_scale_with_depth():
    assert pdrop_layers(28) == (7, 14, 21)
    assert pdrop_layers(32) == (8, 16, 24)
    assert pdrop_layers(6) == (1, 3, 4)
    assert vision_tokens_per_layer(101, 4, {2: 0.5}) == [101, 101, 51, 51]


def _embeds(adapter, seed=0):
    tiles = [random_image(adapter.tile_size, adapter.tile_size, seed + i) for i in range(3)]
    vision = adapter.encode_tiles(tiles).reshape(-1, adapter.hidden_size)
    with torch.no_grad():
        return adapter.assemble(adapter.prompt_parts(QUESTION), vision)


@pytest.mark.parametrize(("drops", "seed"), [({2: 0.0}, 0), ({1: 0.0, 3: 0.0, 4: 0.0}, 7)])
def test_llm_drops_with_ratio_zero_equal_vanilla_generation(sharp, drops, seed):
    embeds, vision = _embeds(sharp, seed)
    vanilla = sharp.generate(embeds, 8)
    assert len(set(vanilla.split())) > 1
    generation = StagedDecoder(sharp).generate(embeds, vision, drops, 8)
    assert generation.answer == vanilla
    assert generation.vision_tokens_per_layer == [vision.stop - vision.start] * 6


def test_fastv_drops_the_least_attended_half_after_layer_two(sharp):
    embeds, vision = _embeds(sharp)
    n_vision = vision.stop - vision.start
    generation = StagedDecoder(sharp).generate(embeds, vision, {2: 0.5}, 4)
    assert generation.vision_tokens_per_layer == [n_vision] * 2 + [n_vision // 2] * 4
    text = embeds.shape[1] - n_vision
    assert generation.tokens_per_layer == [t + text for t in generation.vision_tokens_per_layer]
    # Reference: layer 1's input from the stock model, its last-token attention row.
    with torch.no_grad():
        states = sharp.language_model(inputs_embeds=embeds, output_hidden_states=True)
        positions = torch.arange(embeds.shape[1])[None]
        rotary = sharp.language_model.rotary_emb(embeds, positions)
        rows = layer_attention_rows(
            sharp.decoder_layers[1],
            states.hidden_states[1],
            torch.tensor([[embeds.shape[1] - 1]]),
            rotary,
        )
    scores = rows[0, :, 0, vision].mean(dim=0)
    top = torch.argsort(-scores, stable=True)[: n_vision // 2] + vision.start
    assert generation.kept_positions == sorted(top.tolist())


def test_pdrop_stages_halve_each_time(sharp):
    embeds, vision = _embeds(sharp)
    n = vision.stop - vision.start
    drops = dict.fromkeys(pdrop_layers(6), 0.5)
    generation = StagedDecoder(sharp).generate(embeds, vision, drops, 3)
    assert generation.vision_tokens_per_layer == vision_tokens_per_layer(n, 6, drops)
    assert generation.vision_tokens_per_layer == [n, n // 2, n // 2, n // 4, n // 8, n // 8]
    with pytest.raises(ValueError):
        StagedDecoder(sharp).generate(embeds, vision, {0: 0.5}, 3)


# ---------------------------------------------------------------------- registry
def test_every_registered_strategy_answers_through_the_interface(model_dir, image_path):
    options = {
        "visionzip": {"retained": 16},
        "c2f": {"alpha": 0.25},
        "c2f-nodip": {"grid_tiles": 4},
    }
    adapter = shared_adapter(model_dir)
    # native is a Qwen-VL model's own resolution (tests/test_qwen_strategies.py).
    for name in [n for n in builtin_strategies() if n != "native"]:
        own = options.get(name, {})
        strategy = build_strategy(name, model_path=str(model_dir), max_new_tokens=3, **own)
        assert isinstance(strategy, Strategy) and strategy.name == name
        assert strategy.adapter is adapter  # one model shared by every strategy
        result = strategy.answer(strategy.prepare(image_path), QUESTION)
        assert isinstance(result.answer, str) and result.tflops > 0
        assert result.tokens_to_llm > result.vision_tokens_to_llm > 0
        if name.startswith("c2f"):
            assert result.selected_boxes and result.trace["tiles_per_level"]
            assert summarize_trace(result.trace) == result.trace
            if name == "c2f-nodip":  # one 2 x 2 grid: thumbnail + 4 tiles + 16 newlines
                expected = count_strategy(name, strategy.dims, *IMAGE_SIZE, **own)
                assert result.trace["rfm_vision_tokens"] == [64 + 4 * 64 + 16]
                assert list(expected.rfm_vision_tokens) == result.trace["rfm_vision_tokens"]
                assert 64 + 64 < result.vision_tokens_to_llm <= 64 + 64 + 16
            continue
        expected = count_strategy(name, strategy.dims, *IMAGE_SIZE, **own)  # the same options
        assert result.vision_tokens_to_llm == expected.tokens_to_llm, name
        assert result.vision_tokens_encoded == expected.vision_tokens_encoded, name
        assert result.tflops == pytest.approx(expected.tflops(strategy.dims)), name


def test_a_pooled_model_feeds_every_baseline_what_flops_counts(tmp_path, image_path):
    # A checkpoint whose config pools tiles as the authors' LLaVA-NeXT does (8 x 8 -> 4 x 4).
    model, processor = build_tiny_llava(WORDS)
    model.config.mm_spatial_pool_stride = 2
    model_dir = save_tiny_llava(model, processor, tmp_path / "pooled")
    assert json.loads((model_dir / "config.json").read_text())["mm_spatial_pool_stride"] == 2
    adapter = shared_adapter(model_dir)
    assert (adapter.tokens_per_side, adapter.thumbnail_tokens) == (4, 64)
    dims = ModelDims(64, 128, 6, patch_size=42, hr_pool=2)  # independent of the strategies
    for name in [n for n in builtin_strategies() if not n.startswith("c2f") and n != "native"]:
        extra = {"retained": 7} if name == "visionzip" else {}
        if name in ("visionzip", "prumerge++", "fastv", "pdrop"):
            extra["grid_tiles"] = 9
        strategy = build_strategy(name, model_path=str(model_dir), max_new_tokens=1, **extra)
        result = strategy.answer(strategy.prepare(image_path), QUESTION)
        expected = count_strategy(name, dims, *IMAGE_SIZE, **extra)
        assert result.vision_tokens_to_llm == expected.tokens_to_llm, name
        assert result.vision_tokens_encoded == expected.vision_tokens_encoded, name
        assert result.tflops == pytest.approx(expected.tflops(dims)), name


def test_hr_pool_and_newline_options_pool_an_unpooled_checkpoint(model_dir, image_path):
    plain = shared_adapter(model_dir)
    options = {"model_path": str(model_dir), "max_new_tokens": 1, "hr_pool": 2, "newline": False}
    dims = ModelDims(64, 128, 6, patch_size=42, hr_pool=2, image_newline=False)
    anyres = build_strategy("anyres-p9", **options)
    assert anyres.adapter is build_strategy("fastv", **options).adapter  # one shared view
    assert anyres.adapter.model is plain.model and plain.tokens_per_side == 8
    result = anyres.answer(anyres.prepare(image_path), QUESTION)
    assert (
        result.vision_tokens_to_llm == count_strategy("anyres-p9", dims, *IMAGE_SIZE).tokens_to_llm
    )
    nodip = build_strategy("c2f-nodip", grid_tiles=4, **options)
    result = nodip.answer(nodip.prepare(image_path), QUESTION)
    expected = count_strategy("c2f-nodip", dims, *IMAGE_SIZE, grid_tiles=4)
    assert result.trace["rfm_vision_tokens"] == list(expected.rfm_vision_tokens) == [64 + 4 * 16]
    assert result.vision_tokens_to_llm == expected.tokens_to_llm == 64 + 16
    with pytest.raises(ValueError, match="newline"):
        build_strategy("anyres-p9", model_path=str(model_dir), newline="maybe")


def test_deep_c2f_trace_survives_the_answers_file():
    levels = [
        LevelTrace(
            level=i + 1,
            downsample=2 ** (5 - i),
            grid=(3 * 2**i, 3 * 2**i),
            tiles_available=9 * 4**i,
            tiles_encoded=[(r, c) for r in range(8) for c in range(10)],
            tokens_encoded=80 * 576,
            tokens_kept=20 * 576,
            decision="prune (next level needs 12345 > N_max tiles)",
            tile_boxes=[(0.0, 0.0, 1.0, 1.0)] * 80,
        )
        for i in range(6)
    ]
    result = CoarseToFineResult("a", levels, 576, 11520, 12384, 12400, 276480, 6, [])
    count = TokenCount("c2f", 276480, (12384,), (47000,) * 6)
    trace = CoarseToFineStrategy.trace(result, count)
    assert summarize_trace(trace) == trace  # nothing summarised away by the runner
    record = json.dumps({"trace": summarize_trace(trace)})
    assert c2f_tiles_from_trace([record]) == (80.0,) * 5  # per level below the first


def test_reduction_baselines_keep_their_budget(model_dir, image_path):
    tokens = shared_adapter(model_dir).tokens_per_tile
    geometry = AnyresGeometry.for_image(*IMAGE_SIZE, 144, 336)
    crops = 1 + geometry.num_tiles
    cases = {
        ("visionzip", 16): crops * 16,
        ("visionzip", 5): crops * 5,
        ("prumerge++", None): crops * math.ceil(0.25 * tokens),
    }
    for (name, retained), expected in cases.items():
        extra = {"retained": retained} if retained else {}
        strategy = build_strategy(name, model_path=str(model_dir), max_new_tokens=1, **extra)
        result = strategy.answer(strategy.prepare(image_path), QUESTION)
        assert result.vision_tokens_to_llm == expected
        assert result.trace["crops"] == crops


def test_factories_reject_unknown_options(model_dir):
    with pytest.raises(ValueError, match="no option 'alpha'"):
        build_strategy("fastv", model_path=str(model_dir), alpha=0.3)
    with pytest.raises(ValueError, match="no option 'model'"):  # no aliases: model_path
        build_strategy("fastv", model=str(model_dir))
    with pytest.raises(ValueError, match="model path"):
        build_strategy("anyres-p4")
    fastv = build_strategy("fastv", model_path=str(model_dir), layer="3", ratio="0.25")
    assert fastv.drops == {3: 0.25}
    assert build_strategy("pdrop", model_path=str(model_dir)).drops == dict.fromkeys((1, 3, 4), 0.5)
