"""One small interface over stock Hugging Face LLaVA-family models.

``LlavaAdapter`` exposes the seams coarse-to-fine inference needs, using only public
modules of unmodified ``transformers`` classes (``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``):

* encode a batch of B x B tiles into projected vision tokens,
* embed text around the image placeholder of the model's own chat template,
* run the language model (or generate) on assembled ``inputs_embeds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from lrsvqa.budgets import DEFAULT_MAX_NEW_TOKENS

SUPPORTED_MODEL_TYPES = ("llava", "llava_next", "llava_onevision")


class ModelLoadError(ValueError):
    """A checkpoint could not be used: names the path and the reason."""


@dataclass(frozen=True)
class PromptParts:
    """Token ids of the text before and after the image placeholder."""

    prefix_ids: torch.Tensor
    suffix_ids: torch.Tensor


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype == "auto":
        return None
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[dtype]


class LlavaAdapter:
    """Uniform access to the vision tower, projector and LLM of a LLaVA-family model.

    Args:
        model: A loaded ``Llava*ForConditionalGeneration``.
        processor: Its processor (tokenizer with chat template + image processor).
    """

    def __init__(self, model: PreTrainedModel, processor) -> None:
        model_type = model.config.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"model type {model_type!r} is not a supported LLaVA family "
                f"({', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.config = model.config
        vision = self.config.vision_config
        self.tile_size: int = vision.image_size
        self.tokens_per_side: int = vision.image_size // vision.patch_size
        image_processor = getattr(processor, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(image_processor, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: str | torch.dtype | None = "float32",
        device: str | torch.device = "cpu",
        attn_implementation: str | None = None,
    ) -> LlavaAdapter:
        """Load a checkpoint (local folder or hub id) in the requested dtype and device."""
        kwargs = {}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            processor = AutoProcessor.from_pretrained(str(path))
            model = AutoModelForImageTextToText.from_pretrained(
                str(path), dtype=_resolve_dtype(dtype), **kwargs
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load a LLaVA model from {path}: {error}") from error
        return cls(model.to(device), processor)

    # ------------------------------------------------------------------ modules
    @property
    def device(self) -> torch.device:
        """Device of the LLM weights."""
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the LLM weights."""
        return self.embed_tokens.weight.dtype

    @property
    def language_model(self) -> nn.Module:
        """The bare decoder (``LlamaModel``/``Qwen2Model``): layers, norm, rotary embedding."""
        return self.model.model.language_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The LLM's decoder layers."""
        return self.language_model.layers

    @property
    def embed_tokens(self) -> nn.Embedding:
        """The LLM's input embedding table."""
        return self.model.get_input_embeddings()

    @property
    def image_newline(self) -> torch.Tensor | None:
        """LLaVA-NeXT's learned end-of-row embedding, or None for LLaVA-1.5."""
        return getattr(self.model.model, "image_newline", None)

    @property
    def vision_tower(self) -> nn.Module:
        """The vision encoder (a CLIP or SigLIP vision model)."""
        return self.model.model.vision_tower

    @property
    def vision_encoder_layers(self) -> nn.ModuleList:
        """The vision encoder's transformer layers (VisionZip/PruMerge+ read one)."""
        tower = self.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The multimodal projector on vision features ``(..., c)``: ``(..., hidden)``."""
        return self.model.model.multi_modal_projector(features)

    @property
    def lm_head(self) -> nn.Module:
        """The LLM's projection from hidden states to vocabulary logits."""
        return self.model.get_output_embeddings()

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation (from the generation config)."""
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    @property
    def hidden_size(self) -> int:
        """LLM hidden size."""
        return self.config.text_config.hidden_size

    @property
    def tokens_per_tile(self) -> int:
        """Vision tokens one tile becomes."""
        return self.tokens_per_side**2

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
        """Vision tower + projector on normalised tiles: (N, tokens_per_tile, hidden).

        Keeps the autograd graph (training encodes through it); inference callers wrap
        it in ``torch.no_grad``.
        """
        layer = self.config.vision_feature_layer
        strategy = self.config.vision_feature_select_strategy
        outputs = []
        for start in range(0, pixel_values.shape[0], batch_size):
            batch = pixel_values[start : start + batch_size]
            hidden = self.model.model.vision_tower(batch, output_hidden_states=True).hidden_states
            if isinstance(layer, int):
                features = hidden[layer]
            else:
                features = torch.cat([hidden[i] for i in layer], dim=-1)
            if strategy == "default":
                features = features[:, 1:]
            outputs.append(self.model.model.multi_modal_projector(features))
        return (
            torch.cat(outputs)
            if outputs
            else pixel_values.new_zeros(0, self.tokens_per_tile, self.hidden_size)
        )

    def encode_tiles(self, tiles: list[np.ndarray]) -> torch.Tensor:
        """Encode uint8 RGB tiles into projected vision tokens (N, tokens_per_tile, hidden)."""
        if not tiles:
            return torch.zeros(
                0, self.tokens_per_tile, self.hidden_size, dtype=self.dtype, device=self.device
            )
        return self.encode_pixels(self.pixel_values(tiles))

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
        image_token = getattr(self.processor, "image_token", None) or "<image>"
        if text.count(image_token) != 1:
            raise ValueError(f"chat template must contain exactly one {image_token!r} placeholder")
        before, after = text.split(image_token)
        prefix = self.tokenizer(before, add_special_tokens=True, return_tensors="pt").input_ids[0]
        suffix = self.tokenizer(after, add_special_tokens=False, return_tensors="pt").input_ids[0]
        return PromptParts(prefix.to(self.device), suffix.to(self.device))

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids (n,) into (n, hidden)."""
        return self.embed_tokens(ids.to(self.device))

    def assemble(
        self, prompt: PromptParts, vision_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, slice]:
        """Build ``[prefix, vision, suffix]`` embeddings (1, n, hidden) and the vision slice."""
        prefix = self.embed_ids(prompt.prefix_ids)
        suffix = self.embed_ids(prompt.suffix_ids)
        embeds = torch.cat([prefix, vision_tokens.to(prefix.dtype), suffix], dim=0)[None]
        start = prefix.shape[0]
        return embeds, slice(start, start + vision_tokens.shape[0])

    # ------------------------------------------------------------------ LLM
    @torch.no_grad()
    def generate(
        self, inputs_embeds: torch.Tensor, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ) -> str:
        """Greedy generation from assembled embeddings; returns the decoded new text."""
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
