"""The options of every built-in strategy: one frozen dataclass each, defaults declared once.

``lrsvqa strategies`` lists these fields (type, default, help); ``lrsvqa eval
--strategy-option key=value`` and ``lrsvqa flops`` fill them through
:func:`lrsvqa.strategies.registry.parse_options`, so the model run and the FLOPs
count read the same values. The baselines' budgets come from :mod:`lrsvqa.budgets`,
coarse-to-fine's from :class:`~lrsvqa.strategies.c2f.CoarseToFineConfig`, the pyramid's
from :class:`~lrsvqa.imagery.pyramid.PyramidConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lrsvqa import budgets
from lrsvqa.imagery.pyramid import PyramidConfig
from lrsvqa.strategies.c2f import CoarseToFineConfig
from lrsvqa.strategies.registry import option


def _at_least(name: str, value: int, bound: int) -> None:
    if value < bound:
        raise ValueError(f"{name} must be >= {bound}, got {value}")


def _ratio(name: str, value: float, low_open: bool = False) -> None:
    if not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise ValueError(f"{name} must be in {'(0' if low_open else '[0'}, 1], got {value}")


@dataclass(frozen=True)
class FullResOptions:
    """``fullres``: every tile of the original-resolution DIP level."""

    max_tiles: int = option(1024, "Refuse images whose full resolution needs more tiles.")

    def __post_init__(self) -> None:
        _at_least("max_tiles", self.max_tiles, 1)


@dataclass(frozen=True)
class GridOptions:
    """The anyres grid the reduction baselines run on."""

    grid_tiles: int = option(144, "Anyres grid budget (the LRS-VQA paper's Tab. 4: 144).")

    def __post_init__(self) -> None:
        _at_least("grid_tiles", self.grid_tiles, 1)


@dataclass(frozen=True)
class VisionZipOptions(GridOptions):
    """``visionzip``: dominant + contextual tokens of every crop."""

    retained: int = option(budgets.VISIONZIP_RETAINED, "Tokens kept per crop (54:10 split).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("retained", self.retained, 1)


@dataclass(frozen=True)
class PruMergeOptions(GridOptions):
    """``prumerge++``: outlier tokens of every crop, merged with their neighbours."""

    ratio: float = option(budgets.PRUMERGE_RATIO, "Share of each crop's tokens kept.")
    neighbours: int = option(
        budgets.PRUMERGE_NEIGHBOURS, "Key neighbours merged into each kept token."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _ratio("ratio", self.ratio, low_open=True)
        _at_least("neighbours", self.neighbours, 0)


@dataclass(frozen=True)
class FastVOptions(GridOptions):
    """``fastv``: one cut of the vision tokens inside the LLM."""

    layer: int = option(budgets.FASTV_LAYER, "LLM layer K before which tokens are dropped.")
    ratio: float = option(budgets.FASTV_RATIO, "Share of the vision tokens dropped.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("layer", self.layer, 1)
        _ratio("ratio", self.ratio)

    def drops(self, num_layers: int) -> dict[int, float]:
        """``{layer: ratio}``."""
        return {self.layer: self.ratio}


@dataclass(frozen=True)
class PDropOptions(GridOptions):
    """``pdrop``: vision tokens cut at each stage boundary inside the LLM."""

    layers: tuple[int, ...] | None = option(
        None, "Stage boundaries (default: 7, 14, 21 of 28, scaled to the depth)."
    )
    ratio: float = option(budgets.PDROP_RATIO, "Share dropped at each boundary.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _ratio("ratio", self.ratio)
        for layer in self.layers or ():
            _at_least("layers", layer, 1)

    def drops(self, num_layers: int) -> dict[int, float]:
        """``{layer: ratio}`` for an LLM of ``num_layers`` layers."""
        return dict.fromkeys(self.layers or budgets.pdrop_layers(num_layers), self.ratio)


@dataclass(frozen=True)
class NativeOptions:
    """``native``: a Qwen-VL model's own dynamic resolution under a pixel budget."""

    max_pixels: int = option(budgets.NATIVE_MAX_PIXELS, "Pixel budget of the resized image.")
    min_pixels: int = option(budgets.NATIVE_MIN_PIXELS, "Smallest area it is resized to.")

    def __post_init__(self) -> None:
        _at_least("min_pixels", self.min_pixels, 1)
        _at_least("max_pixels", self.max_pixels, self.min_pixels)


@dataclass(frozen=True)
class RFMOptions:
    """What both coarse-to-fine strategies take: the RFM and the retain ratio."""

    alpha: float = option(CoarseToFineConfig.alpha, "Share of tokens kept at each level.")
    rfm_path: str | None = option(
        None, "Trained RFM folder or hub id (--rfm); training-free if none."
    )
    rfm_layers: tuple[int, ...] | None = option(None, "Training-free RFM layers, e.g. 1,5,11,14.")

    def __post_init__(self) -> None:
        CoarseToFineConfig(alpha=self.alpha)


@dataclass(frozen=True)
class C2FOptions(RFMOptions):
    """``c2f``: Alg. 1 on the Dynamic Image Pyramid."""

    max_tiles: int = option(CoarseToFineConfig.max_tiles, "N_max: prune instead of descending.")
    fixed_layers: int | None = option(None, "Fix the DIP layers reached, thumbnail included.")
    min_short_side: int = option(PyramidConfig.min_short_side, "Bound of the coarsest level, px.")
    dip_rule: str = option(PyramidConfig.dip_rule, "DIP levels: official or paper-text.")

    def __post_init__(self) -> None:
        self.config()
        self.pyramid(PyramidConfig.tile_size)

    def config(self, max_new_tokens: int | None = None) -> CoarseToFineConfig:
        """The Alg. 1 configuration (checked)."""
        extra = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        return CoarseToFineConfig(self.alpha, self.max_tiles, self.fixed_layers, **extra)

    def pyramid(self, tile_size: int) -> PyramidConfig:
        """The pyramid of tiles of ``tile_size`` (checked)."""
        return PyramidConfig(tile_size, self.min_short_side, self.dip_rule)


@dataclass(frozen=True)
class C2FNoDipOptions(RFMOptions):
    """``c2f-nodip``: RFM pruning on one anyres grid, no pyramid (paper Tab. 5)."""

    grid_tiles: int = option(
        CoarseToFineConfig.max_tiles, "Anyres grid budget (default N_max, as many tiles as c2f)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("grid_tiles", self.grid_tiles, 1)
