import math

import numpy as np
import pytest
import torch
from PIL import Image

from lrsvqa.imagery.pyramid import build_pyramid, grid_geometry
from lrsvqa.models.layout import layout_vision_tokens, tile_token_positions, top_alpha
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.strategies.c2f import (
    CoarseToFine,
    CoarseToFineConfig,
)
from tests.capturing import CapturingC2F
from tests.tiny_models import ArraySource, random_image, tiny_adapter, vanilla_generate


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter()


@pytest.fixture(scope="module")
def rfm(adapter):
    return RegionFocusModule.from_llm(adapter, training_free=True)


class PlantedC2F(CapturingC2F):
    """Replaces RFM scores with a peak on the tokens covering a ground point."""

    def __init__(self, *args, target, **kwargs):
        super().__init__(*args, **kwargs)
        self.target = target

    def score_level(self, embeds, vision_slice, hr_index, level_index, positions, *args):
        level = self.source_geometry.levels[level_index]
        g = self.adapter.tokens_per_side
        scores = torch.full((len(positions),), 1e-6)
        x, y = self.target
        for i, (row, col) in enumerate(positions):
            x0, y0, x1, y1 = level.token_image_box(row, col, g)
            if x0 <= x < x1 and y0 <= y < y1:
                scores[i] = 1.0
        return scores / scores.sum()

    def run(self, source, question):
        self.source_geometry = source.geometry
        return super().run(source, question)


def test_alpha_one_single_level_equals_vanilla_llava_next_generation(adapter, rfm):
    image = random_image(672, 672)
    source = ArraySource(image)
    assert source.geometry.num_levels == 1 and source.geometry.levels[0].grid == (2, 2)
    config = CoarseToFineConfig(alpha=1.0, max_new_tokens=8)
    result = CoarseToFine(adapter, rfm, config).run(source, "what color is the ship?")

    tiles = [source.thumbnail()] + [
        source.tile(0, r, c) for r, c in source.geometry.levels[0].tiles()
    ]
    vanilla, prompt_length = vanilla_generate(
        adapter.model,
        adapter.processor,
        Image.fromarray(image),
        "what color is the ship?",
        adapter.pixel_values(tiles)[None],
        max_new_tokens=8,
    )
    assert result.answer == vanilla
    assert result.sequence_length == prompt_length


def test_planted_peak_selects_covering_tiles(adapter, rfm):
    image = random_image(4000, 3000)
    source = ArraySource(image)
    target = (2500.0, 3300.0)
    c2f = PlantedC2F(adapter, rfm, CoarseToFineConfig(alpha=0.01), target=target)
    result = c2f.run(source, "what color is the ship?")
    assert [t.decision for t in result.levels] == ["descend", "descend", "prune"]
    for trace in result.levels:
        covered = any(
            x0 <= target[0] < x1 and y0 <= target[1] < y1 for x0, y0, x1, y1 in trace.tile_boxes
        )
        assert covered, f"level {trace.level} tiles miss the planted target"
    # Each descent asks only for the tiles under the few kept tokens.
    assert len(result.levels[1].tiles_encoded) <= 4
    assert len(result.levels[2].tiles_encoded) <= 4
    assert set(result.levels[1].tiles_encoded) == set(result.levels[0].next_tiles)
    assert result.selected_boxes == result.levels[-1].tile_boxes


def test_max_tiles_stops_and_prunes_at_current_level(adapter, rfm):
    source = ArraySource(random_image(2016, 2016))
    config = CoarseToFineConfig(alpha=0.5, max_tiles=2)
    c2f = CapturingC2F(adapter, rfm, config)
    result = c2f.run(source, "how many ships are there?")
    assert len(result.levels) == 1
    assert result.levels[0].decision.startswith("prune (next level needs")
    assert len(result.levels[0].next_tiles) > 2
    assert result.retained_tokens == math.ceil(0.5 * 9 * adapter.tokens_per_tile)
    assert set(source.requests) == {(0, r, c) for r in range(3) for c in range(3)}


def test_last_level_prunes(adapter, rfm):
    source = ArraySource(random_image(2016, 2016))
    result = CapturingC2F(adapter, rfm, CoarseToFineConfig(alpha=0.25)).run(source, "what is it?")
    assert [t.level for t in result.levels] == [1, 2]
    assert result.levels[-1].decision == "prune"
    assert result.final_level == 2
    encoded = result.levels[-1].tokens_encoded
    assert result.retained_tokens == math.ceil(0.25 * encoded)
    assert encoded == len(result.levels[-1].tiles_encoded) * adapter.tokens_per_tile


