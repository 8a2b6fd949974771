"""Where vision tokens sit: tile-major grid positions and the LLM's vision sequence.

Shared by coarse-to-fine inference and by training, which must build the very layout
inference builds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class VisionSegment:
    """Vision tokens of one grid (the thumbnail, or one DIP level) as the LLM sees them.

    Models with 2-D positions (Qwen-VL's M-RoPE) place each token by its cell; models
    with 1-D positions (LLaVA) ignore segments.

    Attributes:
        positions: (m, 2) ``(row, col)`` cells of the tokens present, in sequence order.
        grid: ``(rows, cols)`` of the whole grid, present or pruned.
    """

    positions: np.ndarray
    grid: tuple[int, int]


def tile_token_positions(tiles: list[tuple[int, int]], tokens_per_side: int) -> np.ndarray:
    """Global token-grid ``(row, col)`` of every token of the given tiles, tile-major.

    Token ``t`` of tile ``(r, c)`` sits at ``(r * g + t // g, c * g + t % g)``.
    """
    g = tokens_per_side
    local = np.stack(np.divmod(np.arange(g * g), g), axis=1)
    if not tiles:
        return np.zeros((0, 2), dtype=np.int64)
    origins = np.asarray(tiles, dtype=np.int64) * g
    return (origins[:, None, :] + local[None]).reshape(-1, 2)


def top_alpha(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Indices of the top ``ceil(alpha * n)`` scores (at least one), ties broken by index."""
    count = max(1, math.ceil(alpha * scores.numel()))
    order = torch.argsort(-scores.float(), stable=True)
    return order[:count]


def layout_vision_tokens(
    tokens: torch.Tensor,
    positions: np.ndarray,
    thumbnail: torch.Tensor,
    newline: torch.Tensor | None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Arrange ``[thumbnail, high-res tokens in raster order (+ newline per row)]``.

    With every token of a full grid kept this is exactly LLaVA-NeXT's anyres layout
    (base features, then the grid row by row, each row closed by ``image_newline``).

    Args:
        tokens: (m, hidden) high-resolution tokens.
        positions: (m, 2) their global grid positions.
        thumbnail: (t, hidden) thumbnail tokens.
        newline: The model's end-of-row embedding, or None.

    Returns:
        ``(sequence, hr_index, order)``: the vision sequence, the index of each sorted
        high-res token inside it, and the raster order applied to ``tokens``.
    """
    order = np.lexsort((positions[:, 1], positions[:, 0])) if len(positions) else np.zeros(0, int)
    sorted_tokens = tokens[torch.as_tensor(order, dtype=torch.long, device=tokens.device)]
    pieces = [thumbnail]
    hr_index = np.zeros(len(order), dtype=np.int64)
    cursor = thumbnail.shape[0]
    rows = positions[order, 0] if len(order) else np.zeros(0, int)
    boundaries = np.flatnonzero(np.diff(rows)) + 1 if len(rows) else np.zeros(0, int)
    for chunk_start, chunk_end in zip(
        np.concatenate([[0], boundaries]).astype(int),
        np.concatenate([boundaries, [len(rows)]]).astype(int),
        strict=True,
    ):
        if chunk_end <= chunk_start:
            continue
        pieces.append(sorted_tokens[chunk_start:chunk_end])
        hr_index[chunk_start:chunk_end] = np.arange(cursor, cursor + chunk_end - chunk_start)
        cursor += chunk_end - chunk_start
        if newline is not None:
            pieces.append(newline[None].to(tokens.dtype))
            cursor += 1
    return torch.cat(pieces, dim=0), hr_index, order
