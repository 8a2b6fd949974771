"""RFM scores with M-RoPE, and coarse-to-fine on Qwen-VL models with positions kept."""

import numpy as np
import pytest
import torch

from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.strategies.c2f import CoarseToFineConfig
from tests.capturing import CapturingC2F
from tests.qwen_models import QWEN_KINDS, tiny_qwen_adapter
from tests.tiny_models import ArraySource, random_image

QUESTION = "what color is the ship?"


@pytest.fixture(scope="module", params=QWEN_KINDS)
def adapter(request):
    return tiny_qwen_adapter(request.param)


def _sequence(adapter, tiles=(1, 2)):
    """Thumbnail and a 1 x 2 level, with their M-RoPE positions."""
    views = [random_image(448, 448, seed) for seed in range(1 + tiles[0] * tiles[1])]
    with torch.no_grad():
        tokens = adapter.encode_tiles(views)
    g = adapter.tokens_per_side
    cells = np.stack(np.divmod(np.arange(g * g), g), axis=1)
    level = np.concatenate([cells + [0, c * g] for c in range(tiles[1])])
    order = np.lexsort((level[:, 1], level[:, 0]))
    hr = tokens[1:].reshape(-1, tokens.shape[-1])[torch.as_tensor(order)]
    prompt = adapter.prompt_parts(QUESTION)
    embeds, vision = adapter.assemble(prompt, torch.cat([tokens[0], hr]))
    segments = [adapter.thumbnail_segment(), adapter.segment_of_tiles(tiles, level[order])]
    return embeds, vision, adapter.position_ids(prompt, segments)


def _eager_rows(adapter, embeds, positions, layers):
    """The LLM's own eager attention weights on a subset of its layers."""
    adapter.model.set_attn_implementation("eager")
    lm = adapter.language_model
    keep = lm.layers
    lm.layers = torch.nn.ModuleList([keep[i] for i in layers])
    try:
        with torch.no_grad():
            out = lm(
                **adapter.language_model_inputs(embeds),
                position_ids=positions,
                output_attentions=True,
                use_cache=False,
            )
    finally:
        lm.layers = keep
        adapter.model.set_attn_implementation("sdpa")
    return out.attentions


def test_rfm_scores_equal_eager_attention_weights_with_mrope(adapter):
    rfm = RegionFocusModule.from_llm(adapter, [1, 3], training_free=True)
    assert rfm.rfm_config.layer_indices == [0, 1, 3]
    embeds, vision, positions = _sequence(adapter)
    scores = rfm.vision_scores(embeds, vision, positions)
    reference = _eager_rows(adapter, embeds, positions, [0, 1, 3])[2][0, :, -1, vision].mean(0)
    assert scores.shape == reference.shape
    assert torch.allclose(scores, reference, atol=1e-5)
    # The positions matter: the sequence index as positions gives other scores.
    assert not torch.allclose(rfm.vision_scores(embeds, vision), reference, atol=1e-5)
    if adapter.deepstack_layers:  # and so do Qwen3-VL's deepstack features
        plain = embeds[..., : adapter.hidden_size]
        assert not torch.allclose(rfm.vision_scores(plain, vision, positions), reference, atol=1e-5)


def test_rfm_rows_of_several_queries_match_eager(adapter):
    rfm = RegionFocusModule.from_llm(adapter, [0, 1], training_free=True)
    embeds, _, positions = _sequence(adapter, tiles=(1, 1))
    n = embeds.shape[1]
    queries = torch.tensor([[n - 5, n - 1]])
    rows = rfm.attention_rows(embeds, queries, layers=[0, 1], position_ids=positions)
    attentions = _eager_rows(adapter, embeds, positions, [0, 1])
    for layer in (0, 1):
        expected = attentions[layer][0][:, queries[0]]
        assert torch.allclose(rows[layer][0], expected, atol=1e-5)


def test_distilled_copy_scores_like_the_training_free_rfm(adapter):
    copied = RegionFocusModule.from_llm(adapter, [1, 3])
    shared = RegionFocusModule.from_llm(adapter, [1, 3], training_free=True)
    embeds, vision, positions = _sequence(adapter)
    assert torch.allclose(
        copied.vision_scores(embeds, vision, positions),
        shared.vision_scores(embeds, vision, positions),
        atol=1e-6,
    )


def test_c2f_alpha_one_on_one_tile_feeds_thumbnail_and_every_token(adapter):
    rfm = RegionFocusModule.from_llm(adapter, training_free=True)
    image = random_image(448, 448, seed=5)
    source = ArraySource(image, _geometry(adapter, 448, 448))
    c2f = CapturingC2F(adapter, rfm, CoarseToFineConfig(alpha=1.0, max_new_tokens=6))
    result = c2f.run(source, QUESTION)
    assert result.retained_tokens == adapter.tokens_per_tile == 256
    embeds, positions = c2f.fed, c2f.fed_positions
    _, _, expected = _sequence(adapter, tiles=(1, 1))
    assert torch.equal(positions, expected)
    assert result.answer == adapter.generate(embeds, 6, position_ids=positions)


def test_c2f_retained_tokens_keep_their_level_positions(adapter):
    rfm = RegionFocusModule.from_llm(adapter, training_free=True)
    source = ArraySource(random_image(1344, 896, seed=2), _geometry(adapter, 1344, 896))
    c2f = CapturingC2F(adapter, rfm, CoarseToFineConfig(alpha=0.1, max_tiles=1, max_new_tokens=2))
    result = c2f.run(source, QUESTION)
    assert result.levels[0].grid == (3, 2) and result.final_level == 1
    positions = c2f.fed_positions
    prompt = adapter.prompt_parts(QUESTION)
    p, g = len(prompt.prefix_ids), adapter.tokens_per_side
    start = p + g  # after the thumbnail's own grid
    kept = np.asarray(result.retained_positions)
    vision = positions[:, 0, p + g * g : p + g * g + len(kept)].numpy()
    assert (vision[0] == start).all()
    assert (vision[1:].T == start + kept).all()
    # Text goes on after the level's whole 48 x 32 grid, pruned or not.
    assert positions[0, 0, p + g * g + len(kept)] == start + 3 * g


def _geometry(adapter, height, width):
    from lrsvqa.imagery.pyramid import build_pyramid

    return build_pyramid(height, width, tile_size=adapter.tile_size)
