"""The Qwen-VL adapter: tiles, M-RoPE positions and generation equal Hugging Face's own."""

import numpy as np
import pytest
import torch

from lrsvqa.models.layout import VisionSegment
from tests.qwen_models import QWEN_KINDS, hf_generate, tiny_qwen_adapter
from tests.tiny_models import random_image

QUESTION = "what color is the ship?"


@pytest.fixture(scope="module", params=QWEN_KINDS)
def adapter(request):
    return tiny_qwen_adapter(request.param)


def test_a_448_px_tile_is_16_by_16_merged_tokens(adapter):
    assert adapter.tile_size == 448 and adapter.tokens_per_side == 16
    tokens = adapter.encode_tiles([random_image(448, 448, s) for s in range(3)])
    assert tokens.shape == (3, 256, adapter.hidden_size)
    # Each view is encoded on its own: batching does not mix tiles.
    alone = adapter.encode_tiles([random_image(448, 448, 1)])
    assert torch.allclose(tokens[1], alone[0], atol=1e-5)


def test_tile_size_must_fit_patch_and_merge(adapter):
    with pytest.raises(ValueError, match="multiple of"):
        adapter.with_tile_size(450)
    assert adapter.with_tile_size(224).tokens_per_side == 8


def test_every_token_kept_equals_hf_generate_with_the_processor(adapter):
    image = random_image(448, 448, seed=3)
    reference, length, inputs = hf_generate(adapter, image, QUESTION, max_new_tokens=8)
    prompt = adapter.prompt_parts(QUESTION)
    with torch.no_grad():
        tokens = adapter.encode_tiles([image])[0]
    embeds, vision = adapter.assemble(prompt, tokens)
    assert embeds.shape[1] == length
    cells = adapter.segment_of_tiles((1, 1), np.stack(np.divmod(np.arange(256), 16), axis=1))
    positions = adapter.position_ids(prompt, [cells])
    expected, _ = adapter.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
    )
    assert torch.equal(positions, expected)
    assert adapter.generate(embeds, 8, position_ids=positions) == reference
    assert reference  # a real answer, not an empty string


def test_pruned_tokens_keep_their_positions_and_text_follows_the_whole_grid(adapter):
    prompt = adapter.prompt_parts(QUESTION)
    kept = np.array([[0, 5], [3, 2], [31, 47]])
    thumbnail = adapter.thumbnail_segment()
    level = VisionSegment(kept, (32, 48))
    positions = adapter.position_ids(prompt, [thumbnail, level])
    p = len(prompt.prefix_ids)
    start = p + 16  # after the 16 x 16 thumbnail
    vision = positions[:, 0, p + 256 : p + 259]
    assert vision.T.tolist() == [[start, start, start + 5], [start, start + 3, start + 2],
                                 [start, start + 31, start + 47]]  # fmt: skip
    assert positions[:, 0, p + 259].tolist() == [start + 48] * 3
    assert positions.shape == (3, 1, p + 259 + len(prompt.suffix_ids))