@pytest.mark.parametrize("size", [(100, 50), (1, 1), (336, 336)])
def test_images_smaller_than_a_tile(adapter, rfm, size):
    source = ArraySource(random_image(*size))
    result = CapturingC2F(adapter, rfm, CoarseToFineConfig()).run(source, "what is it?")
    assert len(result.levels) == 1 and result.levels[0].tiles_encoded == [(0, 0)]
    assert result.retained_tokens == math.ceil(0.25 * adapter.tokens_per_tile)


@pytest.mark.parametrize(("rule", "coarsest_grid"), [("official", (3, 1)), ("paper-text", (82, 2))])
def test_extreme_aspect_ratio(adapter, rfm, rule, coarsest_grid):
    image = random_image(27328, 600)
    source = ArraySource(image, build_pyramid(27328, 600, dip_rule=rule))
    result = CapturingC2F(adapter, rfm, CoarseToFineConfig(alpha=0.05)).run(source, "what?")
    # The official rule bounds the coarsest level of a strip (long side 1,008 px).
    assert result.levels[0].grid == coarsest_grid
    assert all(
        0 <= x0 < x1 <= 600 and 0 <= y0 < y1 <= 27328
        for level in result.levels
        for x0, y0, x1, y1 in level.tile_boxes
    )


def test_trace_counts_match_sequence_fed_to_llm(adapter, rfm):
    source = ArraySource(random_image(4000, 3000))
    c2f = CapturingC2F(adapter, rfm, CoarseToFineConfig(alpha=0.1))
    result = c2f.run(source, "what color is the ship?")
    prompt = adapter.prompt_parts("what color is the ship?")
    text_tokens = len(prompt.prefix_ids) + len(prompt.suffix_ids)
    rows_with_tokens = len({row for row, _ in result.retained_positions})
    assert c2f.fed.shape[1] == result.sequence_length
    assert result.vision_tokens_to_llm == (
        result.thumbnail_tokens + result.retained_tokens + rows_with_tokens
    )  # one image_newline per row
    assert result.sequence_length == result.vision_tokens_to_llm + text_tokens
    assert result.vision_tokens_encoded == result.thumbnail_tokens + sum(
        t.tokens_encoded for t in result.levels
    )
    assert result.retained_tokens == result.levels[-1].tokens_kept


def test_fixed_layers_forces_depth_and_clamps(adapter, rfm):
    source = ArraySource(random_image(4000, 3000))
    two = CapturingC2F(adapter, rfm, CoarseToFineConfig(fixed_layers=2)).run(source, "what?")
    assert two.final_level == 1
    forced = CoarseToFineConfig(alpha=0.5, max_tiles=1, fixed_layers=9)
    deep = CapturingC2F(adapter, rfm, forced).run(source, "what?")
    assert deep.final_level == source.geometry.num_levels == 3


def test_prune_without_dip_on_a_grid(adapter, rfm):
    image = random_image(1000, 1500)
    source = ArraySource(image, grid_geometry(1000, 1500, (2, 3)))
    result = CapturingC2F(adapter, rfm, CoarseToFineConfig(alpha=0.75)).run(source, "what?")
    assert len(result.levels) == 1 and result.levels[0].grid == (2, 3)
    assert result.retained_tokens == math.ceil(0.75 * 6 * adapter.tokens_per_tile)


def test_llava_1_5_and_qwen2_models_run():
    for kind, family in (("llava", "llama"), ("llava_next", "qwen2")):
        adapter = tiny_adapter(kind=kind, family=family)
        rfm = RegionFocusModule.from_llm(adapter, [0, 2])
        source = ArraySource(random_image(1200, 900))
        result = CapturingC2F(adapter, rfm, CoarseToFineConfig()).run(source, "what?")
        newline_rows = len({r for r, _ in result.retained_positions}) if kind == "llava_next" else 0
        assert result.vision_tokens_to_llm == (
            result.thumbnail_tokens + result.retained_tokens + newline_rows
        )


