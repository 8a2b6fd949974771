"""How many vision tokens each built-in strategy encodes and feeds the LLM (and the RFM).

Pure arithmetic on the image size and the model's dimensions, one counter per
strategy registered next to its factory, so ``lrsvqa flops`` counts with the very
options ``lrsvqa eval`` runs with. :mod:`lrsvqa.flops` turns the counts into FLOPs.

Two architecture options of :class:`~lrsvqa.flops.ModelDims` decide the counts:
``hr_pool`` (the paper's model pools every high-resolution tile's 24 x 24 grid 2 x 2
to 12 x 12, the thumbnail staying at 576) and ``image_newline`` (Tab. 4 counts no
row-end tokens). With both, the paper's first row is reproduced: anyres-p144 on a
4,000 px image, 83,520 tokens encoded, 21,312 into the LLM, 243.37 TFLOPs for Qwen2-7B.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable

from lrsvqa import budgets
from lrsvqa.flops import ModelDims, TokenCount
from lrsvqa.imagery.anyres import AnyresGeometry
from lrsvqa.imagery.pyramid import Level, PyramidConfig, build_pyramid
from lrsvqa.strategies.options import (
    C2FNoDipOptions,
    C2FOptions,
    FastVOptions,
    FullResOptions,
    GridOptions,
    NativeOptions,
    PDropOptions,
    PruMergeOptions,
    VisionZipOptions,
)
from lrsvqa.strategies.registry import CountInput, NoOptions


def _llm(dims: ModelDims, vision_tokens: int) -> tuple[int, ...]:
    """Every LLM layer sees the same vision tokens."""
    return (vision_tokens,) * dims.num_layers


def _anyres(image: CountInput, max_tiles: int) -> AnyresGeometry:
    return AnyresGeometry.for_image(image.height, image.width, max_tiles, image.dims.tile_size)


def _levels(image: CountInput, pyramid: PyramidConfig) -> tuple[Level, ...]:
    """The DIP levels of the image."""
    return build_pyramid(
        image.height, image.width, pyramid.tile_size, pyramid.min_short_side, pyramid.dip_rule
    ).levels


def count_thumbnail(image: CountInput, options: NoOptions) -> TokenCount:
    """LLaVA-1.5 style: one ``B x B`` view of the whole image."""
    tokens = image.dims.tokens_per_tile
    return TokenCount("thumbnail", tokens, _llm(image.dims, tokens))


def count_anyres(image: CountInput, options: NoOptions, max_tiles: int) -> TokenCount:
    """LLaVA-NeXT anyres-pX: thumbnail + unpadded (pooled) grid + row ends."""
    dims = image.dims
    geometry = _anyres(image, max_tiles)
    encoded = (1 + geometry.num_tiles) * dims.tokens_per_tile
    rows, cols = geometry.unpadded_tokens(dims.hr_tokens_per_side)
    tokens = dims.tokens_per_tile + rows * cols + dims.newlines(rows)
    return TokenCount(f"anyres-p{max_tiles}", encoded, _llm(dims, tokens))


def count_fullres(image: CountInput, options: FullResOptions) -> TokenCount:
    """Every tile of the original-resolution DIP level, plus the thumbnail.

    Counted whatever ``max_tiles`` says: the theoretical cost of the unlimited grid is
    what paper Fig. 1(b) plots, even where the strategy refuses to run it.
    """
    dims = image.dims
    finest = _levels(image, PyramidConfig(tile_size=dims.tile_size))[-1]
    rows = finest.grid[0] * dims.hr_tokens_per_side
    tokens = dims.tokens_per_tile + finest.num_tiles * dims.hr_tokens_per_tile
    encoded = (1 + finest.num_tiles) * dims.tokens_per_tile
    return TokenCount("fullres", encoded, _llm(dims, tokens + dims.newlines(rows)))


def _per_crop(
    name: str, image: CountInput, options: GridOptions, kept: Callable[[int], int]
) -> TokenCount:
    """Reduction of every anyres crop: ``kept(n)`` of the ``n`` tokens it gives the LLM.

    The thumbnail gives ``B/14`` squared tokens, a pooled tile ``hr_tokens_per_tile``.
    """
    dims = image.dims
    tiles = _anyres(image, options.grid_tiles).num_tiles
    tokens = kept(dims.tokens_per_tile) + tiles * kept(dims.hr_tokens_per_tile)
    return TokenCount(name, (1 + tiles) * dims.tokens_per_tile, _llm(dims, tokens))


def count_visionzip(image: CountInput, options: VisionZipOptions) -> TokenCount:
    """VisionZip: dominant + contextual tokens of every crop (at most all of them)."""
    retained = sum(budgets.visionzip_split(options.retained, image.dims.tokens_per_tile))
    return _per_crop("visionzip", image, options, lambda n: min(n, retained))


def count_prumerge(image: CountInput, options: PruMergeOptions) -> TokenCount:
    """PruMerge+: ``ceil(ratio * n)`` merged tokens of every crop."""
    return _per_crop(
        "prumerge++", image, options, lambda n: budgets.prumerge_budget(n, options.ratio)
    )


def _drop(name: str, image: CountInput, options: FastVOptions | PDropOptions) -> TokenCount:
    """FastV / PDrop: the anyres sequence, cut before the drop layers."""
    full = count_anyres(image, NoOptions(), options.grid_tiles)
    num_layers = image.dims.num_layers
    drops = options.drops(num_layers)
    per_layer = budgets.vision_tokens_per_layer(full.tokens_to_llm, num_layers, drops)
    return TokenCount(name, full.vision_tokens_encoded, tuple(per_layer))


def count_fastv(image: CountInput, options: FastVOptions) -> TokenCount:
    """FastV: one cut of ``ratio`` before layer ``K``."""
    return _drop("fastv", image, options)


def count_pdrop(image: CountInput, options: PDropOptions) -> TokenCount:
    """PyramidDrop: a cut of ``ratio`` at each stage boundary."""
    return _drop("pdrop", image, options)


def _block_rows(tiles: int, level: Level) -> int:
    """Tile rows spanned by ``tiles`` tiles assumed to form the squarest block."""
    return min(level.grid[0], math.ceil(math.sqrt(tiles)))


def _retained(alpha: float, tokens: int) -> int:
    """Coarse-to-fine's top-alpha count (at least one token)."""
    return max(1, math.ceil(alpha * tokens))


