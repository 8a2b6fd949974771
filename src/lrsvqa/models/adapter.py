"""One small interface over stock Hugging Face LLaVA-family models.

``LlavaAdapter`` exposes the seams coarse-to-fine inference needs, using only public
modules of unmodified ``transformers`` classes (``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``):

* encode a batch of B x B tiles into projected vision tokens,
* embed text around the image placeholder of the model's own chat template,
* run the language model (or generate) on assembled ``inputs_embeds``.

Two architecture choices decide how tiles become LLM tokens
(:class:`VisionTokenOptions`): the paper's model (the authors' LLaVA-NeXT-Qwen2) pools
every high-resolution tile's token grid 2 x 2 (``get_2dPool`` in their
``llava_arch.py``; the thumbnail stays unpooled), and row-end (``image_newline``)
tokens can be left out.

Loading, the LLM's modules and prompt assembly, which Qwen-VL models share, live in
:class:`lrsvqa.models.adapter_base.VisionLanguageAdapter`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from lrsvqa.budgets import DEFAULT_MAX_NEW_TOKENS
from lrsvqa.models.adapter_base import PromptParts, VisionLanguageAdapter

SUPPORTED_MODEL_TYPES = ("llava", "llava_next", "llava_onevision")
POOL_MODES = ("bilinear", "average", "max")


@dataclass(frozen=True)
class VisionTokenOptions:
    """How the encoder's tile features become LLM tokens.

    Attributes:
        hr_pool: Stride of the 2-D pooling of every high-resolution tile's token grid
            after the projector (1 = none, 2 = the paper's model: 24 x 24 -> 12 x 12).
            The thumbnail is never pooled.
        pool_mode: ``"bilinear"`` (the authors' default: resize to ``ceil(g / stride)``),
            ``"average"`` or ``"max"`` (``stride`` x ``stride`` windows, ``floor``).
        newline: Close every token row with the model's ``image_newline`` where it has
            one; False feeds no row-end tokens (as the paper's Tab. 4 counts).
    """

    hr_pool: int = 1
    pool_mode: str = "bilinear"
    newline: bool = True

    def __post_init__(self) -> None:
        if self.hr_pool < 1:
            raise ValueError(f"hr_pool must be >= 1, got {self.hr_pool}")
        if self.pool_mode not in POOL_MODES:
            raise ValueError(
                f"unknown pool mode {self.pool_mode!r}; known: {', '.join(POOL_MODES)}"
            )

    @classmethod
    def from_config(cls, config: Any) -> VisionTokenOptions:
        """The options a checkpoint's config states, defaults for the rest.

        Keys: ``hr_pool`` / ``hr_pool_mode``, or the authors' ``mm_spatial_pool_stride``
        / ``mm_spatial_pool_mode``.
        """
        stride = getattr(config, "hr_pool", None) or getattr(config, "mm_spatial_pool_stride", None)
        mode = getattr(config, "hr_pool_mode", None) or getattr(
            config, "mm_spatial_pool_mode", None
        )
        return cls(
            hr_pool=int(stride or cls.hr_pool),
            pool_mode=str(mode or cls.pool_mode),
        )

    def pooled_side(self, side: int) -> int:
        """Tokens per side of a ``side`` x ``side`` grid after pooling."""
        if self.hr_pool == 1:
            return side
        if self.pool_mode == "bilinear":
            return math.ceil(side / self.hr_pool)
        return side // self.hr_pool


class LlavaAdapter(VisionLanguageAdapter[VisionTokenOptions]):
    """Uniform access to the vision tower, projector and LLM of a LLaVA-family model.

    ``tokens_per_side`` / ``tokens_per_tile`` describe a high-resolution tile as the LLM
    sees it (after pooling); ``thumbnail_tokens`` the unpooled global view.

    Args:
        model: A loaded ``Llava*ForConditionalGeneration``.
        processor: Its processor (tokenizer with chat template + image processor).
        options: Pooling and row-end tokens (default: what the model's config says).
    """

    family = "LLaVA"
    model_types = SUPPORTED_MODEL_TYPES
    vision_tower_name = "vision_tower"  # a CLIP or SigLIP vision model

    def __init__(
        self, model: PreTrainedModel, processor, options: VisionTokenOptions | None = None
    ) -> None:
        super().__init__(model, processor)
        vision = self.config.vision_config
        self.tile_size: int = vision.image_size
        self.encoder_tokens_per_side: int = vision.image_size // vision.patch_size
        self.options = options or VisionTokenOptions.from_config(self.config)
        self.tokens_per_side: int = self.options.pooled_side(self.encoder_tokens_per_side)
        if self.tokens_per_side < 1:
            raise ValueError(
                f"hr_pool {self.options.hr_pool} leaves no token of a "
                f"{self.encoder_tokens_per_side} x {self.encoder_tokens_per_side} tile grid"
            )
        image_processor = getattr(processor, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(image_processor, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def with_options(
        self,
        *,
        hr_pool: int | None = None,
        pool_mode: str | None = None,
        newline: bool | None = None,
    ) -> LlavaAdapter:
        """A view of the same model (weights shared) with some token options overridden."""
        changes = {"hr_pool": hr_pool, "pool_mode": pool_mode, "newline": newline}
        options = replace(self.options, **{k: v for k, v in changes.items() if v is not None})
        if options == self.options:
            return self
        view = copy.copy(self)
        view.options = options
        view.tokens_per_side = options.pooled_side(self.encoder_tokens_per_side)
        if view.tokens_per_side < 1:
            raise ValueError(f"hr_pool {options.hr_pool} leaves no token of a tile")
        return view

    # ------------------------------------------------------------------ modules
    @property
    def image_newline(self) -> torch.Tensor | None:
        """LLaVA-NeXT's learned end-of-row embedding; None for LLaVA-1.5 or without newlines."""
        if not self.options.newline:
            return None
        return getattr(self.model.model, "image_newline", None)

    @property
    def vision_encoder_layers(self) -> nn.ModuleList:
        """The vision encoder's transformer layers (VisionZip/PruMerge+ read one)."""
        tower = self.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The multimodal projector on vision features ``(..., c)``: ``(..., hidden)``."""
        return self.model.model.multi_modal_projector(features)

    # ------------------------------------------------------------------ vision
    def pixel_values(self, tiles: list[np.ndarray]) -> torch.Tensor:
        """Normalise uint8 RGB tiles (B, B, 3) into the vision tower's input tensor."""
        array = np.stack([np.asarray(tile, dtype=np.uint8) for tile in tiles])
        pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
        if pixels.shape[-1] != self.tile_size or pixels.shape[-2] != self.tile_size:
            pixels = nn.functional.interpolate(
                pixels, size=(self.tile_size, self.tile_size), mode="bicubic", align_corners=False
            ).clamp(0, 1)
        pixels = (pixels - self._mean) / self._std
        return pixels.to(self.device, self.dtype)

    def encode_pixels(self, pixel_values: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Vision tower + projector on normalised views, unpooled: (N, thumbnail_tokens, hidden).

        Keeps the autograd graph (training encodes through it); inference callers wrap
        it in ``torch.no_grad``.
        """
        layer = self.config.vision_feature_layer
        strategy = self.config.vision_feature_select_strategy
        outputs = []
        for start in range(0, pixel_values.shape[0], batch_size):
            batch = pixel_values[start : start + batch_size]
            hidden = self.vision_tower(batch, output_hidden_states=True).hidden_states
            if isinstance(layer, int):
                features = hidden[layer]
            else:
                features = torch.cat([hidden[i] for i in layer], dim=-1)
            if strategy == "default":
                features = features[:, 1:]
            outputs.append(self.project(features))
        return (
            torch.cat(outputs)
            if outputs
            else pixel_values.new_zeros(0, self.thumbnail_tokens, self.hidden_size)
        )

    def encode_tiles(self, tiles: list[np.ndarray]) -> torch.Tensor:
        """Encode uint8 RGB views unpooled: (N, thumbnail_tokens, hidden).

        Thumbnails as they are; tiles go on through :meth:`pool_tiles`.
        """
        if not tiles:
            return torch.zeros(
                0, self.thumbnail_tokens, self.hidden_size, dtype=self.dtype, device=self.device
            )
        return self.encode_pixels(self.pixel_values(tiles))

    def pool_tiles(self, features: torch.Tensor) -> torch.Tensor:
        """Pool encoded tiles (N, thumbnail_tokens, hidden) to (N, tokens_per_tile, hidden).

        As the authors' ``get_2dPool``: on the projected features, row-major grid.
        """
        if self.options.hr_pool == 1:
            return features
        n, _, hidden = features.shape
        side, stride = self.encoder_tokens_per_side, self.options.hr_pool
        grid = features.reshape(n, side, side, hidden).permute(0, 3, 1, 2)
        if self.options.pool_mode == "bilinear":
            pooled = nn.functional.interpolate(
                grid, size=(self.tokens_per_side, self.tokens_per_side), mode="bilinear"
            )
        elif self.options.pool_mode == "average":
            pooled = nn.functional.avg_pool2d(grid, stride)
        else:
            pooled = nn.functional.max_pool2d(grid, stride)
        return pooled.permute(0, 2, 3, 1).reshape(n, self.tokens_per_tile, hidden)

    # ------------------------------------------------------------------ text
    def prompt_parts(self, question: str) -> PromptParts:
        """Split the chat-templated prompt around the image placeholder into token ids."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        template_owner = self.processor if hasattr(self.processor, "apply_chat_template") else None
        text = None
        if template_owner is not None and getattr(template_owner, "chat_template", None):
            text = template_owner.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        if text is None:
            text = f"USER: <image>\n{question} ASSISTANT:"
        return self._split_prompt(text, getattr(self.processor, "image_token", None) or "<image>")

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids (n,) into (n, hidden)."""
        return self.embed_tokens(ids.to(self.device))

    # ------------------------------------------------------------------ LLM
    @torch.no_grad()
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        position_ids: torch.Tensor | None = None,
    ) -> str:
        """Greedy generation from assembled embeddings; returns the decoded new text.

        ``position_ids`` is accepted for the adapter interface and must be None: LLaVA's
        positions are the sequence index.
        """
        if position_ids is not None:
            raise ValueError("LLaVA models take no explicit position ids")
        attention_mask = torch.ones(
            inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device
        )
        output = self.model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()
