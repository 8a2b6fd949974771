"""Every inference method behind the :class:`Strategy` interface, registered by name.

``thumbnail``, ``anyres-p4/p9/p25/p144``, ``visionzip``, ``prumerge++``, ``fastv``,
``pdrop``, ``c2f`` and ``c2f-nodip`` are built by :func:`lrsvqa.strategies.registry.build_strategy`
with keyword options:

* common: ``model_path`` (or ``model``), ``device`` (``"cpu"``), ``dtype``
  (``"float32"``), ``rfm_path`` (or ``rfm``; used by the c2f strategies, ignored by
  the others so one command line can drive them all), ``max_new_tokens`` (32),
  ``hr_pool`` / ``hr_pool_mode`` / ``newline`` (the model's pooling of high-resolution
  tiles and row-end tokens; default: what the checkpoint says);
* ``grid_tiles``: the anyres grid budget under VisionZip, PruMerge+, FastV and PDrop
  (default 144, the LRS-VQA paper's Tab. 4 setting) and c2f-nodip's grid (default
  80, c2f's ``N_max``, so both may look at as many tiles);
* per method: ``retained`` (VisionZip, 64), ``ratio`` (PruMerge+ 0.25, FastV and
  PDrop 0.5), ``neighbours`` (PruMerge+, 32), ``layer`` (FastV, 2), ``layers``
  (PDrop, default the 7/14/21-of-28 boundaries scaled to the depth), ``rfm_layers``,
  ``alpha``, ``max_tiles``, ``fixed_layers``, ``min_short_side`` (c2f).

Strategies built in one process share one loaded model per ``(path, dtype, device)``
(and one RFM per model and RFM source). Every result carries the theoretical TFLOPs
of :mod:`lrsvqa.flops` computed from the token counts the model actually saw.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrsvqa import budgets
from lrsvqa.flops import ModelDims, TokenCount
from lrsvqa.imagery.anyres import ANYRES_MAX_TILES, AnyresGeometry
from lrsvqa.imagery.pyramid import (
    DEFAULT_DIP_RULE,
    DEFAULT_MIN_SHORT_SIDE,
    DIP_RULES,
    grid_geometry,
)
from lrsvqa.imagery.reader import open_image
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.models.adapter import DEFAULT_MAX_NEW_TOKENS, LlavaAdapter
from lrsvqa.models.layout import layout_vision_tokens, tile_token_positions
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.models.vision_attention import encode_with_cls_attention, project
from lrsvqa.strategies.base import StrategyResult
from lrsvqa.strategies.c2f import (
    DEFAULT_ALPHA,
    DEFAULT_MAX_TILES,
    CoarseToFine,
    CoarseToFineConfig,
    CoarseToFineResult,
)
from lrsvqa.strategies.llm_drop import StagedDecoder
from lrsvqa.strategies.prumerge import PRUMERGE_NEIGHBOURS, prumerge_crops
from lrsvqa.strategies.registry import register_strategy
from lrsvqa.strategies.visionzip import visionzip_crops

REDUCTION_GRID_TILES = 144
NODIP_GRID_TILES = DEFAULT_MAX_TILES
FULLRES_MAX_TILES = 1024

_LOCK = threading.Lock()
_ADAPTERS: dict[tuple[str, str, str], LlavaAdapter] = {}
_VIEWS: dict[tuple[Any, ...], LlavaAdapter] = {}
_RFMS: dict[tuple[Any, ...], RegionFocusModule] = {}


def _path_key(path: str | Path) -> str:
    """Local checkpoints by absolute path, hub ids as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else str(path)


