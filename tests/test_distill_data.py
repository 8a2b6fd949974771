import json

import numpy as np
import pytest
import torch
from PIL import Image

from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.layout import layout_vision_tokens, tile_token_positions
from lrsvqa.models.tiny import build_tiny_llava
from lrsvqa.train.batch import embed_batch
from lrsvqa.train.data import (
    ConversationDataset,
    DistillDataError,
    Turn,
    load_conversations,
    text_layout,
)
from lrsvqa.train.teacher import (
    mark_trainable,
    parse_pairs,
    resolve_pairs,
    teacher_attention,
)
from lrsvqa.train.toy import TOY_WORDS


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on 2 shared cores run much faster without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapter():
    model, processor = build_tiny_llava(TOY_WORDS, num_layers=4)
    return LlavaAdapter(model, processor)


def _image(path, height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name


def _item(image, *pairs):
    messages = []
    for index, (question, answer) in enumerate(pairs):
        value = f"<image>\n{question}" if index == 0 else question
        messages += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return {"id": f"conv-{image}", "image": image, "conversations": messages}


def test_first_turn_tokens_equal_the_inference_prompt(adapter):
    question = "what color is the ship ?"
    layout = text_layout(adapter.processor, [Turn(question, "red")], "x")
    prompt = adapter.prompt_parts(question)
    assert torch.equal(layout.prefix_ids, prompt.prefix_ids)
    (query,) = layout.query_offsets
    assert torch.equal(layout.suffix_ids[: query + 1], prompt.suffix_ids)
    assert adapter.tokenizer.decode(layout.suffix_ids[query + 1 : query + 2]) == "red"


def test_multi_turn_queries_are_the_last_prompt_token_of_each_turn(adapter):
    turns = [
        Turn("what color is the ship ?", "red"),
        Turn("how many tank are there ?", "two"),
        Turn("is there a blue car ?", "no"),
    ]
    layout = text_layout(adapter.processor, turns, "x")
    tokens = adapter.tokenizer.convert_ids_to_tokens(layout.suffix_ids.tolist())
    for offset, turn in zip(layout.query_offsets, turns, strict=True):
        # The template's generation prompt is "assistant :"; the answer follows it.
        assert tokens[offset - 1 : offset + 2] == ["assistant", ":", turn.answer]
    assert list(layout.query_offsets) == sorted(layout.query_offsets)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda item: item.pop("image"), "missing 'image'"),
        (lambda item: item.update(image="nope.png"), "nope.png does not exist"),
        (
            lambda item: item["conversations"][0].update(value="no placeholder"),
            "placeholder",
        ),
        (
            lambda item: item["conversations"][2].update(value="<image> again"),
            "placeholder",
        ),
        (lambda item: item["conversations"].pop(), "odd number"),
        (lambda item: item["conversations"][1].update({"from": "human"}), "message 1 is from"),
        (lambda item: item.update(conversations="text"), "non-empty list"),
    ],
)
def test_bad_items_name_the_file_and_item(tmp_path, mutate, message):
    image = _image(tmp_path / "a.png", 40, 40)
    items = [_item(image, ("q one ?", "yes")), _item(image, ("q ?", "no"), ("q2 ?", "yes"))]
    mutate(items[1])
    data = tmp_path / "data.json"
    data.write_text(json.dumps(items))
    with pytest.raises(DistillDataError, match=message) as caught:
        load_conversations(data)
    assert f"{data} item 1 (id conv-a.png)" in str(caught.value)


def test_bad_json_and_empty_lists_name_the_file(tmp_path):
    data = tmp_path / "broken.json"
    data.write_text("[{")
    with pytest.raises(DistillDataError, match="broken.json: not valid JSON"):
        load_conversations(data)
    data.write_text("[]")
    with pytest.raises(DistillDataError, match="broken.json: expected a non-empty JSON list"):
        load_conversations(data)
    with pytest.raises(DistillDataError, match="missing.json: cannot read"):
        load_conversations(tmp_path / "missing.json")