def test_helpers():
    positions = tile_token_positions([(1, 2)], 2)
    assert positions.tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]
    assert top_alpha(torch.tensor([0.1, 0.5, 0.2, 0.2]), 0.5).tolist() == [1, 2]
    assert top_alpha(torch.tensor([0.3, 0.7]), 0.01).tolist() == [1]
    tokens = torch.arange(4.0)[:, None]
    sequence, index, order = layout_vision_tokens(
        tokens,
        np.array([[1, 0], [0, 1], [0, 0], [1, 1]]),
        torch.full((1, 1), -1.0),
        torch.tensor([9.0]),
    )
    assert sequence[:, 0].tolist() == [-1, 2, 1, 9, 0, 3, 9]
    assert index.tolist() == [1, 2, 4, 5] and order.tolist() == [2, 1, 0, 3]
    with pytest.raises(ValueError):
        CoarseToFineConfig(alpha=0)
    assert build_pyramid(4000, 3000).num_levels == 3


def test_llava_onevision_with_siglip_runs_through_the_same_seams():
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        SiglipVisionConfig,
    )

    from lrsvqa.models.adapter import LlavaAdapter
    from lrsvqa.models.tiny import build_word_tokenizer, tiny_text_config

    tokenizer = build_word_tokenizer(["what", "color", "is", "the", "ship"])
    vision = SiglipVisionConfig(
        image_size=336,
        patch_size=42,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision.to_dict(),
        text_config=tiny_text_config(len(tokenizer), "qwen2"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",  # SigLIP has no [CLS] token to drop
    )
    adapter = LlavaAdapter(LlavaOnevisionForConditionalGeneration(config).eval(), tokenizer)
    assert adapter.tokens_per_tile == 64 and adapter.image_newline is not None
    rfm = RegionFocusModule.from_llm(adapter, [0, 2, 4], training_free=True)
    result = CapturingC2F(adapter, rfm, CoarseToFineConfig()).run(
        ArraySource(random_image(2100, 1500)), "what color is the ship?"
    )
    rows = len({row for row, _ in result.retained_positions})
    assert result.vision_tokens_to_llm == result.thumbnail_tokens + result.retained_tokens + rows
    assert result.levels[0].tokens_encoded == 64 * len(result.levels[0].tiles_encoded)


# ---------------------------------------------------------------- pooled high-res tiles
def _block_reduce(features: torch.Tensor, side: int, reduce) -> torch.Tensor:
    """2 x 2 blocks of a row-major (n, side * side, d) grid reduced to (n, (side/2)^2, d)."""
    n, _, d = features.shape
    blocks = features.reshape(n, side // 2, 2, side // 2, 2, d)
    return reduce(blocks).reshape(n, (side // 2) ** 2, d)


@pytest.mark.parametrize(
    ("mode", "reduce"),
    [
        # Halving bilinearly (no antialias) samples between two source tokens each way.
        ("bilinear", lambda b: b.mean(dim=(2, 4))),
        ("average", lambda b: b.mean(dim=(2, 4))),
        ("max", lambda b: b.amax(dim=(2, 4))),
    ],
)
def test_pooled_tiles_are_2x2_blocks_of_the_tile_grid(adapter, mode, reduce):
    pooled = adapter.with_options(hr_pool=2, pool_mode=mode)
    assert (pooled.tokens_per_side, pooled.tokens_per_tile, pooled.thumbnail_tokens) == (4, 16, 64)
    assert adapter.tokens_per_side == 8  # the view leaves the shared adapter alone
    features = adapter.encode_tiles([random_image(336, 336, s) for s in range(2)])
    expected = _block_reduce(features, 8, reduce)
    torch.testing.assert_close(pooled.pool_tiles(features), expected, rtol=1e-5, atol=1e-6)


def test_pooling_is_read_from_the_checkpoint_config():
    from lrsvqa.models.adapter import LlavaAdapter
    from lrsvqa.models.tiny import build_tiny_llava
    from tests.tiny_models import WORDS

    model, processor = build_tiny_llava(WORDS)
    assert LlavaAdapter(model, processor).options.hr_pool == 1
    model.config.mm_spatial_pool_stride = 2  # the authors' LLaVA-NeXT config keys
    model.config.mm_spatial_pool_mode = "average"
    loaded = LlavaAdapter(model, processor)
    assert (loaded.options.hr_pool, loaded.options.pool_mode, loaded.tokens_per_side) == (
        2,
        "average",
        4,
    )
    with pytest.raises(ValueError, match="unknown pool mode"):
        loaded.with_options(pool_mode="nearest")


def test_pooled_single_level_feeds_thumbnail_then_pooled_grid_without_newlines(adapter, rfm):
    pooled = adapter.with_options(hr_pool=2, newline=False)
    source = ArraySource(random_image(672, 672))
    c2f = CapturingC2F(pooled, rfm, CoarseToFineConfig(alpha=1.0, max_new_tokens=2))
    result = c2f.run(source, "what color is the ship?")
    tiles = source.geometry.levels[0].tiles()
    thumbnail = adapter.encode_tiles([source.thumbnail()])[0]
    encoded = adapter.encode_tiles([source.tile(0, r, c) for r, c in tiles])
    hr = _block_reduce(encoded, 8, lambda b: b.mean(dim=(2, 4)))
    # Raster order over the 8 x 8 pooled canvas of the 2 x 2 grid, no row ends.
    grid = hr.reshape(2, 2, 4, 4, -1).permute(0, 2, 1, 3, 4).reshape(64, -1)
    expected, _ = adapter.assemble(
        adapter.prompt_parts("what color is the ship?"), torch.cat([thumbnail, grid])
    )
    torch.testing.assert_close(c2f.fed, expected, rtol=1e-5, atol=1e-5)
    assert result.vision_tokens_encoded == 5 * 64 and result.vision_tokens_to_llm == 64 + 64


def test_pooled_c2f_descends_by_the_ground_a_pooled_token_covers(adapter, rfm):
    from lrsvqa.flops import ModelDims
    from lrsvqa.strategies.registry import count_strategy

    pooled = adapter.with_options(hr_pool=2, newline=False)
    source = ArraySource(random_image(4000, 3000))
    target = (2500.0, 3300.0)
    c2f = PlantedC2F(pooled, rfm, CoarseToFineConfig(alpha=0.01), target=target)
    result = c2f.run(source, "what color is the ship?")
    assert [t.decision for t in result.levels] == ["descend", "descend", "prune"]
    geometry = source.geometry
    for trace in result.levels:
        assert trace.tokens_encoded == 16 * len(trace.tiles_encoded)
        assert any(
            x0 <= target[0] < x1 and y0 <= target[1] < y1 for x0, y0, x1, y1 in trace.tile_boxes
        )
    assert result.retained_tokens == math.ceil(0.01 * result.levels[-1].tokens_encoded)
    assert result.vision_tokens_to_llm == 64 + result.retained_tokens
    assert result.vision_tokens_encoded == 64 * (
        1 + sum(len(t.tiles_encoded) for t in result.levels)
    )
    # The same counts as `lrsvqa flops` for the pooled architecture without newlines.
    dims = ModelDims(64, 128, 6, patch_size=42, hr_pool=2, image_newline=False)
    tiles = tuple(float(len(t.tiles_encoded)) for t in result.levels[1:])
    count = count_strategy("c2f", dims, 4000, 3000, tiles_per_level=tiles, alpha=0.01)
    assert count.vision_tokens_encoded == result.vision_tokens_encoded
    assert count.tokens_to_llm == result.vision_tokens_to_llm
    assert count.rfm_vision_tokens == tuple(64 + t.tokens_encoded for t in result.levels)
    assert geometry.num_levels == 3


def test_pooled_next_tiles_equal_those_of_the_unpooled_tokens_they_cover():
    geometry = build_pyramid(4000, 3000)
    pooled = [(1, 2), (5, 7), (11, 0)]
    unpooled = [(2 * r + dr, 2 * c + dc) for r, c in pooled for dr in (0, 1) for dc in (0, 1)]
    assert geometry.next_level_tiles(0, pooled, 12) == geometry.next_level_tiles(0, unpooled, 24)


def test_pooled_c2f_nodip_counts_match_flops(adapter, rfm):
    from lrsvqa.flops import ModelDims
    from lrsvqa.imagery.anyres import AnyresGeometry
    from lrsvqa.strategies.registry import count_strategy

    pooled = adapter.with_options(hr_pool=2, newline=False)
    grid = AnyresGeometry.for_image(1500, 2100, 9, 336).grid
    source = ArraySource(random_image(1500, 2100), grid_geometry(1500, 2100, grid))
    result = CoarseToFine(pooled, rfm, CoarseToFineConfig(alpha=0.25, max_new_tokens=1)).run(
        source, "what?"
    )
    dims = ModelDims(64, 128, 6, patch_size=42, hr_pool=2, image_newline=False)
    count = count_strategy("c2f-nodip", dims, 1500, 2100, grid_tiles=9, alpha=0.25)
    assert count.vision_tokens_encoded == result.vision_tokens_encoded
    assert count.tokens_to_llm == result.vision_tokens_to_llm
    assert count.rfm_vision_tokens == (64 + result.levels[0].tokens_encoded,)