def shared_adapter(
    model_path: str | Path,
    dtype: str = "float32",
    device: str = "cpu",
    *,
    hr_pool: int | None = None,
    pool_mode: str | None = None,
    newline: bool | None = None,
) -> LlavaAdapter:
    """The process-wide model for ``(path, dtype, device)``, loaded on first use.

    With token options (:meth:`LlavaAdapter.with_options`; None keeps the checkpoint's)
    it returns a view sharing the weights, kept for the process like the model, so
    strategies asking for the same options share it (and its RFM).
    """
    key = (_path_key(model_path), str(dtype), str(device))
    with _LOCK:
        if key not in _ADAPTERS:
            _ADAPTERS[key] = LlavaAdapter.from_pretrained(model_path, dtype=dtype, device=device)
        view_key = (*key, hr_pool, pool_mode, newline)
        if view_key not in _VIEWS:
            _VIEWS[view_key] = _ADAPTERS[key].with_options(
                hr_pool=hr_pool, pool_mode=pool_mode, newline=newline
            )
        return _VIEWS[view_key]


def share_adapter(
    model_path: str | Path, adapter: LlavaAdapter, dtype: str = "float32", device: str = "cpu"
) -> None:
    """Make an already built model the one strategies get for ``(model_path, dtype, device)``.

    For models that exist only in memory (benchmarks on random weights of a real size).
    """
    key = (_path_key(model_path), str(dtype), str(device))
    with _LOCK:
        _ADAPTERS[key] = adapter
        for view_key in [k for k in _VIEWS if k[:3] == key]:
            del _VIEWS[view_key]


def shared_rfm(
    adapter: LlavaAdapter,
    rfm_path: str | Path | None = None,
    rfm_layers: list[int] | None = None,
) -> RegionFocusModule:
    """The RFM of ``adapter``: trained (``rfm_path``) or training-free on ``rfm_layers``."""
    source = _path_key(rfm_path) if rfm_path is not None else None
    key = (id(adapter), source, tuple(rfm_layers) if rfm_layers else None)
    with _LOCK:
        if key not in _RFMS:
            if rfm_path is not None:
                _RFMS[key] = RegionFocusModule.load(rfm_path, adapter)
            else:
                _RFMS[key] = RegionFocusModule.from_llm(adapter, rfm_layers, training_free=True)
        return _RFMS[key]


# ---------------------------------------------------------------------- prepared images
@dataclass(frozen=True)
class AnyresImage:
    """An image laid out for anyres: the squashed base view and the canvas tiles.

    Attributes:
        geometry: Grid, resize and padding of the image.
        base: ``B x B`` uint8 RGB view of the whole image (aspect not kept, as LLaVA-NeXT).
        tiles: Row-major ``B x B`` tiles of the centrally padded canvas.
    """

    geometry: AnyresGeometry
    base: np.ndarray
    tiles: list[np.ndarray]


def read_anyres(path: Path, max_tiles: int, tile_size: int) -> AnyresImage:
    """Read the base view and the canvas tiles of anyres-pX (I/O only)."""
    with open_image(path) as image:
        geometry = AnyresGeometry.for_image(image.height, image.width, max_tiles, tile_size)
        whole = (0.0, 0.0, float(image.width), float(image.height))
        base = image.read_region(whole, (tile_size, tile_size))
        (h, w), (oy, ox) = geometry.resized_size, geometry.offset
        canvas = np.zeros((*geometry.canvas_size, 3), dtype=np.uint8)
        canvas[oy : oy + h, ox : ox + w] = image.read_region(whole, (h, w))
    b = tile_size
    tiles = [canvas[r * b : (r + 1) * b, c * b : (c + 1) * b] for r, c in geometry.tiles()]
    return AnyresImage(geometry, base, tiles)


