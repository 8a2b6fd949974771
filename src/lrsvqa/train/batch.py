"""The one batch builder of SFT and distillation: samples to embedded, padded sequences.

The sequence of a sample is ``[prefix, vision tokens, dialogue]`` where the vision
tokens are laid out by :func:`layout_vision_tokens` exactly as coarse-to-fine inference
lays out a level: thumbnail tokens, then the level's (kept) tokens in raster order with
the model's ``image_newline`` closing every row. Training on the inference layout keeps
the positions (and thus rotary phases) the model and the RFM learn on equal to those
they are used on.

Distillation reads :class:`~lrsvqa.train.data.RawSample` (chat-templated dialogues,
frozen encoder: call under ``torch.no_grad``); SFT reads :class:`SFTExample` (one
question, its answer as labels, pruned tiles, gradients through the vision tower).
Both go through :func:`embed_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lrsvqa.models.adapter import LlavaAdapter, PromptParts
from lrsvqa.models.auto import uses_mrope
from lrsvqa.models.layout import VisionSegment, layout_vision_tokens, tile_token_positions
from lrsvqa.train.data import RawSample, TextLayout

IGNORE_INDEX = -100


@dataclass
class VisualInput:
    """The visual part of one SFT example.

    Attributes:
        thumbnail: ``B x B`` uint8 RGB thumbnail.
        tiles: ``B x B`` uint8 RGB tiles of one pyramid level.
        positions: Grid position ``(row, col)`` of each tile in its level.
        keep: Optional bool mask over the tiles' tokens (tile-major), as left by pruning.
        token_labels: Optional class index per tile token (tile-major, before ``keep``)
            for each token head, ``IGNORE_INDEX`` where unknown.
        target_tokens: Optional bool mask over the tiles' tokens (tile-major, before
            ``keep``) marking the object the answer depends on, for the grounding loss.
    """

    thumbnail: np.ndarray
    tiles: list[np.ndarray]
    positions: list[tuple[int, int]]
    keep: np.ndarray | None = None
    token_labels: dict[str, np.ndarray] | None = None
    target_tokens: np.ndarray | None = None


@dataclass
class SFTExample:
    """One question-answer pair on one visual input."""

    visual: VisualInput
    question: str
    answer: str


@dataclass
class EmbeddedBatch:
    """A right-padded batch of embedded sequences and the masks the losses need.

    Attributes:
        inputs_embeds: (B, n, d) embeddings, zero on padding.
        attention_mask: (B, n) long, 1 for real tokens.
        labels: (B, n) answer token ids, ``IGNORE_INDEX`` elsewhere.
        query_positions: (B, J) index of each turn's last prompt token; samples with
            fewer turns repeat their last query (masked out by ``turn_mask``).
        turn_mask: (B, J) bool, True for real turns.
        vision_mask: (B, n) bool, True on vision tokens (thumbnail, tiles, newlines).
        hr_mask: (B, n) bool, True on the (kept) high-resolution tile tokens only.
        tile_positions: Per sample, sequence index of every kept tile token.
        target_flags: Per sample, bool per kept tile token in sequence order (None
            without targets).
        position_ids: (3, B, n) M-RoPE positions for Qwen-VL models, laid out as
            inference lays them (:meth:`QwenVLAdapter.position_ids`); None for LLaVA.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    query_positions: torch.Tensor
    turn_mask: torch.Tensor
    vision_mask: torch.Tensor
    hr_mask: torch.Tensor
    tile_positions: list[torch.Tensor]
    target_flags: list[torch.Tensor | None]
    position_ids: torch.Tensor | None = None


def answer_ids(adapter: LlavaAdapter, answer: str) -> torch.Tensor:
    """Token ids the model must produce: the answer, then end-of-sequence."""
    ids = adapter.tokenizer(" " + answer, add_special_tokens=False).input_ids
    return torch.tensor([*ids, adapter.tokenizer.eos_token_id], device=adapter.device)


def as_sample(adapter: LlavaAdapter, example: SFTExample) -> RawSample:
    """An SFT example as a one-turn sample whose answer tokens are the labels."""
    prompt = adapter.prompt_parts(example.question)
    target = answer_ids(adapter, example.answer)
    suffix = torch.cat([prompt.suffix_ids, target])
    labels = torch.full_like(suffix, IGNORE_INDEX)
    labels[-len(target) :] = target
    visual = example.visual
    return RawSample(
        where="sft example",
        text=TextLayout(prompt.prefix_ids, suffix, (len(prompt.suffix_ids) - 1,), labels),
        thumbnail=visual.thumbnail,
        tiles=visual.tiles,
        positions=tile_token_positions(visual.positions, adapter.tokens_per_side),
        keep=visual.keep,
        target_tokens=visual.target_tokens,
    )


def _as_samples(adapter: LlavaAdapter, items: Sequence[SFTExample | RawSample]) -> list[RawSample]:
    return [as_sample(adapter, i) if isinstance(i, SFTExample) else i for i in items]


def _images(item: SFTExample | RawSample) -> tuple[np.ndarray, Sequence[np.ndarray]]:
    visual = item.visual if isinstance(item, SFTExample) else item
    return visual.thumbnail, visual.tiles


def encode_batch(adapter: LlavaAdapter, items: Sequence[SFTExample | RawSample]) -> torch.Tensor:
    """Projected, unpooled tokens of every item's thumbnail then tiles, all through the tower.

    Gradients flow unless the caller disables them (distillation's frozen encoder).
    """
    images = []
    for item in items:
        thumbnail, tiles = _images(item)
        images.append(thumbnail)
        images.extend(tiles)
    return adapter.encode_tiles(images)


