import numpy as np
import pytest
import torch
from PIL import Image

from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from lrsvqa.strategies.builtin import FullResolutionImage
from lrsvqa.strategies.registry import build_strategy
from tests.tiny_models import WORDS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, processor = build_tiny_llava(WORDS)
    return save_tiny_llava(model, processor, tmp_path_factory.mktemp("fullres") / "model")


def _image(path, height, width):
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_fullres_feeds_every_finest_tile_and_reuses_the_encoding(model_dir, tmp_path):
    strategy = build_strategy("fullres", model_path=str(model_dir), max_new_tokens=3)
    prepared = strategy.prepare(_image(tmp_path / "a.png", 1300, 700))
    assert len(prepared.tiles) == 4 * 3  # 1300x700 -> 4x3 tiles at r = 1.034
    first = strategy.answer(prepared, "what color is the ship?")
    grid_rows = 4 * 8
    assert first.vision_tokens_encoded == (1 + 12) * 64
    assert first.vision_tokens_to_llm == 64 + 12 * 64 + grid_rows
    encoded = strategy._encoded[1]
    second = strategy.answer(prepared, "how many ships are there?")
    assert strategy._encoded[1] is encoded
    assert second.vision_tokens_to_llm == first.vision_tokens_to_llm


def test_fullres_refuses_images_that_do_not_fit(model_dir, tmp_path):
    strategy = build_strategy("fullres", model_path=str(model_dir), max_tiles=4)
    with pytest.raises(ValueError, match="needs 12 tiles, more than max_tiles=4"):
        strategy.prepare(_image(tmp_path / "b.png", 1300, 700))


def test_fullres_never_answers_a_new_image_with_a_freed_ones_tokens(model_dir, tmp_path):
    # CPython reuses the address (and so the id()) of a freed object: a cache keyed by
    # id() answered image b with image a's tokens once a was freed before b was made.
    strategy = build_strategy("fullres", model_path=str(model_dir), max_new_tokens=1)
    path_a = _image(tmp_path / "a.png", 700, 700)
    path_b = tmp_path / "b.png"
    Image.fromarray(255 - np.asarray(Image.open(path_a))).save(path_b)
    contents = {}
    for name, path in (("a", path_a), ("b", path_b)):
        prepared = strategy.prepare(path)
        contents[name] = (prepared.thumbnail, prepared.tiles, prepared.positions)
        del prepared
    expected = {}
    for name in contents:  # each image alone, on a strategy with an empty cache
        alone = build_strategy("fullres", model_path=str(model_dir), max_new_tokens=1)
        alone.answer(FullResolutionImage(*contents[name]), "is")
        expected[name] = alone._encoded[1]
    assert not torch.equal(expected["a"], expected["b"])
    seen: dict[int, str] = {}  # id -> image last made at that address
    reused = False
    for turn in range(40):  # alternate until the other image's freed address is reused
        name = "ab"[turn % 2]
        image = FullResolutionImage(*contents[name])  # the previous one was just freed
        reused = seen.get(id(image), name) != name
        seen[id(image)] = name
        result = strategy.answer(image, "what color is the ship?")
        assert torch.equal(strategy._encoded[1], expected[name]), name
        assert result.vision_tokens_to_llm == expected[name].shape[0]
        del image, result
        if reused:
            break
    assert reused  # one image got the other's freed id: the case is exercised


def test_a_replaced_adapter_never_gets_the_freed_ones_rfm(model_dir):
    # The RFM cache was keyed by id(adapter): once share_adapter replaced a model and the
    # old one was freed, a new adapter at the same address got the old model's RFM.
    import gc

    from lrsvqa.models.adapter import LlavaAdapter
    from lrsvqa.strategies.builtin import shared_rfm

    def rfm_weights(adapter):
        rfm = shared_rfm(adapter, rfm_layers=[1])
        return rfm, next(rfm.parameters()).detach().clone()

    first = LlavaAdapter.from_pretrained(model_dir)
    old_rfm, _ = rfm_weights(first)
    address = id(first)
    del first, old_rfm
    for seed in range(20):  # allocate until CPython hands out the freed address again
        gc.collect()
        model, processor = build_tiny_llava(WORDS, seed=seed + 1)
        second = LlavaAdapter(model, processor)
        rfm, weights = rfm_weights(second)
        own = [next(layer.parameters()).detach() for layer in second.decoder_layers]
        assert any(torch.equal(weights, w) for w in own), f"seed {seed}: another model's RFM"
        if id(second) == address:
            break
        del second, rfm