def count_c2f(image: CountInput, options: C2FOptions) -> TokenCount:
    """Coarse-to-fine on the DIP, with ``tiles_per_level[i]`` tiles at finer level ``i + 2``.

    Level 1 is encoded whole; each finer level is entered with its average tile count
    (capped by the level; the last number repeats for deeper levels) while that count
    is positive and at most ``N_max``. The RFM sees thumbnail + the level's (pooled)
    tile tokens + row ends at every level reached; the LLM sees thumbnail + the
    top-alpha tokens of the last level + row ends. Row ends of selected tiles are an
    estimate (tiles taken as a square block, at most one row per kept token).

    Raises:
        ValueError: No ``tiles_per_level`` (it depends on the questions).
    """
    per_level = image.tiles_per_level
    if per_level is None:
        raise ValueError(
            "c2f depends on the question: give its mean tiles per level (--c2f-tiles) "
            "or an eval answers file to average them from (--trace)"
        )
    dims = image.dims
    g, thumb, tile = dims.hr_tokens_per_side, dims.tokens_per_tile, dims.hr_tokens_per_tile
    levels = _levels(image, options.pyramid(dims.tile_size))
    tiles, rows = [levels[0].num_tiles], [levels[0].grid[0]]
    for depth, level in enumerate(levels[1:]):
        wanted = per_level[min(depth, len(per_level) - 1)] if per_level else 0
        count = round(wanted)
        if not 0 < count <= options.max_tiles:
            break
        tiles.append(min(count, level.num_tiles))
        rows.append(_block_rows(tiles[-1], level))
    rfm = tuple(thumb + t * tile + dims.newlines(r * g) for t, r in zip(tiles, rows, strict=True))
    kept = _retained(options.alpha, tiles[-1] * tile)
    llm = thumb + kept + min(kept, dims.newlines(rows[-1] * g))
    return TokenCount("c2f", (1 + sum(tiles)) * thumb, _llm(dims, llm), rfm)


def count_c2f_nodip(image: CountInput, options: C2FNoDipOptions) -> TokenCount:
    """RFM pruning on one anyres grid of at most ``grid_tiles`` tiles (no pyramid)."""
    dims = image.dims
    geometry = _anyres(image, options.grid_tiles)
    thumb, tile = dims.tokens_per_tile, dims.hr_tokens_per_tile
    rows = dims.newlines(geometry.grid[0] * dims.hr_tokens_per_side)
    rfm = thumb + geometry.num_tiles * tile + rows
    kept = _retained(options.alpha, geometry.num_tiles * tile)
    llm = thumb + kept + min(kept, rows)
    return TokenCount("c2f-nodip", (1 + geometry.num_tiles) * thumb, _llm(dims, llm), (rfm,))


def c2f_tiles_from_trace(lines: Iterable[str]) -> tuple[float, ...]:
    """Mean tiles coarse-to-fine encoded at each level below the first, from eval records.

    Args:
        lines: JSON Lines of ``lrsvqa eval`` answers whose ``trace`` has
            ``tiles_per_level`` (tiles encoded at each level reached, as the c2f
            strategies write it).

    Returns:
        Per finer level, the mean over the records that reached it; ``(0.0,)`` when no
        record descended (c2f then stops at level 1).

    Raises:
        ValueError: No record carries a c2f trace.
    """
    per_level: list[list[int]] = []
    records = 0
    for line in lines:
        if not line.strip():
            continue
        tiles = (json.loads(line).get("trace") or {}).get("tiles_per_level")
        if not isinstance(tiles, list) or not tiles:
            continue
        records += 1
        for depth, count in enumerate(tiles[1:]):
            if depth == len(per_level):
                per_level.append([])
            per_level[depth].append(int(count))
    if not records:
        raise ValueError("no record with a coarse-to-fine trace (trace.tiles_per_level)")
    return tuple(sum(c) / len(c) for c in per_level) if per_level else (0.0,)


def count_native(image: CountInput, options: NativeOptions) -> TokenCount:
    """``native``: the whole image resized by Qwen-VL's rule, one token per merged patch."""
    unit = image.dims.patch_size
    height, width = budgets.native_size(
        image.height, image.width, unit, options.min_pixels, options.max_pixels
    )
    tokens = (height // unit) * (width // unit)
    return TokenCount("native", tokens, _llm(image.dims, tokens))