def anyres_sequence(adapter: LlavaAdapter, image: AnyresImage) -> torch.Tensor:
    """LLaVA-NeXT's vision sequence: base tokens, unpadded (pooled) grid rows, row ends."""
    tokens = adapter.encode_tiles([image.base, *image.tiles])
    g = adapter.tokens_per_side
    positions = tile_token_positions(image.geometry.tiles(), g)
    r0, r1, c0, c1 = image.geometry.unpadded_token_box(g)
    inside = (
        (positions[:, 0] >= r0) & (positions[:, 0] < r1)
        & (positions[:, 1] >= c0) & (positions[:, 1] < c1)
    )  # fmt: skip
    grid_tokens = adapter.pool_tiles(tokens[1:]).reshape(-1, adapter.hidden_size)
    keep = torch.as_tensor(np.flatnonzero(inside), dtype=torch.long, device=grid_tokens.device)
    sequence, _, _ = layout_vision_tokens(
        grid_tokens[keep], positions[inside], tokens[0], adapter.image_newline
    )
    return sequence


def model_dims(adapter: LlavaAdapter) -> ModelDims:
    """The FLOPs dimensions of the model as the adapter feeds it (pooling, row ends)."""
    return replace(
        ModelDims.from_config(adapter.config.to_dict()),
        hr_pool=adapter.options.hr_pool,
        image_newline=adapter.image_newline is not None,
    )


# ---------------------------------------------------------------------- strategies
class _ModelStrategy:
    """What every strategy shares: the model, its dimensions and result assembly."""

    name: str

    def __init__(self, name: str, adapter: LlavaAdapter, max_new_tokens: int) -> None:
        self.name = name
        self.adapter = adapter
        self.max_new_tokens = max_new_tokens
        self.dims = model_dims(adapter)

    def _result(
        self,
        answer: str,
        count: TokenCount,
        sequence_length: int,
        trace: dict[str, Any],
        dims: ModelDims | None = None,
        selected_boxes: list | None = None,
    ) -> StrategyResult:
        return StrategyResult(
            answer=answer,
            vision_tokens_encoded=count.vision_tokens_encoded,
            tokens_to_llm=sequence_length,
            vision_tokens_to_llm=count.tokens_to_llm,
            selected_boxes=list(selected_boxes or []),
            tflops=count.tflops(dims or self.dims),
            trace=trace,
        )

    def _all_layers(self, tokens: int) -> tuple[int, ...]:
        return (tokens,) * self.dims.num_layers


class ThumbnailStrategy(_ModelStrategy):
    """LLaVA-1.5 style: one ``B x B`` view, the whole image padded to a square."""

    def prepare(self, image_path: Path) -> np.ndarray:
        """Read the thumbnail (long side ``B``, padded bottom/right)."""
        with PyramidReader.open(image_path, tile_size=self.adapter.tile_size) as reader:
            return reader.thumbnail()

    @torch.no_grad()
    def answer(self, prepared: np.ndarray, question: str) -> StrategyResult:
        """Answer from the thumbnail's tokens only."""
        adapter = self.adapter
        tokens = adapter.encode_tiles([prepared])[0]
        embeds, _ = adapter.assemble(adapter.prompt_parts(question), tokens)
        answer = adapter.generate(embeds, self.max_new_tokens)
        n = int(tokens.shape[0])
        count = TokenCount(self.name, n, self._all_layers(n))
        return self._result(answer, count, int(embeds.shape[1]), {"thumbnail_tokens": n})


@dataclass
class FullResolutionImage:
    """Thumbnail and every tile of the finest DIP level, read ahead of the model."""

    thumbnail: np.ndarray
    tiles: list[np.ndarray]
    positions: list[tuple[int, int]]


