import json

import numpy as np
import pytest
import torch

from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.rfm import (
    CONFIG_NAME,
    OFFICIAL_STRUCTURE,
    SELECTED_STRUCTURE,
    RegionFocusModule,
    RFMLoadError,
    default_layer_indices,
)
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from tests.tiny_models import WORDS, random_image, tiny_adapter


def _sequence(adapter: LlavaAdapter, tiles: int = 3):
    images = [random_image(336, 336, seed) for seed in range(tiles)]
    vision = adapter.encode_tiles(images).reshape(-1, adapter.hidden_size)
    return adapter.assemble(adapter.prompt_parts("what color is the ship?"), vision)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_scores_equal_eager_attention_weights(family):
    adapter = tiny_adapter(family=family)
    adapter.model.set_attn_implementation("eager")
    rfm = RegionFocusModule.from_llm(adapter, [0, 1, 3], training_free=True)
    # Training-free layers 0, 1, 3 are not contiguous: run the LLM on the same layers.
    embeds, vision = _sequence(adapter)
    scores = rfm.vision_scores(embeds, vision)
    lm = adapter.language_model
    keep = lm.layers
    lm.layers = torch.nn.ModuleList([keep[0], keep[1], keep[3]])
    lm.config.num_hidden_layers = 3
    try:
        with torch.no_grad():
            out = lm(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    finally:
        lm.layers, lm.config.num_hidden_layers = keep, len(keep)
    reference = out.attentions[2][0, :, -1, vision].mean(0)
    assert scores.shape == reference.shape
    assert torch.allclose(scores, reference, atol=1e-5)


def test_scores_do_not_depend_on_attention_backend():
    adapter = tiny_adapter()
    rfm = RegionFocusModule.from_llm(adapter, [0, 2, 4])
    embeds, vision = _sequence(adapter)
    adapter.model.set_attn_implementation("sdpa")
    sdpa = rfm.vision_scores(embeds, vision)
    adapter.model.set_attn_implementation("eager")
    eager = rfm.vision_scores(embeds, vision)
    assert torch.allclose(sdpa, eager, atol=1e-5)


def test_attention_rows_of_several_queries_match_eager():
    adapter = tiny_adapter()
    adapter.model.set_attn_implementation("eager")
    rfm = RegionFocusModule.from_llm(adapter, [0, 1], training_free=True)
    embeds, _ = _sequence(adapter, tiles=1)
    n = embeds.shape[1]
    queries = torch.tensor([[n - 5, n - 1]])
    rows = rfm.attention_rows(embeds, queries, layers=[0, 1])
    with torch.no_grad():
        out = adapter.language_model(inputs_embeds=embeds, output_attentions=True)
    for layer in (0, 1):
        expected = out.attentions[layer][0][:, queries[0]]
        assert torch.allclose(rows[layer][0], expected, atol=1e-5)
        # Causality: the earlier query gives no weight to later keys.
        assert rows[layer][0, :, 0, n - 4 :].abs().max() == 0


def test_copies_are_independent_of_the_llm_but_training_free_shares():
    adapter = tiny_adapter()
    copied = RegionFocusModule.from_llm(adapter, [1, 3])
    shared = RegionFocusModule.from_llm(adapter, [1, 3], training_free=True)
    assert [shared.layers[i] for i in range(3)] == [adapter.decoder_layers[i] for i in (0, 1, 3)]
    assert copied.layers[1] is not adapter.decoder_layers[1]
    for p_copy, p_llm in zip(
        copied.layers[1].parameters(), adapter.decoder_layers[1].parameters(), strict=True
    ):
        assert torch.equal(p_copy, p_llm)
        assert p_copy.data_ptr() != p_llm.data_ptr()


def test_official_structure_leads_with_layer_0_and_scores_like_the_llm_on_those_layers():
    adapter = tiny_adapter()
    adapter.model.set_attn_implementation("eager")
    rfm = RegionFocusModule.from_llm(adapter, [1, 3], training_free=True)
    assert rfm.rfm_config.layer_indices == [0, 1, 3]
    assert rfm.rfm_config.structure == OFFICIAL_STRUCTURE and len(rfm.layers) == 3
    # A selection that starts with layer 0 (the default model's 0, 2, 5) gets no second copy.
    assert RegionFocusModule.from_llm(adapter, [0, 2]).rfm_config.layer_indices == [0, 2]
    embeds, vision = _sequence(adapter)
    lm = adapter.language_model
    keep = lm.layers
    lm.layers = torch.nn.ModuleList([keep[0], keep[1], keep[3]])
    lm.config.num_hidden_layers = 3
    try:
        with torch.no_grad():
            out = lm(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    finally:
        lm.layers, lm.config.num_hidden_layers = keep, len(keep)
    reference = out.attentions[2][0, :, -1, vision].mean(0)
    assert torch.allclose(rfm.vision_scores(embeds, vision), reference, atol=1e-5)
    selected = RegionFocusModule.from_llm(
        adapter, [1, 3], training_free=True, structure=SELECTED_STRUCTURE
    )
    assert selected.rfm_config.layer_indices == [1, 3]
    assert not torch.allclose(selected.vision_scores(embeds, vision), reference, atol=1e-5)


def test_rfm_saved_without_a_structure_loads_as_the_selected_layers(tmp_path):
    adapter = tiny_adapter()
    old = RegionFocusModule.from_llm(adapter, [1, 3], structure=SELECTED_STRUCTURE)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.01)
    old.save(tmp_path / "rfm")
    path = tmp_path / "rfm" / CONFIG_NAME
    config = json.loads(path.read_text())
    del config["structure"]  # as written before the field existed
    path.write_text(json.dumps(config))
    loaded = RegionFocusModule.load(tmp_path / "rfm", adapter)
    assert loaded.rfm_config.structure == SELECTED_STRUCTURE and len(loaded.layers) == 2
    embeds, vision = _sequence(adapter, tiles=1)
    assert torch.allclose(loaded.vision_scores(embeds, vision), old.vision_scores(embeds, vision))
    new = RegionFocusModule.from_llm(adapter, [1, 3])
    new.save(tmp_path / "new")
    reloaded = RegionFocusModule.load(tmp_path / "new", adapter)
    assert reloaded.rfm_config.layer_indices == [0, 1, 3] and len(reloaded.layers) == 3
    assert json.loads((tmp_path / "new" / CONFIG_NAME).read_text())["structure"] == "official"


def test_layer_indices_are_validated():
    adapter = tiny_adapter()
    for bad in ([3, 1], [0, 0], [0, 99], [-1, 2]):
        with pytest.raises(ValueError, match="strictly increasing"):
            RegionFocusModule.from_llm(adapter, bad)


def test_default_layer_indices():
    assert default_layer_indices(28) == (1, 5, 11, 14)
    assert default_layer_indices(32) == (1, 5, 11, 14)
    small = default_layer_indices(6)
    assert len(small) == 4 and list(small) == sorted(set(small)) and small[-1] < 6
    assert default_layer_indices(3) == (0, 1, 2)


def test_save_load_round_trip(tmp_path):
    adapter = tiny_adapter()
    rfm = RegionFocusModule.from_llm(adapter, [0, 2, 4], base_model="tiny")
    with torch.no_grad():
        for p in rfm.parameters():
            p.add_(0.01)
    rfm.save(tmp_path / "rfm")
    config = json.loads((tmp_path / "rfm" / CONFIG_NAME).read_text())
    assert config["layer_indices"] == [0, 2, 4] and config["base_model"] == "tiny"
    loaded = RegionFocusModule.load(tmp_path / "rfm", adapter)
    embeds, vision = _sequence(adapter, tiles=1)
    assert torch.allclose(loaded.vision_scores(embeds, vision), rfm.vision_scores(embeds, vision))


def test_load_refuses_rfm_of_another_llm(tmp_path):
    rfm = RegionFocusModule.from_llm(tiny_adapter(hidden_size=64), [0, 1])
    rfm.save(tmp_path / "rfm")
    other = tiny_adapter(hidden_size=32)
    with pytest.raises(RFMLoadError, match="hidden_size: RFM has 64, LLM has 32"):
        RegionFocusModule.load(tmp_path / "rfm", other)
    with pytest.raises(RFMLoadError, match="missing rfm_config.json"):
        RegionFocusModule.load(tmp_path, other)


def test_adapter_loads_saved_checkpoint_in_requested_dtype(tmp_path):
    model, processor = build_tiny_llava(WORDS)
    save_tiny_llava(model, processor, tmp_path / "m")
    adapter = LlavaAdapter.from_pretrained(tmp_path / "m", dtype="bfloat16")
    assert adapter.dtype == torch.bfloat16
    tokens = adapter.encode_tiles([random_image(336, 336)])
    assert tokens.shape == (1, adapter.tokens_per_tile, adapter.hidden_size)
    assert tokens.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="missing: no such folder"):
        LlavaAdapter.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: cannot load a LLaVA model"):
        LlavaAdapter.from_pretrained(tmp_path / "empty")


def test_encode_tiles_matches_hf_image_features():
    adapter = tiny_adapter(kind="llava")
    tiles = [random_image(336, 336, s) for s in range(2)]
    ours = adapter.encode_tiles(tiles)
    with torch.no_grad():
        theirs = adapter.model.model.get_image_features(pixel_values=adapter.pixel_values(tiles))
    theirs = getattr(theirs, "pooler_output", theirs)
    theirs = torch.stack(list(theirs)) if isinstance(theirs, (list, tuple)) else theirs
    assert torch.allclose(ours, theirs.reshape(ours.shape), atol=1e-6)
    assert np.prod(ours.shape[:2]) == 2 * 64
