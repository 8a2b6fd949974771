"""The Qwen-VL adapter: tiles, M-RoPE positions and generation equal Hugging Face's own."""

import numpy as np
import pytest
import torch
from PIL import Image

from lrsvqa.models.layout import VisionSegment
from lrsvqa.train.batch import SFTExample, VisualInput
from lrsvqa.train.sft import TokenHeads, sft_loss
from tests.qwen_models import QWEN_KINDS, hf_generate, tiny_qwen_adapter
from tests.tiny_models import random_image

QUESTION = "what color is the ship?"


@pytest.fixture(scope="module", params=QWEN_KINDS)
def adapter(request):
    return tiny_qwen_adapter(request.param)


def test_a_448_px_tile_is_16_by_16_merged_tokens(adapter):
    assert adapter.tile_size == 448 and adapter.tokens_per_side == 16
    tokens = adapter.encode_tiles([random_image(448, 448, s) for s in range(3)])
    assert tokens.shape == (3, 256, adapter.token_width)
    assert adapter.token_width == adapter.hidden_size * (1 + adapter.deepstack_layers)
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
    if adapter.deepstack_layers:  # Qwen3-VL: the deepstack features carried matter
        plain = embeds.clone()
        plain[..., adapter.hidden_size :] = 0
        assert adapter.generate(plain, 8, position_ids=positions) != reference


def test_deepstack_features_are_carried_with_each_token(adapter):
    """Qwen3-VL rows are [token, deepstack_0, ...] as the vision tower gives them."""
    if not adapter.deepstack_layers:
        pytest.skip("no deepstack features")
    image = random_image(448, 448, seed=3)
    pixels, grids = adapter.pixel_values([image])
    with torch.no_grad():
        rows = adapter.encode_pixels(pixels, grids)[0]
        own = adapter.model.model.get_image_features(pixels, grids, return_dict=True)
    h = adapter.hidden_size
    assert torch.equal(rows[:, :h], own.pooler_output[0])
    for layer, features in enumerate(own.deepstack_features):
        assert torch.equal(rows[:, (1 + layer) * h : (2 + layer) * h], features[0])
    prompt = adapter.prompt_parts(QUESTION)
    embeds, vision = adapter.assemble(prompt, rows[[5, 9]])
    assert embeds.shape == (1, len(prompt.prefix_ids) + 2 + len(prompt.suffix_ids), 3 * h)
    assert not embeds[0, : vision.start, h:].any() and not embeds[0, vision.stop :, h:].any()


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


def test_causal_lm_outputs_equal_the_models_forward_with_pixels(adapter):
    """The SFT forward on assembled rows is the model's own forward on the processor's inputs."""
    image = random_image(448, 448, seed=4)
    inputs = adapter.processor(images=Image.fromarray(image), text=adapter.chat_text(QUESTION))
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] // 2] = -100
    prompt = adapter.prompt_parts(QUESTION)
    cells = adapter.segment_of_tiles((1, 1), np.stack(np.divmod(np.arange(256), 16), axis=1))
    with torch.no_grad():
        reference = adapter.model(**inputs, labels=labels, use_cache=False)
        embeds, _ = adapter.assemble(prompt, adapter.encode_tiles([image])[0])
        ours = adapter.causal_lm_outputs(
            embeds, None, adapter.position_ids(prompt, [cells]), labels
        )
    assert torch.allclose(ours.logits, reference.logits, atol=1e-5)
    assert torch.allclose(ours.loss, reference.loss, atol=1e-5)


def test_sft_runs_through_the_same_loss_with_heads_and_grounding(adapter):
    tile = random_image(448, 448, seed=6)
    labels = {"colour": np.zeros(256, dtype=np.int64)}
    target = np.zeros(256, dtype=bool)
    target[:20] = True
    visual = VisualInput(tile, [tile], [(0, 0)], token_labels=labels, target_tokens=target)
    example = SFTExample(visual, QUESTION, "blue")
    heads = TokenHeads(adapter.hidden_size, {"colour": 2})
    losses = sft_loss(adapter, [example], heads, grounding_layers=(0, 2))
    assert all(torch.isfinite(loss) and loss > 0 for loss in losses)
    sum(losses).backward()
    adapter.model.zero_grad(set_to_none=True)