class FullResolutionStrategy(_ModelStrategy):
    """Every tile of the original-resolution level: the "unlimited grid" of paper Fig. 1(b).

    The cost grows with the image area, so images needing more than ``max_tiles`` tiles
    are refused with an error (recorded per item by the runner): "where it fits".
    Vision tokens do not depend on the question, so the encoding of the last prepared
    image is reused for the next question on it.
    """

    def __init__(
        self, name: str, adapter: LlavaAdapter, max_new_tokens: int, max_tiles: int
    ) -> None:
        super().__init__(name, adapter, max_new_tokens)
        self.max_tiles = max_tiles
        # The last image's vision sequence, so several questions on one image encode it
        # once. The image is held by a weak reference compared with ``is``: an ``id()``
        # key would match a later image that CPython allocated at a freed one's address.
        self._encoded: tuple[weakref.ref[FullResolutionImage], torch.Tensor] | None = None

    def prepare(self, image_path: Path) -> FullResolutionImage:
        """Read the thumbnail and all finest tiles, or refuse an image that does not fit."""
        with PyramidReader.open(image_path, tile_size=self.adapter.tile_size) as reader:
            finest = len(reader.geometry.levels) - 1
            level = reader.geometry.levels[finest]
            if level.num_tiles > self.max_tiles:
                raise ValueError(
                    f"{image_path}: full resolution needs {level.num_tiles} tiles, "
                    f"more than max_tiles={self.max_tiles}"
                )
            positions = level.tiles()
            tiles = [reader.tile(finest, row, col) for row, col in positions]
            return FullResolutionImage(reader.thumbnail(), tiles, positions)

    @torch.no_grad()
    def answer(self, prepared: FullResolutionImage, question: str) -> StrategyResult:
        """Answer from the thumbnail and all full-resolution tokens."""
        adapter = self.adapter
        if self._encoded is None or self._encoded[0]() is not prepared:
            tokens = adapter.encode_tiles([prepared.thumbnail, *prepared.tiles])
            hr = adapter.pool_tiles(tokens[1:]).reshape(-1, adapter.hidden_size)
            positions = tile_token_positions(prepared.positions, adapter.tokens_per_side)
            sequence, _, _ = layout_vision_tokens(hr, positions, tokens[0], adapter.image_newline)
            self._encoded = (weakref.ref(prepared), sequence)
        sequence = self._encoded[1]
        embeds, _ = adapter.assemble(adapter.prompt_parts(question), sequence)
        answer = adapter.generate(embeds, self.max_new_tokens)
        encoded = (1 + len(prepared.tiles)) * adapter.thumbnail_tokens
        count = TokenCount(self.name, encoded, self._all_layers(int(sequence.shape[0])))
        return self._result(answer, count, int(embeds.shape[1]), {"tiles": len(prepared.tiles)})


class AnyresStrategy(_ModelStrategy):
    """LLaVA-NeXT anyres with at most ``grid_tiles`` tiles, every token to the LLM."""

    def __init__(
        self, name: str, adapter: LlavaAdapter, max_new_tokens: int, grid_tiles: int
    ) -> None:
        super().__init__(name, adapter, max_new_tokens)
        if grid_tiles < 1:
            raise ValueError(f"grid_tiles must be >= 1, got {grid_tiles}")
        self.grid_tiles = grid_tiles

    def prepare(self, image_path: Path) -> AnyresImage:
        """Read the base view and canvas tiles."""
        return read_anyres(image_path, self.grid_tiles, self.adapter.tile_size)

    def _trace(self, image: AnyresImage) -> dict[str, Any]:
        return {
            "grid": list(image.geometry.grid),
            "unpadded_tokens": list(image.geometry.unpadded_tokens(self.adapter.tokens_per_side)),
        }

    def _encoded(self, image: AnyresImage) -> int:
        return (1 + len(image.tiles)) * self.adapter.thumbnail_tokens

    @torch.no_grad()
    def answer(self, prepared: AnyresImage, question: str) -> StrategyResult:
        """Answer from the full anyres sequence."""
        adapter = self.adapter
        sequence = anyres_sequence(adapter, prepared)
        embeds, _ = adapter.assemble(adapter.prompt_parts(question), sequence)
        answer = adapter.generate(embeds, self.max_new_tokens)
        n = int(sequence.shape[0])
        count = TokenCount(self.name, self._encoded(prepared), self._all_layers(n))
        return self._result(answer, count, int(embeds.shape[1]), self._trace(prepared))