def test_unreadable_image_is_reported_with_the_item(tmp_path, adapter):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    conversations = load_conversations([_item("bad.png", ("q ?", "a"))], tmp_path)
    dataset = ConversationDataset(conversations, adapter.processor, 336, adapter.tokens_per_side)
    with pytest.raises(DistillDataError, match="conversation list item 0 .*bad.png"):
        dataset[0]


def test_sample_uses_thumbnail_and_level_one_tiles_in_the_inference_layout(tmp_path, adapter):
    image = _image(tmp_path / "a.png", 700, 500)
    conversations = load_conversations(
        [_item(image, ("what color is the ship ?", "red"), ("how many car are there ?", "one"))],
        tmp_path,
    )
    dataset = ConversationDataset(conversations, adapter.processor, 336, adapter.tokens_per_side)
    sample = dataset[0]
    with PyramidReader.open(tmp_path / image) as reader:
        tiles = reader.geometry.levels[0].tiles()
        assert reader.geometry.levels[0].grid == (3, 2)
        assert np.array_equal(sample.thumbnail, reader.thumbnail())
        assert np.array_equal(sample.tiles, np.stack(reader.tiles(0, tiles)))
    g = adapter.tokens_per_side
    batch = embed_batch(adapter, [sample])
    thumb = adapter.encode_tiles([sample.thumbnail])[0]
    hr = adapter.encode_tiles(list(sample.tiles)).reshape(-1, adapter.hidden_size)
    vision, hr_index, _ = layout_vision_tokens(
        hr, tile_token_positions(tiles, g), thumb, adapter.image_newline
    )
    start = sample.text.prefix_ids.shape[0]
    n_vision = 64 + 6 * 64 + 3 * g  # thumbnail, 6 tiles, one newline per token row
    assert vision.shape[0] == n_vision
    assert batch.vision_mask[0].nonzero().squeeze(-1).tolist() == list(
        range(start, start + n_vision)
    )
    assert batch.hr_mask[0].nonzero().squeeze(-1).tolist() == (start + hr_index).tolist()
    assert torch.allclose(batch.inputs_embeds[0, start : start + n_vision], vision)
    queries = batch.query_positions[0].tolist()
    assert queries == [start + n_vision + o for o in sample.text.query_offsets]
    colon = adapter.embed_ids(torch.tensor(adapter.tokenizer.convert_tokens_to_ids([":"])))
    for q in queries:  # each query is the ":" closing the generation prompt "assistant :"
        assert torch.equal(batch.inputs_embeds[0, q], colon[0])


def test_padded_batch_gives_the_same_teacher_rows_as_single_samples(tmp_path, adapter):
    small, large = _image(tmp_path / "s.png", 300, 300, 1), _image(tmp_path / "l.png", 600, 400, 2)
    conversations = load_conversations(
        [
            _item(small, ("what color is the ship ?", "red")),
            _item(large, ("is there a car ?", "no"), ("where is the car ?", "top")),
        ],
        tmp_path,
    )
    dataset = ConversationDataset(conversations, adapter.processor, 336, adapter.tokens_per_side)
    samples = [dataset[0], dataset[1]]
    batch = embed_batch(adapter, samples)
    assert batch.turn_mask.tolist() == [[True, False], [True, True]]
    rows = teacher_attention(
        adapter, batch.inputs_embeds, batch.query_positions, batch.attention_mask, [1, 3]
    )
    for index, sample in enumerate(samples):
        single = embed_batch(adapter, [sample])
        n = single.inputs_embeds.shape[1]
        alone = teacher_attention(
            adapter, single.inputs_embeds, single.query_positions, single.attention_mask, [1, 3]
        )
        j = int(batch.turn_mask[index].sum())
        assert torch.allclose(rows[:, index, :, :j, :n], alone[:, 0], atol=1e-6)
        assert rows[:, index, :, :j, n:].abs().sum() == 0


