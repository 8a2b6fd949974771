"""Theoretical FLOPs of the LLM part for the vision tokens: the formula only.

Pure arithmetic: no torch, no weights. The per-layer cost is the formula FastV
(Chen et al., 2024) and PyramidDrop (Xing et al., 2024) use for a decoder layer on
``n`` tokens with hidden size ``d`` and MLP intermediate size ``m``::

    4 n d^2 + 2 n^2 d + 3 n d m

(q/k/v/o projections, attention scores and weighted sum, the three SwiGLU matrices),
summed over the layers with each layer's own ``n``. As in the LRS-VQA paper's Tab. 4,
``n`` counts only the vision tokens after the projector. The Region Focus Module of
coarse-to-fine is counted the same way: its ``R`` layers on the vision tokens it sees
at each pyramid level.

How many tokens each strategy feeds each layer is the strategy's own business: its
counter is registered with it (:mod:`lrsvqa.strategies.counters`,
:func:`lrsvqa.strategies.registry.count_strategy`). Model dimensions come from a
Hugging Face LLaVA or Qwen-VL ``config.json`` (no weights needed); a Qwen-VL "patch" is
one merged token (``patch_size * spatial_merge_size`` px).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrsvqa.budgets import QWEN_TILE_SIZE
from lrsvqa.imagery.pyramid import DEFAULT_TILE_SIZE

# The paper's RFM (Sec. 5.1) has 4 layers, each counted once per pyramid level.
RFM_LAYERS = 4
QWEN_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


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
            (1 = none, 2 = the paper's model, whose ``get_2dPool`` in ``llava_arch.py``
            pools 24 x 24 to 12 x 12); the thumbnail is never pooled.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int
    tile_size: int = DEFAULT_TILE_SIZE
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
        if config.get("model_type") in QWEN_MODEL_TYPES:
            return cls._from_qwen_config(config, rfm_layers)
        text, vision = _text_and_vision(
            config, dict(config.get("text_config") or {}), ("image_size", "patch_size")
        )
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

    @classmethod
    def _from_qwen_config(cls, config: Mapping[str, Any], rfm_layers: int) -> ModelDims:
        """A Qwen-VL config: 448 px tiles (the adapter's default), 28 px merged tokens.

        Older checkpoints keep the text model's keys at the top level, newer ones in
        ``text_config``; defaults omitted on saving come from the config class.
        """
        text, vision = _text_and_vision(
            config, dict(config.get("text_config") or config), ("patch_size", "spatial_merge_size")
        )
        return cls(
            hidden_size=int(text["hidden_size"]),
            intermediate_size=int(text["intermediate_size"]),
            num_layers=int(text["num_hidden_layers"]),
            tile_size=QWEN_TILE_SIZE,
            patch_size=int(vision["patch_size"]) * int(vision["spatial_merge_size"]),
            image_newline=False,
            rfm_layers=rfm_layers,
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


_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers")


def _text_and_vision(
    config: Mapping[str, Any], text: dict[str, Any], vision_keys: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The text and vision values :class:`ModelDims` needs from a checkpoint config.

    Checkpoints saved by ``transformers`` omit values equal to their class defaults;
    those are filled in from the ``transformers`` config class, imported only then.
    """
    vision = dict(config.get("vision_config") or {})
    if any(k not in text for k in _TEXT_KEYS) or any(k not in vision for k in vision_keys):
        from transformers import AutoConfig

        full = AutoConfig.for_model(**dict(config))
        text = {k: text.get(k, getattr(full.text_config, k)) for k in _TEXT_KEYS}
        vision = {k: vision.get(k, getattr(full.vision_config, k)) for k in vision_keys}
    return text, vision
