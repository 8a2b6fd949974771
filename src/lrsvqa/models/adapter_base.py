"""What the LLaVA and Qwen-VL adapters share: loading, the LLM's modules, prompt assembly.

:class:`lrsvqa.models.adapter.LlavaAdapter` and
:class:`lrsvqa.models.qwen_adapter.QwenVLAdapter` differ in how tiles become tokens,
how the prompt is templated and where positions come from. Both wrap a stock
``*ForConditionalGeneration`` whose language model, embeddings, head and generation
config sit at the same places, so those accessors, checkpoint loading and
``[prefix, vision, suffix]`` assembly are written once here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel

from lrsvqa.errors import LrsvqaError, ModelLoadError
from lrsvqa.models.checkpoint import check_weight_files, resolve_checkpoint
from lrsvqa.models.placement import DEFAULT_DEVICE, DEFAULT_DTYPE, load_kwargs, resolve_device

OptionsT = TypeVar("OptionsT")
AdapterT = TypeVar("AdapterT", bound="VisionLanguageAdapter")


@dataclass(frozen=True)
class PromptParts:
    """Token ids of the text before and after the image placeholder."""

    prefix_ids: torch.Tensor
    suffix_ids: torch.Tensor


class VisionLanguageAdapter(ABC, Generic[OptionsT]):
    """The seams of a stock Hugging Face vision-language model that do not depend on its family.

    A subclass names its family (``family``, ``model_types``: for error messages and
    the type check), where its vision tower lives (``vision_tower_name``), how its
    processor loads (:meth:`load_processor`), and sets the token geometry
    (``tile_size``, ``encoder_tokens_per_side``, ``tokens_per_side``).

    Args:
        model: A loaded model of one of ``model_types``.
        processor: Its processor (tokenizer with chat template + image processor).

    Raises:
        ModelLoadError: The model is not of the subclass's family.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    vision_tower_name: ClassVar[str]
    uses_mrope: ClassVar[bool] = False

    tile_size: int
    encoder_tokens_per_side: int
    tokens_per_side: int

    def __init__(self, model: PreTrainedModel, processor) -> None:
        model_type = model.config.model_type
        if model_type not in self.model_types:
            raise ModelLoadError(
                getattr(model.config, "_name_or_path", "") or "model",
                f"model type {model_type!r} is not a supported {self.family} family "
                f"({', '.join(self.model_types)})",
            )
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.config = model.config

    @classmethod
    def load_processor(cls, location: str | Path):
        """The checkpoint's processor (remote code never trusted)."""
        return AutoProcessor.from_pretrained(location, trust_remote_code=False)

    @classmethod
    def from_pretrained(
        cls: type[AdapterT],
        path: str | Path,
        *,
        dtype: str | torch.dtype = DEFAULT_DTYPE,
        device: str | torch.device = DEFAULT_DEVICE,
        attn_implementation: str | None = None,
        device_map: str | dict[str, Any] | None = None,
        options: OptionsT | None = None,
    ) -> AdapterT:
        """Load a checkpoint (local folder or hub id) in the requested dtype and device.

        The location is settled first (:func:`resolve_checkpoint`: no network retries
        for a mistyped name) and local weight files are checked for truncation, so
        every failure names the folder or file. Remote code is never trusted.

        Args:
            path: Checkpoint folder or hub id.
            dtype: Weight dtype name or ``auto`` (:func:`resolve_dtype`).
            device: Torch device or ``auto`` (:func:`resolve_device`); ignored with
                ``device_map``.
            attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``, ... (None:
                transformers' choice).
            device_map: Passed to transformers (e.g. ``auto``: accelerate spreads the
                weights over the GPUs and the CPU); the model is then not moved.
            options: The subclass's token or tile options (default: the checkpoint's).

        Raises:
            ModelLoadError: Naming the folder, hub id or weight file at fault.
        """
        location = resolve_checkpoint(path)
        if Path(location).is_dir():
            check_weight_files(Path(location))
        target = resolve_device(device)
        try:
            config = AutoConfig.from_pretrained(location, trust_remote_code=False)
            processor = cls.load_processor(location)
            model = AutoModelForImageTextToText.from_pretrained(
                location, **load_kwargs(config, dtype, target, attn_implementation, device_map)
            )
        except LrsvqaError:
            raise
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ModelLoadError(
                path, f"cannot load a {cls.family} model ({type(error).__name__}: {first})"
            ) from error
        return cls(model if device_map is not None else model.to(target), processor, options)

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
        """The bare decoder (``LlamaModel``, ``Qwen2Model``, ``Qwen2VLTextModel``, ...)."""
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
        """The learned end-of-row embedding: none here (LLaVA-NeXT's adapter has one)."""
        return None

    @property
    def vision_tower(self) -> nn.Module:
        """The vision encoder (``vision_tower_name`` of the inner model)."""
        return getattr(self.model.model, self.vision_tower_name)

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
        """LLM tokens one high-resolution tile becomes (after any pooling)."""
        return self.tokens_per_side**2

    @property
    def thumbnail_tokens(self) -> int:
        """Tokens out of the encoder per view (the thumbnail's count, a tile's before pooling)."""
        return self.encoder_tokens_per_side**2

    # ------------------------------------------------------------------ vision
    @abstractmethod
    def encode_tiles(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """Encode uint8 RGB views unpooled: (N, thumbnail_tokens, width)."""

    @abstractmethod
    def pool_tiles(self, features: torch.Tensor) -> torch.Tensor:
        """Pool encoded tiles to (N, tokens_per_tile, width)."""

    def encode_hr_tiles(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """Encode high-resolution tiles into the LLM's tokens (N, tokens_per_tile, width)."""
        return self.pool_tiles(self.encode_tiles(tiles))

    # ------------------------------------------------------------------ text
    def _split_prompt(self, text: str, image_token: str) -> PromptParts:
        """Token ids of a templated prompt before and after its one image placeholder.

        Raises:
            ValueError: The text has no placeholder or more than one.
        """
        if text.count(image_token) != 1:
            raise ValueError(f"chat template must contain exactly one {image_token!r} placeholder")
        before, after = text.split(image_token)
        prefix = self.tokenizer(before, add_special_tokens=True, return_tensors="pt").input_ids[0]
        suffix = self.tokenizer(after, add_special_tokens=False, return_tensors="pt").input_ids[0]
        return PromptParts(prefix.to(self.device), suffix.to(self.device))

    @abstractmethod
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids (n,) into rows as wide as the vision tokens."""

    def assemble(
        self, prompt: PromptParts, vision_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, slice]:
        """Build ``[prefix, vision, suffix]`` embeddings (1, n, width) and the vision slice."""
        prefix = self.embed_ids(prompt.prefix_ids)
        suffix = self.embed_ids(prompt.suffix_ids)
        embeds = torch.cat([prefix, vision_tokens.to(prefix.dtype), suffix], dim=0)[None]
        start = prefix.shape[0]
        return embeds, slice(start, start + vision_tokens.shape[0])