def test_teacher_rows_equal_eager_attention(adapter):
    adapter.model.set_attn_implementation("eager")
    try:
        embeds = torch.randn(1, 50, adapter.hidden_size)
        queries = torch.tensor([[20, 49]])
        mask = torch.ones(1, 50, dtype=torch.long)
        rows = teacher_attention(adapter, embeds, queries, mask, [0, 2, 3])
        with torch.no_grad():
            reference = adapter.language_model(inputs_embeds=embeds, output_attentions=True)
    finally:
        adapter.model.set_attn_implementation("sdpa")
    for k, layer in enumerate([0, 2, 3]):
        assert torch.allclose(rows[k, 0], reference.attentions[layer][0][:, [20, 49]], atol=1e-5)


def test_pairs_are_parsed_and_validated():
    assert parse_pairs("0:1, 3:14") == [(0, 1), (3, 14)]
    with pytest.raises(ValueError, match="RFM:LLM"):
        parse_pairs("0-1")
    assert resolve_pairs([1, 5, 11, 14], 28) == [(0, 1), (3, 14)]
    assert resolve_pairs([0, 1], 6, [(1, 5), (0, 2)]) == [(0, 2), (1, 5)]
    with pytest.raises(ValueError, match="must include the last RFM layer"):
        resolve_pairs([1, 5, 11, 14], 28, [(0, 1), (2, 11)])
    with pytest.raises(ValueError, match="out of range"):
        resolve_pairs([0, 1], 6, [(1, 6)])
    with pytest.raises(ValueError, match="several teachers"):
        resolve_pairs([0, 1], 6, [(1, 5), (1, 4)])


def test_trainable_parameters_are_exactly_those_the_loss_reaches(adapter):
    from lrsvqa.models.rfm import RegionFocusModule
    from lrsvqa.train.teacher import StudentAttention

    rfm = RegionFocusModule.from_llm(adapter, [0, 1, 2])
    trainable = mark_trainable(rfm)
    student = StudentAttention(rfm, [0, 2])
    rows = student(torch.randn(1, 30, adapter.hidden_size), torch.tensor([[29]]), None)
    (rows * torch.randn_like(rows)).sum().backward()
    with_grad = {id(p) for p in rfm.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {id(p) for p in trainable}
    frozen_names = [n for n, p in rfm.named_parameters() if not p.requires_grad]
    assert frozen_names and all(n.startswith("layers.2.") for n in frozen_names)
    assert any("mlp" in n for n in frozen_names) and not any("q_proj" in n for n in frozen_names)


def test_pooled_model_trains_on_pooled_tiles_without_newlines(tmp_path, adapter):
    pooled = adapter.with_options(hr_pool=2, newline=False)
    image = _image(tmp_path / "a.png", 700, 500)
    conversations = load_conversations(
        [_item(image, ("what color is the ship ?", "red"))], tmp_path
    )
    dataset = ConversationDataset(conversations, pooled.processor, 336, pooled.tokens_per_side)
    sample = dataset[0]
    assert sample.positions.max(axis=0).tolist() == [3 * 4 - 1, 2 * 4 - 1]  # 3 x 2 tiles of 4 x 4
    batch = embed_batch(pooled, [sample])
    start = sample.text.prefix_ids.shape[0]
    n_vision = 64 + 6 * 16  # unpooled thumbnail, six 4 x 4 pooled tiles, no row ends
    assert int(batch.vision_mask[0].sum()) == n_vision and int(batch.hr_mask[0].sum()) == 96
    thumb = adapter.encode_tiles([sample.thumbnail])[0]
    hr = pooled.pool_tiles(adapter.encode_tiles(list(sample.tiles))).reshape(-1, 64)
    vision, _, _ = layout_vision_tokens(hr, sample.positions, thumb, None)
    assert torch.allclose(batch.inputs_embeds[0, start : start + n_vision], vision, atol=1e-6)
