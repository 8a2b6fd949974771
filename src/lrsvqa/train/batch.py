"""Turn raw samples into the embedded, padded batch both teacher and student read.

The sequence of a sample is ``[prefix, vision tokens, dialogue]`` where the vision
tokens are laid out by :func:`layout_vision_tokens` exactly as coarse-to-fine inference
lays out a level: thumbnail tokens, then the level's tokens in raster order with the
model's ``image_newline`` closing every row. Training on the inference layout keeps the
positions (and thus rotary phases) the RFM learns on equal to those it is used on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.layout import layout_vision_tokens
from lrsvqa.train.data import RawSample


@dataclass
class DistillBatch:
    """A right-padded batch of embedded sequences and the masks the loss needs.

    Attributes:
        inputs_embeds: (B, n, d) embeddings, zero on padding.
        attention_mask: (B, n) long, 1 for real tokens.
        query_positions: (B, J) index of each turn's last prompt token; samples with
            fewer turns repeat their last query (masked out by ``turn_mask``).
        turn_mask: (B, J) bool, True for real turns.
        vision_mask: (B, n) bool, True on vision tokens (thumbnail, tiles, newlines).
        hr_mask: (B, n) bool, True on the high-resolution tile tokens only.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    query_positions: torch.Tensor
    turn_mask: torch.Tensor
    vision_mask: torch.Tensor
    hr_mask: torch.Tensor


def _sequence(
    adapter: LlavaAdapter, sample: RawSample, thumbnail: torch.Tensor, tiles: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings, vision mask, high-res mask and query positions of one sample."""
    hr_tokens = tiles.reshape(-1, adapter.hidden_size)
    vision, hr_index, _ = layout_vision_tokens(
        hr_tokens, sample.positions, thumbnail, adapter.image_newline
    )
    prefix = adapter.embed_ids(sample.text.prefix_ids)
    suffix = adapter.embed_ids(sample.text.suffix_ids)
    embeds = torch.cat([prefix, vision.to(prefix.dtype), suffix])
    start, n_vision = prefix.shape[0], vision.shape[0]
    vision_mask = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
    vision_mask[start : start + n_vision] = True
    hr_mask = torch.zeros_like(vision_mask)
    hr_mask[torch.as_tensor(start + hr_index, device=embeds.device)] = True
    queries = start + n_vision + torch.tensor(sample.text.query_offsets, device=embeds.device)
    return embeds, vision_mask, hr_mask, queries


@torch.no_grad()
def embed_batch(adapter: LlavaAdapter, samples: list[RawSample]) -> DistillBatch:
    """Encode the tiles (frozen vision tower + projector) and assemble a padded batch.

    All tiles of the batch go through the vision tower together, which is where most of
    the non-LLM time goes.

    Args:
        adapter: The frozen LLaVA model.
        samples: Samples from :class:`lrsvqa.train.data.ConversationDataset`.
    """
    images = []
    for sample in samples:
        images.append(sample.thumbnail)
        images.extend(sample.tiles)
    encoded = adapter.encode_tiles(images)
    pieces, cursor = [], 0
    for sample in samples:
        count = len(sample.tiles)
        thumbnail = encoded[cursor]
        tiles = adapter.pool_tiles(encoded[cursor + 1 : cursor + 1 + count])
        pieces.append(_sequence(adapter, sample, thumbnail, tiles))
        cursor += 1 + count
    batch, n = len(samples), max(p[0].shape[0] for p in pieces)
    turns = max(p[3].shape[0] for p in pieces)
    first = pieces[0][0]
    embeds = first.new_zeros(batch, n, first.shape[-1])
    attention_mask = torch.zeros(batch, n, dtype=torch.long, device=first.device)
    vision_mask = torch.zeros(batch, n, dtype=torch.bool, device=first.device)
    hr_mask = torch.zeros_like(vision_mask)
    queries = torch.zeros(batch, turns, dtype=torch.long, device=first.device)
    turn_mask = torch.zeros(batch, turns, dtype=torch.bool, device=first.device)
    for row, (sample_embeds, sample_vision, sample_hr, sample_queries) in enumerate(pieces):
        length, j = sample_embeds.shape[0], sample_queries.shape[0]
        embeds[row, :length] = sample_embeds
        attention_mask[row, :length] = 1
        vision_mask[row, :length] = sample_vision
        hr_mask[row, :length] = sample_hr
        queries[row, :j] = sample_queries
        queries[row, j:] = sample_queries[-1]
        turn_mask[row, :j] = True
    return DistillBatch(embeds, attention_mask, queries, turn_mask, vision_mask, hr_mask)