CropReducer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CropReductionStrategy(AnyresStrategy):
    """Anyres crops reduced inside the vision encoder (VisionZip, PruMerge+).

    Each crop (base view first, then the grid tiles row-major) is reduced on its own
    from its [CLS] attention and keys; the kept features are projected and fed to the
    LLM crop after crop, without unpadding or newlines (see :mod:`.visionzip`). On a
    model that pools its tiles, each tile's features, keys and attention are pooled
    first (the adapter's pooling), so the method reduces the tokens a tile would give.
    """

    def __init__(
        self,
        name: str,
        adapter: LlavaAdapter,
        max_new_tokens: int,
        grid_tiles: int,
        reduce: CropReducer,
    ) -> None:
        super().__init__(name, adapter, max_new_tokens, grid_tiles)
        self.reduce = reduce

    @torch.no_grad()
    def answer(self, prepared: AnyresImage, question: str) -> StrategyResult:
        """Answer from the reduced crops."""
        adapter = self.adapter
        encoded = encode_with_cls_attention(
            adapter, adapter.pixel_values([prepared.base, *prepared.tiles])
        )
        base = self.reduce(encoded.features[:1], encoded.cls_attention[:1], encoded.keys[:1])
        attention = adapter.pool_tiles(encoded.cls_attention[1:, :, None])[..., 0]
        pool = adapter.pool_tiles
        crops = self.reduce(pool(encoded.features[1:]), attention, pool(encoded.keys[1:]))
        width = crops.shape[-1]
        sequence = project(adapter, torch.cat([base.reshape(-1, width), crops.reshape(-1, width)]))
        embeds, _ = adapter.assemble(adapter.prompt_parts(question), sequence)
        answer = adapter.generate(embeds, self.max_new_tokens)
        n = int(sequence.shape[0])
        count = TokenCount(self.name, self._encoded(prepared), self._all_layers(n))
        trace = self._trace(prepared) | {
            "crops": 1 + int(crops.shape[0]),
            "tokens_per_crop": int(crops.shape[1]),
        }
        return self._result(answer, count, int(embeds.shape[1]), trace)


class LLMDropStrategy(AnyresStrategy):
    """Anyres sequence with vision tokens dropped inside the LLM (FastV, PDrop)."""

    def __init__(
        self,
        name: str,
        adapter: LlavaAdapter,
        max_new_tokens: int,
        grid_tiles: int,
        drops: Mapping[int, float],
    ) -> None:
        super().__init__(name, adapter, max_new_tokens, grid_tiles)
        budgets.check_drops(drops, len(adapter.decoder_layers))
        self.drops = dict(drops)
        self.decoder = StagedDecoder(adapter)

    @torch.no_grad()
    def answer(self, prepared: AnyresImage, question: str) -> StrategyResult:
        """Answer with staged prefill and greedy decoding on the pruned cache."""
        adapter = self.adapter
        sequence = anyres_sequence(adapter, prepared)
        embeds, vision_slice = adapter.assemble(adapter.prompt_parts(question), sequence)
        generation = self.decoder.generate(embeds, vision_slice, self.drops, self.max_new_tokens)
        per_layer = tuple(generation.vision_tokens_per_layer)
        count = TokenCount(self.name, self._encoded(prepared), per_layer)
        trace = self._trace(prepared) | {
            "drops": {str(layer): ratio for layer, ratio in sorted(self.drops.items())},
            "vision_tokens_per_layer": list(per_layer),
        }
        return self._result(generation.answer, count, int(embeds.shape[1]), trace)


