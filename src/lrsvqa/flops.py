"""Theoretical FLOPs of the LLM part for the vision tokens, per strategy and image size.

Pure arithmetic: no torch, no weights. The per-layer cost is the formula FastV
(Chen et al., 2024) and PyramidDrop (Xing et al., 2024) use for a decoder layer on
``n`` tokens with hidden size ``d`` and MLP intermediate size ``m``::

    4 n d^2 + 2 n^2 d + 3 n d m

(q/k/v/o projections, attention scores and weighted sum, the three SwiGLU matrices),
summed over the layers with each layer's own ``n``. As in the LRS-VQA paper's Tab. 4,
``n`` counts only the vision tokens after the projector. The Region Focus Module of
coarse-to-fine is counted the same way: its ``R`` layers on the vision tokens it sees
at each pyramid level.

Two architecture options decide the counts: ``hr_pool`` (the paper's model pools
every high-resolution tile's 24 x 24 grid 2 x 2 to 12 x 12, the thumbnail staying
at 576; ``get_2dPool`` in the authors' ``llava_arch.py``) and ``image_newline``
(Tab. 4 counts no row-end tokens). With both, the paper's first row is reproduced:
anyres-p144 on a 4,000 px image, 83,520 tokens encoded, 21,312 into the LLM,
243.37 TFLOPs for Qwen2-7B. Each other row follows from its method's own rule on
that pooled sequence (see the counters' docstrings).

Model dimensions come from a Hugging Face LLaVA ``config.json`` (no weights needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrsvqa import budgets
from lrsvqa.imagery.anyres import AnyresGeometry
from lrsvqa.imagery.pyramid import DEFAULT_DIP_RULE, DEFAULT_MIN_SHORT_SIDE, Level, build_pyramid

# The paper's defaults for coarse-to-fine (Sec. 5.1): alpha 25 %, N_max 80, 4 RFM layers.
C2F_ALPHA = 0.25
C2F_MAX_TILES = 80
RFM_LAYERS = 4
# Tab. 4 compares the reduction methods on top of anyres-p144.
REDUCTION_GRID_TILES = 144

STRATEGY_NAMES = (
    "thumbnail",
    "fullres",
    "anyres-p4",
    "anyres-p9",
    "anyres-p25",
    "anyres-p144",
    "visionzip",
    "prumerge++",
    "fastv",
    "pdrop",
    "c2f",
    "c2f-nodip",
)


def layer_flops(tokens: int, hidden: int, intermediate: int) -> int:
    """FLOPs of one decoder layer on ``tokens`` tokens: ``4nd^2 + 2n^2d + 3ndm``."""
    n, d, m = tokens, hidden, intermediate
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def stack_flops(tokens_per_layer: Iterable[int], hidden: int, intermediate: int) -> int:
    """FLOPs of a stack of layers, each on its own token count."""
    return sum(layer_flops(n, hidden, intermediate) for n in tokens_per_layer)


@dataclass(frozen=True)
class ModelDims:
    """What the FLOPs count needs to know about a LLaVA model.

    Attributes:
        hidden_size: LLM hidden size ``d``.
        intermediate_size: LLM MLP intermediate size ``m``.
        num_layers: LLM decoder layers ``M``.
        tile_size: Vision-encoder input side ``B``.
        patch_size: Vision-encoder patch side.
        image_newline: Whether each token row is closed by ``image_newline``
            (LLaVA-NeXT and later; not LLaVA-1.5).
        rfm_layers: Layers ``R`` of the Region Focus Module counted per level.
        hr_pool: Stride of the pooling of every high-resolution tile's token grid
            (1 = none, 2 = the paper's model); the thumbnail is never pooled.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    tile_size: int = 336
    patch_size: int = 14
    image_newline: bool = True
    rfm_layers: int = RFM_LAYERS
    hr_pool: int = 1

    @property
    def tokens_per_side(self) -> int:
        """Vision tokens per tile side."""
        return self.tile_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        """Vision tokens per tile out of the encoder (and of the unpooled thumbnail)."""
        return self.tokens_per_side**2

    @property
    def hr_tokens_per_side(self) -> int:
        """Tokens per high-resolution tile side after pooling (``ceil``, as bilinear)."""
        return math.ceil(self.tokens_per_side / self.hr_pool)

    @property
    def hr_tokens_per_tile(self) -> int:
        """Tokens per high-resolution tile after pooling."""
        return self.hr_tokens_per_side**2

    def newlines(self, token_rows: int) -> int:
        """Row-end tokens closing ``token_rows`` rows (0 without ``image_newline``)."""
        return token_rows if self.image_newline else 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], rfm_layers: int = RFM_LAYERS) -> ModelDims:
        """Read the dimensions from a LLaVA config dictionary (``config.json`` contents).

        ``hr_pool`` comes from the config's ``hr_pool`` key, or the authors'
        ``mm_spatial_pool_stride``, where it has one (1 if not), as the model adapter reads it.

        Checkpoints saved by ``transformers`` omit values equal to their class
        defaults (e.g. ``hidden_size`` 4096 of a Mistral text config); those are then
        filled in from the ``transformers`` config class, imported only in that case.
        """
        text = dict(config.get("text_config") or {})
        vision = dict(config.get("vision_config") or {})
        text_keys = ("hidden_size", "intermediate_size", "num_hidden_layers")
        vision_keys = ("image_size", "patch_size")
        if any(k not in text for k in text_keys) or any(k not in vision for k in vision_keys):
            from transformers import AutoConfig

            full = AutoConfig.for_model(**dict(config))
            text = {k: text.get(k, getattr(full.text_config, k)) for k in text_keys}
            vision = {k: vision.get(k, getattr(full.vision_config, k)) for k in vision_keys}
        return cls(
            hidden_size=int(text["hidden_size"]),
            intermediate_size=int(text["intermediate_size"]),
            num_layers=int(text["num_hidden_layers"]),
            tile_size=int(vision["image_size"]),
            patch_size=int(vision["patch_size"]),
            image_newline=config.get("model_type", "llava_next") != "llava",
            rfm_layers=rfm_layers,
            hr_pool=int(config.get("hr_pool") or config.get("mm_spatial_pool_stride") or 1),
        )