def split_encoded(
    adapter: LlavaAdapter, encoded: torch.Tensor, items: Sequence[SFTExample | RawSample]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(thumbnail, tiles)`` tokens of each item, cut from :func:`encode_batch`'s output.

    Tiles are pooled as the model pools high-resolution tiles, as inference feeds them.
    """
    parts, cursor = [], 0
    for item in items:
        count = len(_images(item)[1])
        tiles = adapter.pool_tiles(encoded[cursor + 1 : cursor + 1 + count])
        parts.append((encoded[cursor], tiles))
        cursor += 1 + count
    return parts


def _sequence(
    adapter: LlavaAdapter, sample: RawSample, thumbnail: torch.Tensor, tiles: torch.Tensor
) -> dict[str, torch.Tensor | None]:
    """Embeddings, labels, masks, query and tile positions and target flags of one sample."""
    tokens = tiles.reshape(-1, tiles.shape[-1])
    positions, flags = sample.positions, sample.target_tokens
    grid = tuple(int(side) for side in positions.max(axis=0) + 1) if len(positions) else (0, 0)
    if sample.keep is not None:
        index = torch.as_tensor(np.flatnonzero(sample.keep), device=tokens.device)
        tokens, positions = tokens[index], positions[sample.keep]
        flags = flags[sample.keep] if flags is not None else None
    vision, hr_index, order = layout_vision_tokens(
        tokens, positions, thumbnail, adapter.image_newline
    )
    text = sample.text
    prefix = adapter.embed_ids(text.prefix_ids)
    # The last answer is looked up on its own, as SFT always did: embedding gradients
    # then sum in the same order, so a recipe retrains to the same weights.
    answer = text.query_offsets[-1] + 1
    suffix = [
        adapter.embed_ids(text.suffix_ids[:answer]),
        adapter.embed_ids(text.suffix_ids[answer:]),
    ]
    embeds = torch.cat([prefix, vision.to(prefix.dtype), *suffix])
    start, n_vision = prefix.shape[0], vision.shape[0]
    device = embeds.device
    vision_mask = torch.zeros(embeds.shape[0], dtype=torch.bool, device=device)
    vision_mask[start : start + n_vision] = True
    tile_positions = torch.as_tensor(start + hr_index, device=device)
    hr_mask = torch.zeros_like(vision_mask)
    hr_mask[tile_positions] = True
    labels = torch.full((embeds.shape[0],), IGNORE_INDEX, dtype=torch.long, device=device)
    if text.label_ids is not None:
        labels[start + n_vision :] = text.label_ids.to(device)
    queries = start + n_vision + torch.tensor(text.query_offsets, device=device)
    targets = None
    if flags is not None and flags.any():
        targets = torch.as_tensor(flags[order], device=device)
    rope = None
    if uses_mrope(adapter):
        # The sample's tiles span the level's grid, pruned tokens or not (as inference).
        segments = [adapter.thumbnail_segment(), VisionSegment(positions[order], grid)]
        parts = PromptParts(text.prefix_ids, text.suffix_ids)
        rope = adapter.position_ids(parts, segments)[:, 0]
    return {
        "rope": rope,
        "embeds": embeds,
        "labels": labels,
        "vision": vision_mask,
        "hr": hr_mask,
        "queries": queries,
        "tiles": tile_positions,
        "targets": targets,
    }


def embed_batch(
    adapter: LlavaAdapter,
    items: Sequence[SFTExample | RawSample],
    encoded: torch.Tensor | None = None,
) -> EmbeddedBatch:
    """Encode the images (unless ``encoded`` is given) and assemble a padded batch.

    Args:
        adapter: The model.
        items: SFT examples or distillation samples.
        encoded: Output of :func:`encode_batch` for ``items`` when the caller has it.
    """
    if encoded is None:
        encoded = encode_batch(adapter, items)
    samples = _as_samples(adapter, items)
    pieces = [
        _sequence(adapter, sample, thumbnail, tiles)
        for sample, (thumbnail, tiles) in zip(
            samples, split_encoded(adapter, encoded, items), strict=True
        )
    ]
    batch, n = len(pieces), max(p["embeds"].shape[0] for p in pieces)
    turns = max(p["queries"].shape[0] for p in pieces)
    first = pieces[0]["embeds"]
    device = first.device
    embeds = first.new_zeros(batch, n, first.shape[-1])
    attention_mask = torch.zeros(batch, n, dtype=torch.long, device=device)
    labels = torch.full((batch, n), IGNORE_INDEX, dtype=torch.long, device=device)
    vision_mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
    hr_mask = torch.zeros_like(vision_mask)
    rope = None
    if pieces[0]["rope"] is not None:
        rope = torch.zeros(3, batch, n, dtype=torch.long, device=device)
    queries = torch.zeros(batch, turns, dtype=torch.long, device=device)
    turn_mask = torch.zeros(batch, turns, dtype=torch.bool, device=device)
    for row, piece in enumerate(pieces):
        length, j = piece["embeds"].shape[0], piece["queries"].shape[0]
        embeds[row, :length] = piece["embeds"]
        attention_mask[row, :length] = 1
        labels[row, :length] = piece["labels"]
        vision_mask[row, :length] = piece["vision"]
        hr_mask[row, :length] = piece["hr"]
        if rope is not None:
            rope[:, row, :length] = piece["rope"]
        queries[row, :j] = piece["queries"]
        queries[row, j:] = piece["queries"][-1]
        turn_mask[row, :j] = True
    return EmbeddedBatch(
        embeds,
        attention_mask,
        labels,
        queries,
        turn_mask,
        vision_mask,
        hr_mask,
        [p["tiles"] for p in pieces],
        [p["targets"] for p in pieces],
        rope,
    )