class CoarseToFineStrategy(_ModelStrategy):
    """Coarse-to-fine (Alg. 1) on the DIP, or on one anyres grid without DIP.

    Args:
        name: Registered name.
        adapter: The model.
        rfm: Its Region Focus Module (trained or training-free).
        config: Alg. 1 options.
        min_short_side: The 1,008 px bound of the coarsest DIP level.
        grid_tiles: None for the DIP (``c2f``); otherwise prune on the single anyres
            grid of at most this many tiles, placed by :func:`grid_geometry`
            (``c2f-nodip``, the paper's Tab. 5 ablation).
    """

    def __init__(
        self,
        name: str,
        adapter: LlavaAdapter,
        rfm: RegionFocusModule,
        config: CoarseToFineConfig,
        min_short_side: int = DEFAULT_MIN_SHORT_SIDE,
        grid_tiles: int | None = None,
        dip_rule: str = DEFAULT_DIP_RULE,
    ) -> None:
        super().__init__(name, adapter, config.max_new_tokens)
        self.c2f = CoarseToFine(adapter, rfm, config)
        self.min_short_side = min_short_side
        self.dip_rule = dip_rule
        self.grid_tiles = grid_tiles
        self.rfm_dims = replace(model_dims(adapter), rfm_layers=len(rfm.layers))

    def prepare(self, image_path: Path) -> PyramidReader:
        """Open the image lazily with its DIP (or single-grid) geometry."""
        b = self.adapter.tile_size
        if self.grid_tiles is None:
            return PyramidReader.open(
                image_path, tile_size=b, min_short_side=self.min_short_side, dip_rule=self.dip_rule
            )
        image = open_image(image_path)
        try:
            grid = AnyresGeometry.for_image(image.height, image.width, self.grid_tiles, b).grid
            return PyramidReader(image, grid_geometry(image.height, image.width, grid, b))
        except BaseException:
            image.close()
            raise

    def count(self, result: CoarseToFineResult) -> TokenCount:
        """Tokens the RFM saw at each level and the LLM saw at the end."""
        g = self.adapter.tokens_per_side
        newline = self.adapter.image_newline is not None
        rfm = tuple(
            result.thumbnail_tokens
            + level.tokens_encoded
            + (len({row for row, _ in level.tiles_encoded}) * g if newline else 0)
            for level in result.levels
        )
        llm = self._all_layers(result.vision_tokens_to_llm)
        return TokenCount(self.name, result.vision_tokens_encoded, llm, rfm)

    @staticmethod
    def trace(result: CoarseToFineResult, count: TokenCount) -> dict[str, Any]:
        """JSON trace, one short list per quantity with an entry per level reached.

        Separate lists rather than one dict per level keep every value far below the
        evaluation runner's per-value size limit even for the six levels of a 27k px
        image, so ``lrsvqa flops --trace`` can read them back from the answers file.
        The tiles themselves are in ``selected_boxes``.
        """
        levels = result.levels
        return {
            "grid_per_level": [list(level.grid) for level in levels],
            "tiles_per_level": [len(level.tiles_encoded) for level in levels],
            "tokens_encoded_per_level": [level.tokens_encoded for level in levels],
            "tokens_kept_per_level": [level.tokens_kept for level in levels],
            "decisions": [level.decision for level in levels],
            "rfm_vision_tokens": list(count.rfm_vision_tokens),
            "thumbnail_tokens": result.thumbnail_tokens,
            "retained_tokens": result.retained_tokens,
            "final_level": result.final_level,
        }

    def answer(self, prepared: PyramidReader, question: str) -> StrategyResult:
        """Run Alg. 1 and report where it looked."""
        result = self.c2f.run(prepared, question)
        count = self.count(result)
        return self._result(
            result.answer,
            count,
            result.sequence_length,
            self.trace(result, count),
            dims=self.rfm_dims,
            selected_boxes=result.selected_boxes,
        )


# ---------------------------------------------------------------------- factories
def _optional(value: Any, kind: type) -> Any:
    """``kind(value)``, None kept."""
    return None if value is None else kind(value)


