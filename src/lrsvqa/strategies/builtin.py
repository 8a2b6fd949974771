"""Every inference method behind the :class:`Strategy` interface, registered by name.

``thumbnail``, ``anyres-p4/p9/p25/p144``, ``fullres``, ``visionzip``, ``prumerge++``,
``fastv``, ``pdrop``, ``native`` (Qwen-VL), ``c2f`` and ``c2f-nodip`` are registered
here with their options (:mod:`.options`; ``lrsvqa strategies`` lists them) and their
token counters (:mod:`.counters`). Strategies built in one process share one loaded model per
``(path, dtype, device)`` (and one RFM per model and RFM source). Every result carries
the theoretical TFLOPs of :mod:`lrsvqa.flops` computed from the token counts the model
actually saw.
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
from lrsvqa.imagery.pyramid import PyramidConfig, grid_geometry
from lrsvqa.imagery.reader import open_image
from lrsvqa.imagery.tiles import PyramidReader
from lrsvqa.models.adapter import LlavaAdapter, PromptParts
from lrsvqa.models.auto import load_adapter, uses_mrope
from lrsvqa.models.layout import VisionSegment, layout_vision_tokens, tile_token_positions
from lrsvqa.models.placement import DEFAULT_DEVICE, DEFAULT_DTYPE, resolve_device
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.models.vision_attention import encode_with_cls_attention, project
from lrsvqa.strategies import counters
from lrsvqa.strategies.base import StrategyResult
from lrsvqa.strategies.c2f import CoarseToFine, CoarseToFineConfig, CoarseToFineResult
from lrsvqa.strategies.llm_drop import StagedDecoder
from lrsvqa.strategies.options import (
    C2FNoDipOptions,
    C2FOptions,
    FastVOptions,
    FullResOptions,
    NativeOptions,
    PDropOptions,
    PruMergeOptions,
    RFMOptions,
    VisionZipOptions,
)
from lrsvqa.strategies.prumerge import prumerge_crops
from lrsvqa.strategies.registry import ModelOptions, NoOptions, register_strategy
from lrsvqa.strategies.visionzip import visionzip_crops

_LOCK = threading.Lock()
_ADAPTERS: dict[tuple[str, ...], LlavaAdapter] = {}
_VIEWS: dict[tuple[Any, ...], LlavaAdapter] = {}
# RFMs per adapter object (not per ``id()``: a freed adapter's id can be reused by the next).
_RFMS: weakref.WeakKeyDictionary[LlavaAdapter, dict[tuple[Any, ...], RegionFocusModule]] = (
    weakref.WeakKeyDictionary()
)


def _path_key(path: str | Path) -> str:
    """Local checkpoints by absolute path, hub ids as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else str(path)


def _adapter_key(
    model_path: str | Path,
    dtype: str,
    device: str,
    attn_implementation: str | None = None,
    device_map: str | None = None,
) -> tuple[str, ...]:
    """Which loaded model a request shares: ``auto`` and the device it picks are one."""
    where = str(device_map) if device_map is not None else str(resolve_device(device))
    return (_path_key(model_path), str(dtype), where, str(attn_implementation))


def shared_adapter(
    model_path: str | Path,
    dtype: str = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    *,
    attn_implementation: str | None = None,
    device_map: str | None = None,
    hr_pool: int | None = None,
    pool_mode: str | None = None,
    newline: bool | None = None,
) -> LlavaAdapter:
    """The process-wide model for ``(path, dtype, device, ...)``, loaded on first use.

    The adapter is chosen by the checkpoint's model type (:func:`load_adapter`).

    With token options (:meth:`LlavaAdapter.with_options`; None keeps the checkpoint's)
    it returns a view sharing the weights, kept for the process like the model, so
    strategies asking for the same options share it (and its RFM).
    """
    key = _adapter_key(model_path, dtype, device, attn_implementation, device_map)
    with _LOCK:
        if key not in _ADAPTERS:
            _ADAPTERS[key] = load_adapter(
                model_path,
                dtype=dtype,
                device=device,
                attn_implementation=attn_implementation,
                device_map=device_map,
            )
        view_key = (*key, hr_pool, pool_mode, newline)
        if view_key not in _VIEWS:
            _VIEWS[view_key] = _ADAPTERS[key].with_options(
                hr_pool=hr_pool, pool_mode=pool_mode, newline=newline
            )
        return _VIEWS[view_key]


