"""Supervised fine-tuning on DIP-shaped inputs, with and without token heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrsvqa.train.batch import (
    IGNORE_INDEX,
    SFTExample,
    VisualInput,
    embed_batch,
    encode_batch,
)
from lrsvqa.train.sft import (
    SFTConfig,
    TokenHeads,
    grounding_loss,
    sft_loss,
    train_sft,
)
from tests.tiny_models import tiny_adapter

RED, BLUE = (220, 30, 30), (30, 80, 235)


def _example(colour: tuple[int, int, int], labelled: bool = True, size: int = 336) -> SFTExample:
    """One tile of a single colour; its label is the colour's index on every token."""
    tile = np.full((size, size, 3), colour, dtype=np.uint8)
    labels = None
    if labelled:
        labels = {"colour": np.full(64, 0 if colour == RED else 1, dtype=np.int64)}
        labels["colour"][:8] = IGNORE_INDEX
    visual = VisualInput(tile // 2, [tile], [(0, 0)], token_labels=labels)
    return SFTExample(visual, "what color is the ship ?", "red" if colour == RED else "blue")


def test_token_head_loss_is_cross_entropy_over_labelled_tokens_only() -> None:
    torch.manual_seed(0)
    adapter = tiny_adapter()
    heads = TokenHeads(adapter.hidden_size, {"colour": 2})
    examples = [_example(RED), _example(BLUE, labelled=False), _example(BLUE)]
    encoded = encode_batch(adapter, examples)
    loss = heads.loss(adapter, encoded, examples)
    # Independent computation: tiles are images 1, 3 and 5; the second has no labels.
    tokens = torch.cat([encoded[1][8:], encoded[5][8:]])
    target = torch.tensor([0] * 56 + [1] * 56)
    expected = torch.nn.functional.cross_entropy(heads.heads["colour"](tokens), target)
    torch.testing.assert_close(loss, expected)
    assert heads.loss(adapter, encoded[:4], examples[1:2]).item() == 0.0


def test_vision_steps_train_the_vision_path_and_leave_the_llm_alone() -> None:
    torch.manual_seed(0)
    adapter = tiny_adapter()
    llm_before = {k: v.clone() for k, v in adapter.model.model.language_model.state_dict().items()}
    tower_before = adapter.model.model.vision_tower.state_dict()[
        "embeddings.patch_embedding.weight"
    ].clone()
    config = SFTConfig(steps=0, batch_size=2, vision_steps=3, token_heads={"colour": 2})
    losses = train_sft(adapter, lambda step, n: [_example(RED), _example(BLUE)], config)
    assert losses == []
    for name, value in adapter.model.model.language_model.state_dict().items():
        torch.testing.assert_close(value, llm_before[name], msg=name)
    tower_after = adapter.model.model.vision_tower.state_dict()["embeddings.patch_embedding.weight"]
    assert not torch.equal(tower_after, tower_before)
    assert not adapter.model.training


def _first_answer_word(adapter, example: SFTExample) -> str:
    batch = embed_batch(adapter, [example])
    embeds, labels = batch.inputs_embeds, batch.labels
    start = int((labels[0] != IGNORE_INDEX).nonzero()[0])
    with torch.no_grad():
        logits = adapter.model(inputs_embeds=embeds[:, :start]).logits[0, -1]
    return adapter.tokenizer.decode([int(logits.argmax())]).strip()


def test_trained_model_reads_the_colour_and_the_log_records_both_phases(tmp_path) -> None:
    torch.manual_seed(0)
    adapter = tiny_adapter()
    rng = np.random.default_rng(0)
    config = SFTConfig(
        steps=30,
        batch_size=4,
        learning_rate=3e-3,
        vision_steps=20,
        token_heads={"colour": 2},
        log_every=10,
    )
    batches = lambda step, n: [_example(RED if rng.random() < 0.5 else BLUE) for _ in range(n)]  # noqa: E731
    log = tmp_path / "sft.jsonl"
    losses = train_sft(adapter, batches, config, log_path=log)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    # The answer follows the image, not a prior.
    assert _first_answer_word(adapter, _example(RED)) == "red"
    assert _first_answer_word(adapter, _example(BLUE)) == "blue"
    lines = [line for line in log.read_text().splitlines()]
    assert '"phase": "vision"' in lines[0] and '"phase": "sft"' in lines[-1]


def test_vision_steps_without_token_heads_are_refused() -> None:
    with pytest.raises(ValueError, match="token_heads"):
        SFTConfig(vision_steps=5)


def _grounded_example(seed: int) -> SFTExample:
    """Two tiles, a red square on one; the square's tokens are the target; some pruned."""
    rng = np.random.default_rng(seed)
    tiles = [np.full((336, 336, 3), 90, dtype=np.uint8) for _ in range(2)]
    row, col = rng.integers(0, 7, size=2)
    which = int(rng.integers(0, 2))
    tiles[which][row * 42 : (row + 2) * 42, col * 42 : (col + 2) * 42] = RED
    target = np.zeros(128, dtype=bool)
    for r in (row, row + 1):
        target[which * 64 + r * 8 + col : which * 64 + r * 8 + col + 2] = True
    keep = target | (rng.random(128) < 0.7)
    visual = VisualInput(tiles[0] // 2, tiles, [(0, 0), (0, 1)], keep=keep, target_tokens=target)
    return SFTExample(visual, "what color is the ship ?", "red")


def test_grounding_loss_is_the_log_share_of_eager_attention_on_the_target() -> None:
    torch.manual_seed(0)
    adapter = tiny_adapter()
    adapter.model.set_attn_implementation("eager")
    untargeted = _example(BLUE)
    examples = [_grounded_example(0), untargeted, _grounded_example(1)]
    batch = embed_batch(adapter, examples)
    with torch.no_grad():
        output = adapter.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        layers = (0, 1)
        loss = grounding_loss(adapter, batch, output.hidden_states, layers)
    # Independently: the full eager attention matrices, the last prompt token's row.
    expected = []
    for layer in layers:
        for i in (0, 2):
            row = output.attentions[layer][i, :, batch.query_positions[i, 0]].mean(0)
            visual = examples[i].visual
            tile_row = row[batch.tile_positions[i]]
            # Tile tokens sit in the sequence in raster order of the kept tokens; the
            # tiles are (0, 0) and (0, 1), so token t is at row t % 64 // 8 of the grid.
            kept = np.flatnonzero(visual.keep)
            grid = np.array([(t % 64 // 8, t // 64 * 8 + t % 8) for t in kept])
            order = np.lexsort((grid[:, 1], grid[:, 0]))
            flags = torch.as_tensor(visual.target_tokens[kept][order])
            expected.append(-torch.log(tile_row[flags].sum() / tile_row.sum()))
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    assert batch.target_flags[1] is None
    assert grounding_loss(adapter, embed_batch(adapter, [untargeted]), (), layers).item() == 0.0


def test_grounding_loss_trains_attention_onto_the_target() -> None:
    torch.manual_seed(0)
    adapter = tiny_adapter()
    layers = (1,)

    def share(examples: list[SFTExample]) -> float:
        with torch.no_grad():
            _, _, ground = sft_loss(adapter, examples, grounding_layers=layers)
        return float(torch.exp(-ground))

    held_out = [_grounded_example(100 + i) for i in range(8)]
    before = share(held_out)
    config = SFTConfig(
        steps=40,
        batch_size=4,
        learning_rate=3e-3,
        grounding_layers=layers,
        grounding_loss_weight=1.0,
        warmup_steps=5,
    )
    rng = np.random.default_rng(0)
    train_sft(
        adapter,
        lambda step, n: [_grounded_example(int(rng.integers(1e6))) for _ in range(n)],
        config,
    )
    after = share(held_out)
    # 4 of about 90 kept tokens are the target: uniform attention gives them ~5%.
    assert before < 0.1 and after > 3 * before


def test_pooled_model_fine_tunes_on_pooled_tiles() -> None:
    adapter = tiny_adapter().with_options(hr_pool=2)
    tiles = [np.full((336, 336, 3), RED, dtype=np.uint8)] * 2
    visual = VisualInput(tiles[0] // 2, tiles, [(0, 0), (0, 1)], keep=np.ones(32, dtype=bool))
    example = SFTExample(visual, "what color is the ship ?", "red")
    batch = embed_batch(adapter, [example])
    # Unpooled thumbnail, two 4 x 4 pooled tiles side by side: 4 rows, each closed by a newline.
    assert len(batch.tile_positions[0]) == 32
    vision = batch.tile_positions[0]
    assert int(vision[-1] - vision[0]) + 1 == 32 + 3
    heads = TokenHeads(adapter.hidden_size, {"colour": 2})
    visual.token_labels = {"colour": np.zeros(32, dtype=np.int64)}
    assert torch.isfinite(heads.loss(adapter, encode_batch(adapter, [example]), [example]))