@dataclass(frozen=True)
class CommonOptions:
    """Options every factory accepts (see the module docstring)."""

    model_path: str
    device: str = "cpu"
    dtype: str = "float32"
    rfm_path: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    hr_pool: int | None = None
    hr_pool_mode: str | None = None
    newline: bool | None = None

    @classmethod
    def split(
        cls, name: str, options: Mapping[str, Any], specific: tuple[str, ...] = ()
    ) -> tuple[CommonOptions, dict[str, Any]]:
        """Separate the common options from ``specific`` ones; reject anything else.

        Raises:
            TypeError: An option the strategy does not know, or no model path.
        """
        rest = dict(options)
        model = rest.pop("model_path", None)
        model = rest.pop("model", None) if model is None else model
        rfm = rest.pop("rfm_path", None)
        rfm = rest.pop("rfm", None) if rfm is None else rfm
        if model is None:
            raise TypeError(f"strategy {name!r} needs a model path (model_path=...)")
        common = cls(
            model_path=str(model),
            device=str(rest.pop("device", None) or "cpu"),
            dtype=str(rest.pop("dtype", None) or "float32"),
            rfm_path=None if rfm is None else str(rfm),
            max_new_tokens=int(rest.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            hr_pool=_optional(rest.pop("hr_pool", None), int),
            hr_pool_mode=_optional(rest.pop("hr_pool_mode", None), str),
            newline=rest.pop("newline", None),
        )
        if common.newline not in (None, True, False):
            raise TypeError(f"strategy {name!r}: newline must be true or false")
        unknown = sorted(set(rest) - set(specific))
        if unknown:
            known = ", ".join(specific) or "none besides the common ones"
            raise TypeError(f"strategy {name!r} got unknown options {unknown}; it takes {known}")
        return common, rest

    def adapter(self) -> LlavaAdapter:
        """The shared model, with the token options asked for."""
        return shared_adapter(
            self.model_path,
            self.dtype,
            self.device,
            hr_pool=self.hr_pool,
            pool_mode=self.hr_pool_mode,
            newline=self.newline,
        )


def make_thumbnail(**options: Any) -> ThumbnailStrategy:
    """Factory of ``thumbnail``."""
    common, _ = CommonOptions.split("thumbnail", options)
    return ThumbnailStrategy("thumbnail", common.adapter(), common.max_new_tokens)


def make_anyres(max_tiles: int, **options: Any) -> AnyresStrategy:
    """Factory of ``anyres-pX``."""
    name = f"anyres-p{max_tiles}"
    common, _ = CommonOptions.split(name, options)
    return AnyresStrategy(name, common.adapter(), common.max_new_tokens, max_tiles)


def make_fullres(**options: Any) -> FullResolutionStrategy:
    """Factory of ``fullres`` (option ``max_tiles``, default 1,024)."""
    common, own = CommonOptions.split("fullres", options, ("max_tiles",))
    max_tiles = int(own.get("max_tiles", FULLRES_MAX_TILES))
    return FullResolutionStrategy("fullres", common.adapter(), common.max_new_tokens, max_tiles)


def make_visionzip(**options: Any) -> CropReductionStrategy:
    """Factory of ``visionzip`` (options ``grid_tiles``, ``retained``)."""
    common, own = CommonOptions.split("visionzip", options, ("grid_tiles", "retained"))
    retained = int(own.get("retained", budgets.VISIONZIP_RETAINED))
    if retained < 1:
        raise ValueError(f"VisionZip must retain at least one token, got {retained}")
    return CropReductionStrategy(
        "visionzip",
        common.adapter(),
        common.max_new_tokens,
        int(own.get("grid_tiles", REDUCTION_GRID_TILES)),
        partial(visionzip_crops, retained=retained),
    )


def make_prumerge(**options: Any) -> CropReductionStrategy:
    """Factory of ``prumerge++`` (options ``grid_tiles``, ``ratio``, ``neighbours``)."""
    common, own = CommonOptions.split("prumerge++", options, ("grid_tiles", "ratio", "neighbours"))
    ratio = float(own.get("ratio", budgets.PRUMERGE_RATIO))
    neighbours = int(own.get("neighbours", PRUMERGE_NEIGHBOURS))
    if not 0 < ratio <= 1 or neighbours < 0:
        raise ValueError(f"PruMerge+ needs 0 < ratio <= 1 and neighbours >= 0, got {own}")
    return CropReductionStrategy(
        "prumerge++",
        common.adapter(),
        common.max_new_tokens,
        int(own.get("grid_tiles", REDUCTION_GRID_TILES)),
        partial(prumerge_crops, ratio=ratio, neighbours=neighbours),
    )


def make_fastv(**options: Any) -> LLMDropStrategy:
    """Factory of ``fastv`` (options ``grid_tiles``, ``layer``, ``ratio``)."""
    common, own = CommonOptions.split("fastv", options, ("grid_tiles", "layer", "ratio"))
    layer = int(own.get("layer", budgets.FASTV_LAYER))
    ratio = float(own.get("ratio", budgets.FASTV_RATIO))
    return LLMDropStrategy(
        "fastv",
        common.adapter(),
        common.max_new_tokens,
        int(own.get("grid_tiles", REDUCTION_GRID_TILES)),
        {layer: ratio},
    )


def make_pdrop(**options: Any) -> LLMDropStrategy:
    """Factory of ``pdrop`` (options ``grid_tiles``, ``layers``, ``ratio``)."""
    common, own = CommonOptions.split("pdrop", options, ("grid_tiles", "layers", "ratio"))
    adapter = common.adapter()
    layers = own.get("layers") or budgets.pdrop_layers(len(adapter.decoder_layers))
    ratio = float(own.get("ratio", budgets.PDROP_RATIO))
    return LLMDropStrategy(
        "pdrop",
        adapter,
        common.max_new_tokens,
        int(own.get("grid_tiles", REDUCTION_GRID_TILES)),
        dict.fromkeys((int(layer) for layer in layers), ratio),
    )


def make_c2f(nodip: bool, **options: Any) -> CoarseToFineStrategy:
    """Factory of ``c2f`` / ``c2f-nodip``."""
    name = "c2f-nodip" if nodip else "c2f"
    shared = ("rfm_layers", "alpha")
    own_keys = (
        ("grid_tiles",) if nodip else ("max_tiles", "fixed_layers", "min_short_side", "dip_rule")
    )
    common, own = CommonOptions.split(name, options, shared + own_keys)
    adapter = common.adapter()
    layers = own.get("rfm_layers")
    rfm = shared_rfm(adapter, common.rfm_path, [int(i) for i in layers] if layers else None)
    fixed = own.get("fixed_layers")
    config = CoarseToFineConfig(
        alpha=float(own.get("alpha", DEFAULT_ALPHA)),
        max_tiles=int(own.get("max_tiles", DEFAULT_MAX_TILES)),
        fixed_layers=None if fixed is None else int(fixed),
        max_new_tokens=common.max_new_tokens,
    )
    grid_tiles = int(own.get("grid_tiles", NODIP_GRID_TILES)) if nodip else None
    min_short_side = int(own.get("min_short_side", DEFAULT_MIN_SHORT_SIDE))
    dip_rule = str(own.get("dip_rule", DEFAULT_DIP_RULE))
    if dip_rule not in DIP_RULES:
        raise ValueError(
            f"{name}: dip_rule must be one of {', '.join(DIP_RULES)}, got {dip_rule!r}"
        )
    return CoarseToFineStrategy(name, adapter, rfm, config, min_short_side, grid_tiles, dip_rule)


register_strategy("thumbnail", make_thumbnail)
for _tiles in ANYRES_MAX_TILES:
    register_strategy(f"anyres-p{_tiles}", partial(make_anyres, _tiles))
register_strategy("fullres", make_fullres)
register_strategy("visionzip", make_visionzip)
register_strategy("prumerge++", make_prumerge)
register_strategy("fastv", make_fastv)
register_strategy("pdrop", make_pdrop)
register_strategy("c2f", partial(make_c2f, False))
register_strategy("c2f-nodip", partial(make_c2f, True))