def share_adapter(
    model_path: str | Path,
    adapter: LlavaAdapter,
    dtype: str = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
) -> None:
    """Make an already built model the one strategies get for ``(model_path, dtype, device)``.

    For models that exist only in memory (benchmarks on random weights of a real size).
    """
    key = _adapter_key(model_path, dtype, device)
    with _LOCK:
        _ADAPTERS[key] = adapter
        for view_key in [k for k in _VIEWS if k[: len(key)] == key]:
            del _VIEWS[view_key]


def shared_rfm(
    adapter: LlavaAdapter,
    rfm_path: str | Path | None = None,
    rfm_layers: list[int] | None = None,
) -> RegionFocusModule:
    """The RFM of ``adapter``: trained (``rfm_path``) or training-free on ``rfm_layers``."""
    source = _path_key(rfm_path) if rfm_path is not None else None
    key = (source, tuple(rfm_layers) if rfm_layers else None)
    with _LOCK:
        rfms = _RFMS.setdefault(adapter, {})
        if key not in rfms:
            if rfm_path is not None:
                rfms[key] = RegionFocusModule.from_pretrained(rfm_path, adapter=adapter)
            else:
                rfms[key] = RegionFocusModule.from_llm(adapter, rfm_layers, training_free=True)
        return rfms[key]


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


def read_anyres(
    path: Path, max_tiles: int, tile_size: int, bands: tuple[int, ...] | None = None
) -> AnyresImage:
    """Read the base view and the canvas tiles of anyres-pX (I/O only).

    ``bands``: 1-based bands shown as R, G, B (None: from the file), as in GDAL.
    """
    with open_image(path, bands=bands) as image:
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
    return anyres_layout(adapter, image)[0]


def anyres_layout(
    adapter: LlavaAdapter, image: AnyresImage
) -> tuple[torch.Tensor, list[VisionSegment]]:
    """:func:`anyres_sequence` and its segments (base view, then the canvas grid).

    The segments place the tokens for models with 2-D positions (Qwen-VL): the base
    view on its own grid, the unpadded grid tokens at their canvas cells.
    """
    tokens = adapter.encode_tiles([image.base, *image.tiles])
    g = adapter.tokens_per_side
    positions = tile_token_positions(image.geometry.tiles(), g)
    r0, r1, c0, c1 = image.geometry.unpadded_token_box(g)
    inside = (
        (positions[:, 0] >= r0) & (positions[:, 0] < r1)
        & (positions[:, 1] >= c0) & (positions[:, 1] < c1)
    )  # fmt: skip
    grid_tokens = adapter.pool_tiles(tokens[1:]).flatten(0, -2)
    keep = torch.as_tensor(np.flatnonzero(inside), dtype=torch.long, device=grid_tokens.device)
    sequence, _, order = layout_vision_tokens(
        grid_tokens[keep], positions[inside], tokens[0], adapter.image_newline
    )
    rows, cols = image.geometry.grid
    segments = [
        _full_segment(adapter.encoder_tokens_per_side),
        VisionSegment(positions[inside][order], (rows * g, cols * g)),
    ]
    return sequence, segments


def _full_segment(side: int) -> VisionSegment:
    """Every cell of a ``side`` x ``side`` grid in raster order (a thumbnail or base view)."""
    return VisionSegment(np.stack(np.divmod(np.arange(side * side), side), axis=1), (side, side))


