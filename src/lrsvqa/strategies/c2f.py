"""Coarse-to-fine text-guided tile selection and token pruning (paper Alg. 1).

Start from the thumbnail and the coarsest DIP level; the RFM scores that level's
high-resolution tokens; keep the top-alpha proportion; if a finer level exists, map
the kept tokens to the tiles of the next level that cover the same ground and encode
only those; if more than ``max_tiles`` tiles would be needed, or at the last level,
prune to the kept tokens and stop. The LLM then sees ``[thumbnail tokens, retained
tokens in spatial order, text]``.

High-resolution tokens are the adapter's (``tokens_per_side`` per tile side, pooled
where the model pools tiles): the RFM scores those, and a kept token maps to the next
level's tiles by the ground it covers (``tile_size / tokens_per_side`` px of the level).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from lrsvqa.budgets import DEFAULT_ALPHA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_TILES
from lrsvqa.imagery.pyramid import PyramidGeometry
from lrsvqa.models.adapter import LlavaAdapter, PromptParts
from lrsvqa.models.auto import uses_mrope
from lrsvqa.models.layout import layout_vision_tokens, tile_token_positions, top_alpha
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.types import Box


class TileSource(Protocol):
    """Where tiles come from: a :class:`lrsvqa.imagery.tiles.PyramidReader` or equivalent."""

    geometry: PyramidGeometry

    def tile(self, level_index: int, row: int, col: int) -> np.ndarray:
        """The B x B uint8 RGB tile."""
        ...

    def thumbnail(self) -> np.ndarray:
        """The B x B uint8 RGB thumbnail."""
        ...


@dataclass(frozen=True)
class CoarseToFineConfig:
    """Options of Alg. 1.

    Attributes:
        alpha: Proportion of high-resolution tokens kept at each level (top-alpha).
        max_tiles: ``N_max``: stop descending when more next-level tiles are needed.
        fixed_layers: Fix the number of DIP layers reached, thumbnail included (paper
            Tab. 6: 2 = thumbnail + level 1). Descends regardless of ``max_tiles`` and
            stops at the last level of shallower pyramids. None = dynamic (Alg. 1).
        max_new_tokens: Generation budget.
    """

    alpha: float = DEFAULT_ALPHA
    max_tiles: int = DEFAULT_MAX_TILES
    fixed_layers: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {self.max_tiles}")
        if self.fixed_layers is not None and self.fixed_layers < 2:
            raise ValueError(
                f"fixed_layers counts the thumbnail and must be >= 2, got {self.fixed_layers}"
            )


@dataclass
class LevelTrace:
    """What happened at one DIP level.

    ``tokens_encoded`` counts the high-resolution tokens of the encoded tiles the RFM
    scores (after any pooling); the encoder's own output is in
    ``CoarseToFineResult.vision_tokens_encoded``.
    """

    level: int
    downsample: float
    grid: tuple[int, int]
    tiles_available: int
    tiles_encoded: list[tuple[int, int]]
    tokens_encoded: int
    tokens_kept: int
    decision: str
    next_tiles: list[tuple[int, int]] = field(default_factory=list)
    tile_boxes: list[Box] = field(default_factory=list)
    tile_scores: list[float] = field(default_factory=list)


@dataclass
class CoarseToFineResult:
    """Answer plus the trace of where the model looked."""

    answer: str
    levels: list[LevelTrace]
    thumbnail_tokens: int
    retained_tokens: int
    vision_tokens_to_llm: int
    sequence_length: int
    vision_tokens_encoded: int
    final_level: int
    retained_positions: list[tuple[int, int]]
    coarse_scores: np.ndarray | None = None
    retained_scores: list[float] = field(default_factory=list)

    @property
    def selected_boxes(self) -> list[Box]:
        """Original-image boxes of the tiles encoded at the finest level reached."""
        return self.levels[-1].tile_boxes if self.levels else []

    def trace_dict(self) -> dict[str, Any]:
        """JSON-ready trace (no arrays)."""
        return {
            "levels": [asdict(level) for level in self.levels],
            "thumbnail_tokens": self.thumbnail_tokens,
            "retained_tokens": self.retained_tokens,
            "vision_tokens_to_llm": self.vision_tokens_to_llm,
            "sequence_length": self.sequence_length,
            "vision_tokens_encoded": self.vision_tokens_encoded,
            "final_level": self.final_level,
        }


def _rounded(box: Box) -> Box:
    """Pixel box rounded to 0.1 px for readable traces."""
    return tuple(round(v, 1) for v in box)


class CoarseToFine:
    """Alg. 1 over a loaded model, an RFM and a tile source.

    Args:
        adapter: The LLaVA-family model.
        rfm: The Region Focus Module (trained, or training-free).
        config: Alg. 1 options.
    """

    def __init__(
        self, adapter: LlavaAdapter, rfm: RegionFocusModule, config: CoarseToFineConfig
    ) -> None:
        self.adapter = adapter
        self.rfm = rfm
        self.config = config

    def _last_level(self, geometry: PyramidGeometry) -> int:
        if self.config.fixed_layers is None:
            return geometry.num_levels - 1
        return min(self.config.fixed_layers - 1, geometry.num_levels) - 1

    @torch.no_grad()
    def run(self, source: TileSource, question: str) -> CoarseToFineResult:
        """Answer ``question`` about the image behind ``source``."""
        adapter, config, geometry = self.adapter, self.config, source.geometry
        g = adapter.tokens_per_side
        prompt = adapter.prompt_parts(question)
        thumbnail = adapter.encode_tiles([source.thumbnail()])[0]
        newline = adapter.image_newline
        last_level = self._last_level(geometry)
        forced = config.fixed_layers is not None
        level_index = 0
        tiles = geometry.levels[0].tiles()
        traces: list[LevelTrace] = []
        encoded_total = thumbnail.shape[0]
        coarse_scores = None
        while True:
            level = geometry.levels[level_index]
            hr = adapter.encode_hr_tiles([source.tile(level_index, r, c) for r, c in tiles])
            hr = hr.reshape(-1, hr.shape[-1])
            positions = tile_token_positions(tiles, g)
            encoded_total += len(tiles) * adapter.thumbnail_tokens
            sequence, hr_index, order = layout_vision_tokens(hr, positions, thumbnail, newline)
            embeds, vision_slice = adapter.assemble(prompt, sequence)
            sorted_positions = positions[order]
            position_ids = self._position_ids(prompt, level.grid, sorted_positions)
            scores = self.score_level(
                embeds, vision_slice, hr_index, level_index, sorted_positions, position_ids
            )
            if level_index == 0:
                coarse_scores = self._score_map(level.token_grid(g), sorted_positions, scores)
            keep = top_alpha(scores, config.alpha).cpu().numpy()
            trace = LevelTrace(
                level=level_index + 1,
                downsample=level.downsample,
                grid=level.grid,
                tiles_available=level.num_tiles,
                tiles_encoded=list(tiles),
                tokens_encoded=int(hr.shape[0]),
                tokens_kept=len(keep),
                decision="prune",
                tile_boxes=[_rounded(level.tile_image_box(r, c)) for r, c in tiles],
                tile_scores=self._tile_scores(tiles, sorted_positions, scores, g),
            )
            traces.append(trace)
            if level_index < last_level:
                kept_positions = [tuple(p) for p in sorted_positions[keep].tolist()]
                next_tiles = geometry.next_level_tiles(level_index, kept_positions, g)
                trace.next_tiles = next_tiles
                if not next_tiles:
                    trace.decision = "prune (kept tokens cover only padding)"
                elif forced or len(next_tiles) <= config.max_tiles:
                    trace.decision = "descend"
                    tiles = next_tiles
                    level_index += 1
                    continue
                else:
                    trace.decision = f"prune (next level needs {len(next_tiles)} > N_max tiles)"
            break
        hr_sorted = hr[torch.as_tensor(order, dtype=torch.long)]
        keep_sorted = np.sort(keep)
        retained = hr_sorted[torch.as_tensor(keep_sorted, dtype=torch.long)]
        retained_positions = sorted_positions[keep_sorted]
        final_sequence, _, _ = layout_vision_tokens(
            retained, retained_positions, thumbnail, newline
        )
        embeds, _ = adapter.assemble(prompt, final_sequence)
        position_ids = self._position_ids(prompt, level.grid, retained_positions)
        answer = adapter.generate(embeds, config.max_new_tokens, position_ids=position_ids)
        return CoarseToFineResult(
            answer=answer,
            levels=traces,
            thumbnail_tokens=int(thumbnail.shape[0]),
            retained_tokens=int(retained.shape[0]),
            vision_tokens_to_llm=int(final_sequence.shape[0]),
            sequence_length=int(embeds.shape[1]),
            vision_tokens_encoded=int(encoded_total),
            final_level=level_index + 1,
            retained_positions=[tuple(p) for p in retained_positions.tolist()],
            coarse_scores=coarse_scores,
            retained_scores=scores[torch.as_tensor(keep_sorted, dtype=torch.long)].tolist(),
        )

    def _position_ids(
        self, prompt: PromptParts, grid: tuple[int, int], positions: np.ndarray
    ) -> torch.Tensor | None:
        """M-RoPE positions of ``[prompt, thumbnail, level tokens at positions]``, or None.

        None for models with 1-D positions (LLaVA: the sequence index).
        """
        adapter = self.adapter
        if not uses_mrope(adapter):
            return None
        segments = [adapter.thumbnail_segment(), adapter.segment_of_tiles(grid, positions)]
        return adapter.position_ids(prompt, segments)

    def score_level(
        self,
        embeds: torch.Tensor,
        vision_slice: slice,
        hr_index: np.ndarray,
        level_index: int,
        positions: np.ndarray,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalised RFM scores of a level's high-resolution tokens (Alg. 1 lines 3-4).

        Args:
            embeds: The assembled sequence ``[system, thumbnail, level tokens, text]``.
            vision_slice: Where the vision tokens sit in it.
            hr_index: Index of each high-resolution token inside the vision tokens.
            level_index: The level being scored (0 = coarsest).
            positions: Global grid positions of those tokens, aligned with ``hr_index``.
            position_ids: The sequence's M-RoPE positions (None: 1-D, LLaVA).

        Returns:
            One score per high-resolution token, summing to one.
        """
        scores = self.rfm.vision_scores(embeds, vision_slice, position_ids)
        scores = scores[torch.as_tensor(hr_index)]
        return scores / scores.sum().clamp_min(torch.finfo(scores.dtype).tiny)

    @staticmethod
    def _tile_scores(
        tiles: list[tuple[int, int]], positions: np.ndarray, scores: torch.Tensor, g: int
    ) -> list[float]:
        """Each encoded tile's share of the level's RFM score (its tokens' scores summed)."""
        totals = {tile: 0.0 for tile in tiles}
        for (row, col), score in zip(positions.tolist(), scores.float().tolist(), strict=True):
            totals[(row // g, col // g)] += score
        return [round(totals[tile], 6) for tile in tiles]

    @staticmethod
    def _score_map(
        grid: tuple[int, int], positions: np.ndarray, scores: torch.Tensor
    ) -> np.ndarray:
        """Scatter token scores into the level's token grid (for the attention overlay)."""
        score_map = np.zeros(grid, dtype=np.float32)
        score_map[positions[:, 0], positions[:, 1]] = scores.float().cpu().numpy()
        return score_map