def load_model_dims(path: str | Path, rfm_layers: int = RFM_LAYERS) -> ModelDims:
    """:meth:`ModelDims.from_config` of a ``config.json`` file or a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable model config ({error})") from error
    return ModelDims.from_config(config, rfm_layers)


@dataclass(frozen=True)
class TokenCount:
    """Vision tokens one strategy encodes and feeds to each LLM (and RFM) layer.

    Attributes:
        strategy: Strategy name.
        vision_tokens_encoded: Tokens out of the vision encoder + projector.
        llm_vision_tokens: Vision tokens entering each LLM layer.
        rfm_vision_tokens: Vision tokens the RFM sees on each of its passes (one per
            pyramid level reached), empty for strategies without an RFM.
    """

    strategy: str
    vision_tokens_encoded: int
    llm_vision_tokens: tuple[int, ...]
    rfm_vision_tokens: tuple[int, ...] = ()

    @property
    def tokens_to_llm(self) -> int:
        """Vision tokens entering the first LLM layer."""
        return self.llm_vision_tokens[0] if self.llm_vision_tokens else 0

    def flops(self, dims: ModelDims) -> int:
        """LLM FLOPs over all layers, plus ``R`` RFM layers per RFM pass."""
        d, m = dims.hidden_size, dims.intermediate_size
        rfm = sum(dims.rfm_layers * layer_flops(n, d, m) for n in self.rfm_vision_tokens)
        return stack_flops(self.llm_vision_tokens, d, m) + rfm

    def tflops(self, dims: ModelDims) -> float:
        """:meth:`flops` in units of 10^12."""
        return self.flops(dims) / 1e12


@dataclass(frozen=True)
class CountOptions:
    """Strategy options the counts depend on (defaults: the LRS-VQA paper's settings).

    Attributes:
        reduction_grid_tiles: Anyres grid under VisionZip, PruMerge+, FastV and PDrop.
        visionzip_retained: VisionZip tokens kept per tile.
        prumerge_ratio: PruMerge+ retain ratio per tile.
        fastv_layer: FastV drop layer ``K``.
        fastv_ratio: FastV drop ratio ``R``.
        pdrop_layers: PDrop stage boundaries (None: scaled 7, 14, 21 of 28).
        pdrop_ratio: PDrop ratio dropped at each boundary.
        alpha: Coarse-to-fine retain ratio.
        max_tiles: Coarse-to-fine ``N_max``; also c2f-nodip's grid budget.
        c2f_tiles: Average tiles coarse-to-fine encodes at each level below the
            first, one number per level (it depends on the question; the last number
            repeats for deeper levels; 0 = stops there). Required for ``c2f``.
        min_short_side: The 1,008 px bound of the coarsest DIP level.
        dip_rule: ``"official"`` or ``"paper-text"`` DIP levels
            (:func:`lrsvqa.imagery.pyramid.level_sizes`).
    """

    reduction_grid_tiles: int = REDUCTION_GRID_TILES
    visionzip_retained: int = budgets.VISIONZIP_RETAINED
    prumerge_ratio: float = budgets.PRUMERGE_RATIO
    fastv_layer: int = budgets.FASTV_LAYER
    fastv_ratio: float = budgets.FASTV_RATIO
    pdrop_layers: tuple[int, ...] | None = None
    pdrop_ratio: float = budgets.PDROP_RATIO
    alpha: float = C2F_ALPHA
    max_tiles: int = C2F_MAX_TILES
    c2f_tiles: tuple[float, ...] | None = None
    min_short_side: int = DEFAULT_MIN_SHORT_SIDE
    dip_rule: str = DEFAULT_DIP_RULE


def _llm(dims: ModelDims, vision_tokens: int) -> tuple[int, ...]:
    """Every LLM layer sees the same vision tokens."""
    return (vision_tokens,) * dims.num_layers


def thumbnail_count(dims: ModelDims) -> TokenCount:
    """LLaVA-1.5 style: one ``B x B`` view of the whole image."""
    tokens = dims.tokens_per_tile
    return TokenCount("thumbnail", tokens, _llm(dims, tokens))


def _anyres(dims: ModelDims, height: int, width: int, max_tiles: int) -> AnyresGeometry:
    return AnyresGeometry.for_image(height, width, max_tiles, dims.tile_size)


def anyres_count(dims: ModelDims, height: int, width: int, max_tiles: int) -> TokenCount:
    """LLaVA-NeXT anyres-pX: thumbnail + unpadded (pooled) grid + row ends."""
    geometry = _anyres(dims, height, width, max_tiles)
    encoded = (1 + geometry.num_tiles) * dims.tokens_per_tile
    rows, cols = geometry.unpadded_tokens(dims.hr_tokens_per_side)
    tokens = dims.tokens_per_tile + rows * cols + dims.newlines(rows)
    return TokenCount(f"anyres-p{max_tiles}", encoded, _llm(dims, tokens))


def fullres_count(dims: ModelDims, height: int, width: int, options: CountOptions) -> TokenCount:
    """Every tile of the original-resolution DIP level, plus the thumbnail."""
    finest = _levels(dims, height, width, options)[-1]
    rows = finest.grid[0] * dims.hr_tokens_per_side
    tokens = dims.tokens_per_tile + finest.num_tiles * dims.hr_tokens_per_tile
    encoded = (1 + finest.num_tiles) * dims.tokens_per_tile
    return TokenCount("fullres", encoded, _llm(dims, tokens + dims.newlines(rows)))


def _per_crop_count(
    name: str, dims: ModelDims, height: int, width: int, grid_tiles: int, kept: Callable[[int], int]
) -> TokenCount:
    """Reduction of every anyres crop: ``kept(n)`` of the ``n`` tokens it gives the LLM.

    The thumbnail gives ``B/14`` squared tokens, a pooled tile ``hr_tokens_per_tile``.
    """
    tiles = _anyres(dims, height, width, grid_tiles).num_tiles
    tokens = kept(dims.tokens_per_tile) + tiles * kept(dims.hr_tokens_per_tile)
    return TokenCount(name, (1 + tiles) * dims.tokens_per_tile, _llm(dims, tokens))


def visionzip_count(dims: ModelDims, height: int, width: int, options: CountOptions) -> TokenCount:
    """VisionZip: dominant + contextual tokens of every crop (at most all of them)."""
    retained = sum(budgets.visionzip_split(options.visionzip_retained, dims.tokens_per_tile))
    return _per_crop_count(
        "visionzip",
        dims,
        height,
        width,
        options.reduction_grid_tiles,
        lambda n: min(n, retained),
    )


def prumerge_count(dims: ModelDims, height: int, width: int, options: CountOptions) -> TokenCount:
    """PruMerge+: ``ceil(ratio * n)`` merged tokens of every crop."""
    return _per_crop_count(
        "prumerge++",
        dims,
        height,
        width,
        options.reduction_grid_tiles,
        lambda n: budgets.prumerge_budget(n, options.prumerge_ratio),
    )


def drop_count(
    name: str,
    dims: ModelDims,
    height: int,
    width: int,
    drops: Mapping[int, float],
    grid_tiles: int = REDUCTION_GRID_TILES,
) -> TokenCount:
    """FastV / PDrop: the anyres sequence, cut before the drop layers."""
    full = anyres_count(dims, height, width, grid_tiles)
    per_layer = budgets.vision_tokens_per_layer(full.tokens_to_llm, dims.num_layers, drops)
    return TokenCount(name, full.vision_tokens_encoded, tuple(per_layer))


def llm_drops(name: str, num_layers: int, options: CountOptions) -> dict[int, float]:
    """``{layer: ratio}`` cuts of FastV (one, before layer ``K``) or PDrop (each stage)."""
    if name == "fastv":
        return {options.fastv_layer: options.fastv_ratio}
    layers = options.pdrop_layers or budgets.pdrop_layers(num_layers)
    return dict.fromkeys(layers, options.pdrop_ratio)


def _levels(dims: ModelDims, height: int, width: int, options: CountOptions) -> tuple[Level, ...]:
    """The DIP levels of the image under the options' rule."""
    return build_pyramid(
        height, width, dims.tile_size, options.min_short_side, options.dip_rule
    ).levels


def _block_rows(tiles: int, level: Level) -> int:
    """Tile rows spanned by ``tiles`` tiles assumed to form the squarest block."""
    return min(level.grid[0], math.ceil(math.sqrt(tiles)))


def _retained(alpha: float, tokens: int) -> int:
    """Coarse-to-fine's top-alpha count (at least one token)."""
    return max(1, math.ceil(alpha * tokens))


def c2f_count(dims: ModelDims, height: int, width: int, options: CountOptions) -> TokenCount:
    """Coarse-to-fine on the DIP, with ``c2f_tiles[i]`` tiles at finer level ``i + 2``.

    Level 1 is encoded whole; each finer level is entered with its average tile count
    (capped by the level) while that count is positive and at most ``N_max``. The RFM
    sees thumbnail + the level's (pooled) tile tokens + row ends at every level
    reached; the LLM sees thumbnail + the top-alpha tokens of the last level + row
    ends. Row ends of selected tiles are an estimate (tiles taken as a square block,
    at most one row per kept token).
    """
    if options.c2f_tiles is None:
        raise ValueError("c2f needs an average tile count per level (c2f_tiles) or a trace")
    g, thumb, tile = dims.hr_tokens_per_side, dims.tokens_per_tile, dims.hr_tokens_per_tile
    levels = _levels(dims, height, width, options)
    tiles, rows = [levels[0].num_tiles], [levels[0].grid[0]]
    for depth, level in enumerate(levels[1:]):
        wanted = (
            options.c2f_tiles[min(depth, len(options.c2f_tiles) - 1)] if options.c2f_tiles else 0
        )
        count = round(wanted)
        if not 0 < count <= options.max_tiles:
            break
        tiles.append(min(count, level.num_tiles))
        rows.append(_block_rows(tiles[-1], level))
    rfm = tuple(thumb + t * tile + dims.newlines(r * g) for t, r in zip(tiles, rows, strict=True))
    kept = _retained(options.alpha, tiles[-1] * tile)
    llm = thumb + kept + min(kept, dims.newlines(rows[-1] * g))
    return TokenCount("c2f", (1 + sum(tiles)) * thumb, _llm(dims, llm), rfm)


def c2f_nodip_count(dims: ModelDims, height: int, width: int, options: CountOptions) -> TokenCount:
    """RFM pruning on the anyres grid of the other reduction rows (no pyramid)."""
    geometry = _anyres(dims, height, width, options.reduction_grid_tiles)
    thumb, tile = dims.tokens_per_tile, dims.hr_tokens_per_tile
    rows = dims.newlines(geometry.grid[0] * dims.hr_tokens_per_side)
    rfm = thumb + geometry.num_tiles * tile + rows
    kept = _retained(options.alpha, geometry.num_tiles * tile)
    llm = thumb + kept + min(kept, rows)
    return TokenCount("c2f-nodip", (1 + geometry.num_tiles) * thumb, _llm(dims, llm), (rfm,))


def count_strategy(
    name: str, dims: ModelDims, height: int, width: int, options: CountOptions | None = None
) -> TokenCount:
    """Token counts of a registered strategy name on an image of ``height x width``."""
    options = options or CountOptions()
    if name == "thumbnail":
        return thumbnail_count(dims)
    if name.startswith("anyres-p") and name[len("anyres-p") :].isdigit():
        return anyres_count(dims, height, width, int(name[len("anyres-p") :]))
    counters = {
        "fullres": fullres_count,
        "visionzip": visionzip_count,
        "prumerge++": prumerge_count,
        "c2f": c2f_count,
        "c2f-nodip": c2f_nodip_count,
    }
    if name in counters:
        return counters[name](dims, height, width, options)
    if name in ("fastv", "pdrop"):
        drops = llm_drops(name, dims.num_layers, options)
        return drop_count(name, dims, height, width, drops, options.reduction_grid_tiles)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")


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


def parse_image_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (e.g. ``"27328x600"``) to ``(height, width)``."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected WIDTHxHEIGHT in pixels, got {text!r}")
    return int(parts[1]), int(parts[0])


def flops_table(
    dims: ModelDims,
    height: int,
    width: int,
    strategies: Sequence[str],
    options: CountOptions | None = None,
) -> list[dict[str, Any]]:
    """One row per strategy: tokens encoded, tokens to the LLM, TFLOPs."""
    rows = []
    for name in strategies:
        count = count_strategy(name, dims, height, width, options)
        rows.append(
            {
                "strategy": name,
                "vision_tokens_encoded": count.vision_tokens_encoded,
                "vision_tokens_to_llm": count.tokens_to_llm,
                "tflops": count.tflops(dims),
            }
        )
    return rows