def sequence_positions(
    adapter: LlavaAdapter, prompt: PromptParts, segments: list[VisionSegment]
) -> torch.Tensor | None:
    """The adapter's M-RoPE positions of a sequence, or None where positions are 1-D."""
    return adapter.position_ids(prompt, segments) if uses_mrope(adapter) else None


def model_dims(adapter: LlavaAdapter) -> ModelDims:
    """The FLOPs dimensions of the model as the adapter feeds it (pooling, row ends)."""
    if uses_mrope(adapter):
        text = adapter.config.text_config
        return ModelDims(
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_layers=text.num_hidden_layers,
            tile_size=adapter.tile_size,
            patch_size=adapter.tile_size // adapter.tokens_per_side,
            image_newline=False,
        )
    return replace(
        ModelDims.from_config(adapter.config.to_dict()),
        hr_pool=adapter.options.hr_pool,
        image_newline=adapter.image_newline is not None,
    )


# ---------------------------------------------------------------------- strategies
class _ModelStrategy:
    """What every strategy shares: the model, its dimensions and result assembly."""

    name: str
    #: 1-based source bands shown as R, G, B (or one as grey), as in GDAL; None: the
    #: ones the file calls red, green and blue (``ModelOptions.bands``, ``--bands``).
    bands: tuple[int, ...] | None = None

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
        with PyramidReader.open(
            image_path, tile_size=self.adapter.tile_size, bands=self.bands
        ) as reader:
            return reader.thumbnail()

    @torch.no_grad()
    def answer(self, prepared: np.ndarray, question: str) -> StrategyResult:
        """Answer from the thumbnail's tokens only."""
        adapter = self.adapter
        tokens = adapter.encode_tiles([prepared])[0]
        prompt = adapter.prompt_parts(question)
        embeds, _ = adapter.assemble(prompt, tokens)
        segments = [_full_segment(adapter.encoder_tokens_per_side)]
        positions = sequence_positions(adapter, prompt, segments)
        answer = adapter.generate(embeds, self.max_new_tokens, position_ids=positions)
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
        self._encoded: (
            tuple[weakref.ref[FullResolutionImage], torch.Tensor, list[VisionSegment]] | None
        ) = None

    def prepare(self, image_path: Path) -> FullResolutionImage:
        """Read the thumbnail and all finest tiles, or refuse an image that does not fit."""
        with PyramidReader.open(
            image_path, tile_size=self.adapter.tile_size, bands=self.bands
        ) as reader:
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
            hr = adapter.pool_tiles(tokens[1:]).flatten(0, -2)
            positions = tile_token_positions(prepared.positions, adapter.tokens_per_side)
            sequence, _, order = layout_vision_tokens(
                hr, positions, tokens[0], adapter.image_newline
            )
            rows = max(r for r, _ in prepared.positions) + 1
            cols = max(c for _, c in prepared.positions) + 1
            g = adapter.tokens_per_side
            segments = [
                _full_segment(adapter.encoder_tokens_per_side),
                VisionSegment(positions[order], (rows * g, cols * g)),
            ]
            self._encoded = (weakref.ref(prepared), sequence, segments)
        _, sequence, segments = self._encoded
        prompt = adapter.prompt_parts(question)
        embeds, _ = adapter.assemble(prompt, sequence)
        positions = sequence_positions(adapter, prompt, segments)
        answer = adapter.generate(embeds, self.max_new_tokens, position_ids=positions)
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
        return read_anyres(image_path, self.grid_tiles, self.adapter.tile_size, self.bands)

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
        sequence, segments = anyres_layout(adapter, prepared)
        prompt = adapter.prompt_parts(question)
        embeds, _ = adapter.assemble(prompt, sequence)
        positions = sequence_positions(adapter, prompt, segments)
        answer = adapter.generate(embeds, self.max_new_tokens, position_ids=positions)
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
        sequence, segments = anyres_layout(adapter, prepared)
        prompt = adapter.prompt_parts(question)
        embeds, vision_slice = adapter.assemble(prompt, sequence)
        positions = sequence_positions(adapter, prompt, segments)
        generation = self.decoder.generate(
            embeds, vision_slice, self.drops, self.max_new_tokens, position_ids=positions
        )
        per_layer = tuple(generation.vision_tokens_per_layer)
        count = TokenCount(self.name, self._encoded(prepared), per_layer)
        trace = self._trace(prepared) | {
            "drops": {str(layer): ratio for layer, ratio in sorted(self.drops.items())},
            "vision_tokens_per_layer": list(per_layer),
        }
        return self._result(generation.answer, count, int(embeds.shape[1]), trace)


class NativeStrategy(_ModelStrategy):
    """A Qwen-VL model's own dynamic resolution: the whole image under a pixel budget.

    The image is read once at the size Qwen-VL's resize rule gives it
    (:func:`budgets.native_size`; a gigapixel image is never read whole) and handed to
    the model's own processor and ``generate``, which place its tokens themselves: the
    LRS-VQA paper's Fig. 5 setting.
    """

    def __init__(
        self, name: str, adapter: LlavaAdapter, max_new_tokens: int, options: NativeOptions
    ) -> None:
        if not uses_mrope(adapter):
            raise ValueError(
                "native is a Qwen-VL model's own dynamic resolution; "
                f"model type {adapter.config.model_type!r} has none (use anyres-pX)"
            )
        super().__init__(name, adapter, max_new_tokens)
        self.options = options

    def prepare(self, image_path: Path) -> np.ndarray:
        """Read the whole image at its native-resolution size."""
        options, unit = self.options, self.dims.patch_size
        with open_image(image_path) as image:
            size = budgets.native_size(
                image.height, image.width, unit, options.min_pixels, options.max_pixels
            )
            whole = (0.0, 0.0, float(image.width), float(image.height))
            return image.read_region(whole, size)

    @torch.no_grad()
    def answer(self, prepared: np.ndarray, question: str) -> StrategyResult:
        """Answer through the model's own processor and ``generate``."""
        from PIL import Image

        adapter = self.adapter
        inputs = adapter.processor(
            images=Image.fromarray(prepared),
            text=adapter.chat_text(question),
            do_resize=False,
            return_tensors="pt",
        ).to(adapter.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(adapter.dtype)
        output = adapter.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=adapter.tokenizer.pad_token_id,
        )
        length = int(inputs["input_ids"].shape[1])
        answer = adapter.tokenizer.decode(output[0, length:], skip_special_tokens=True).strip()
        unit = self.dims.patch_size
        n = (prepared.shape[0] // unit) * (prepared.shape[1] // unit)
        count = TokenCount(self.name, n, self._all_layers(n))
        trace = {"resized": [int(prepared.shape[0]), int(prepared.shape[1])], "tokens": n}
        return self._result(answer, count, length, trace)


class CoarseToFineStrategy(_ModelStrategy):
    """Coarse-to-fine (Alg. 1) on the DIP, or on one anyres grid without DIP.

    Args:
        name: Registered name.
        adapter: The model.
        rfm: Its Region Focus Module (trained or training-free).
        config: Alg. 1 options.
        pyramid: The DIP (``c2f``), or None to prune on the single anyres grid of at
            most ``grid_tiles`` tiles placed by :func:`grid_geometry` (``c2f-nodip``,
            the paper's Tab. 5 ablation).
        grid_tiles: That grid's budget (``c2f-nodip`` only).
    """

    def __init__(
        self,
        name: str,
        adapter: LlavaAdapter,
        rfm: RegionFocusModule,
        config: CoarseToFineConfig,
        pyramid: PyramidConfig | None = None,
        grid_tiles: int | None = None,
    ) -> None:
        super().__init__(name, adapter, config.max_new_tokens)
        if (pyramid is None) == (grid_tiles is None):
            raise ValueError("give either a pyramid (c2f) or grid_tiles (c2f-nodip)")
        self.c2f = CoarseToFine(adapter, rfm, config)
        self.pyramid = pyramid
        self.grid_tiles = grid_tiles
        self.rfm_dims = replace(model_dims(adapter), rfm_layers=len(rfm.layers))

    def prepare(self, image_path: Path) -> PyramidReader:
        """Open the image lazily with its DIP (or single-grid) geometry."""
        b = self.adapter.tile_size
        if self.pyramid is not None:
            return PyramidReader.open(
                image_path,
                tile_size=b,
                min_short_side=self.pyramid.min_short_side,
                dip_rule=self.pyramid.dip_rule,
                bands=self.bands,
            )
        image = open_image(image_path, bands=self.bands)
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
def _adapter(model: ModelOptions) -> LlavaAdapter:
    """The shared model.

    Raises:
        ValueError: No model path was given.
    """
    if model.model_path is None:
        raise ValueError("this strategy needs a model path (model_path=..., --model)")
    return shared_adapter(
        model.model_path,
        model.dtype,
        model.device,
        attn_implementation=model.attn_implementation,
        device_map=model.device_map,
        hr_pool=model.hr_pool,
        pool_mode=model.hr_pool_mode,
        newline=model.newline,
    )


def make_thumbnail(model: ModelOptions, options: NoOptions) -> ThumbnailStrategy:
    """Factory of ``thumbnail``."""
    return ThumbnailStrategy("thumbnail", _adapter(model), model.max_new_tokens)


def make_anyres(model: ModelOptions, options: NoOptions, max_tiles: int) -> AnyresStrategy:
    """Factory of ``anyres-pX``."""
    return AnyresStrategy(f"anyres-p{max_tiles}", _adapter(model), model.max_new_tokens, max_tiles)


def make_fullres(model: ModelOptions, options: FullResOptions) -> FullResolutionStrategy:
    """Factory of ``fullres``."""
    return FullResolutionStrategy(
        "fullres", _adapter(model), model.max_new_tokens, options.max_tiles
    )


def _clip_adapter(model: ModelOptions, name: str) -> LlavaAdapter:
    """The shared model, refused where it has no CLIP-style [CLS] token to rank by."""
    adapter = _adapter(model)
    if uses_mrope(adapter):
        raise ValueError(
            f"{name} ranks tokens by the vision tower's [CLS] attention, which "
            f"Qwen-VL's vision transformer has not"
        )
    return adapter


def make_native(model: ModelOptions, options: NativeOptions) -> NativeStrategy:
    """Factory of ``native``."""
    return NativeStrategy("native", _adapter(model), model.max_new_tokens, options)


def make_visionzip(model: ModelOptions, options: VisionZipOptions) -> CropReductionStrategy:
    """Factory of ``visionzip``."""
    return CropReductionStrategy(
        "visionzip",
        _clip_adapter(model, "visionzip"),
        model.max_new_tokens,
        options.grid_tiles,
        partial(visionzip_crops, retained=options.retained),
    )


def make_prumerge(model: ModelOptions, options: PruMergeOptions) -> CropReductionStrategy:
    """Factory of ``prumerge++``."""
    return CropReductionStrategy(
        "prumerge++",
        _clip_adapter(model, "prumerge++"),
        model.max_new_tokens,
        options.grid_tiles,
        partial(prumerge_crops, ratio=options.ratio, neighbours=options.neighbours),
    )


def make_llm_drop(
    model: ModelOptions, options: FastVOptions | PDropOptions, name: str
) -> LLMDropStrategy:
    """Factory of ``fastv`` and ``pdrop``."""
    adapter = _adapter(model)
    drops = options.drops(len(adapter.decoder_layers))
    return LLMDropStrategy(name, adapter, model.max_new_tokens, options.grid_tiles, drops)


def _rfm(adapter: LlavaAdapter, options: RFMOptions) -> RegionFocusModule:
    layers = list(options.rfm_layers) if options.rfm_layers else None
    return shared_rfm(adapter, options.rfm_path, layers)


def _check_rfm(options: RFMOptions) -> None:
    """A mistyped ``rfm_path`` fails before the model loads."""
    if options.rfm_path is not None:
        RegionFocusModule.check_source(options.rfm_path)


def make_c2f(model: ModelOptions, options: C2FOptions) -> CoarseToFineStrategy:
    """Factory of ``c2f``."""
    _check_rfm(options)
    adapter = _adapter(model)
    return CoarseToFineStrategy(
        "c2f",
        adapter,
        _rfm(adapter, options),
        options.config(model.max_new_tokens),
        pyramid=options.pyramid(adapter.tile_size),
    )


def make_c2f_nodip(model: ModelOptions, options: C2FNoDipOptions) -> CoarseToFineStrategy:
    """Factory of ``c2f-nodip``."""
    _check_rfm(options)
    adapter = _adapter(model)
    config = CoarseToFineConfig(alpha=options.alpha, max_new_tokens=model.max_new_tokens)
    rfm = _rfm(adapter, options)
    return CoarseToFineStrategy("c2f-nodip", adapter, rfm, config, grid_tiles=options.grid_tiles)


def _reading(factory: Callable[[ModelOptions, Any], _ModelStrategy]) -> Callable:
    """``factory`` whose strategies read images with the model options' ``bands``."""

    def build(model: ModelOptions, options: Any) -> _ModelStrategy:
        strategy = factory(model, options)
        strategy.bands = model.bands
        return strategy

    return build


register_strategy(
    "thumbnail",
    _reading(make_thumbnail),
    counter=counters.count_thumbnail,
    summary="LLaVA-1.5 style: one view of the whole image.",
)
for _tiles in ANYRES_MAX_TILES:
    register_strategy(
        f"anyres-p{_tiles}",
        _reading(partial(make_anyres, max_tiles=_tiles)),
        counter=partial(counters.count_anyres, max_tiles=_tiles),
        summary=f"LLaVA-NeXT anyres, at most {_tiles} tiles, every token to the LLM.",
    )
register_strategy(
    "fullres",
    _reading(make_fullres),
    options=FullResOptions,
    counter=counters.count_fullres,
    summary="Every tile at full resolution, where it fits (paper Fig. 1(b)).",
)
register_strategy(
    "visionzip",
    _reading(make_visionzip),
    options=VisionZipOptions,
    counter=counters.count_visionzip,
    summary="VisionZip: dominant + contextual tokens of every anyres crop.",
)
register_strategy(
    "prumerge++",
    _reading(make_prumerge),
    options=PruMergeOptions,
    counter=counters.count_prumerge,
    summary="PruMerge+: outlier tokens of every anyres crop, merged.",
)
register_strategy(
    "fastv",
    _reading(partial(make_llm_drop, name="fastv")),
    options=FastVOptions,
    counter=counters.count_fastv,
    summary="FastV: vision tokens cut once inside the LLM.",
)
register_strategy(
    "pdrop",
    _reading(partial(make_llm_drop, name="pdrop")),
    options=PDropOptions,
    counter=counters.count_pdrop,
    summary="PyramidDrop: vision tokens cut at each LLM stage.",
)
register_strategy(
    "native",
    make_native,
    options=NativeOptions,
    counter=counters.count_native,
    summary="Qwen-VL only: its own dynamic resolution under max_pixels (paper Fig. 5).",
)
register_strategy(
    "c2f",
    _reading(make_c2f),
    options=C2FOptions,
    counter=counters.count_c2f,
    summary="Coarse-to-fine text-guided pruning on the DIP (paper Alg. 1).",
)
register_strategy(
    "c2f-nodip",
    _reading(make_c2f_nodip),
    options=C2FNoDipOptions,
    counter=counters.count_c2f_nodip,
    summary="RFM pruning on one anyres grid, no pyramid (paper Tab. 5).",
)
