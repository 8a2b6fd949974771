"""The adapter interface of :class:`LlavaAdapter` over stock Qwen-VL models.

``QwenVLAdapter`` gives coarse-to-fine inference, the RFM and distillation the same
seams on ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration`` and
``Qwen3VLForConditionalGeneration`` (public modules of unmodified ``transformers`` only):

* DIP tiles of ``tile_size`` px (default 448), a multiple of the vision tower's
  ``patch_size * spatial_merge_size`` (28): a 448 px tile becomes 32 x 32 patches merged
  into 16 x 16 LLM tokens, exactly as the model's own processor turns a 448 x 448 image;
* the chat template split around ``<|image_pad|>``;
* generation from ``inputs_embeds`` with explicit M-RoPE ``position_ids``;
* on Qwen3-VL, each vision token's deepstack features carried as extra columns of its
  row and pruned with it (:mod:`lrsvqa.models.deepstack`).

Positions that survive pruning (the design choice, see :meth:`QwenVLAdapter.position_ids`):
the vision part of a sequence is made of *segments* (the thumbnail; the tokens of one
DIP level). Each segment is placed as Qwen-VL places one image: it starts at the
position after the text before it, its token at grid cell ``(row, col)`` gets
``(t, h, w) = (s, s + row, s + col)``, and what follows starts at
``s + max(rows, cols)`` of the segment's *whole* grid. The grid of a level is the
level's global token grid, so a retained token keeps the position it has when every
token of the level is present, and pruning leaves holes instead of shifting positions.
With one segment holding every token of one tile this is exactly
``Qwen2VLModel.get_rope_index`` on that image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BatchFeature,
    DynamicCache,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from lrsvqa.budgets import DEFAULT_MAX_NEW_TOKENS
from lrsvqa.errors import OptionError
from lrsvqa.models.adapter import VisionTokenOptions
from lrsvqa.models.adapter_base import PromptParts, VisionLanguageAdapter
from lrsvqa.models.deepstack import language_model_inputs, widen
from lrsvqa.models.hf_compat import CACHE_KEYWORD
from lrsvqa.models.layout import VisionSegment

QWEN_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
IMAGE_TOKEN = "<|image_pad|>"


@dataclass(frozen=True)
class QwenVLOptions:
    """How DIP tiles are cut for a Qwen-VL model.

    Attributes:
        tile_size: Side of a DIP tile and of the thumbnail, px; a multiple of the vision
            tower's ``patch_size * spatial_merge_size`` (448 = 16 x 16 merged tokens).
    """

    tile_size: int = 448

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {self.tile_size}")

    @classmethod
    def from_config(cls, config: Any) -> QwenVLOptions:
        """The tile size a checkpoint's config states (key ``tile_size``), else the default.

        A model trained on other tiles (the tiny Qwen2-VL of ``lrsvqa build-default``: 336
        px) records them so that loading it feeds it the tiles it learned on.
        """
        return cls(tile_size=int(getattr(config, "tile_size", None) or cls.tile_size))


class QwenVLProcessing:
    """Tokenizer + image processor doing what ``Qwen2VLProcessor`` does for images.

    ``Qwen2VLProcessor`` cannot be built without torchvision (its video processor
    needs it); images need only the image processor and the placeholder expansion
    (``replace_image_token``: one ``<|image_pad|>`` per merged token), reproduced here.
    """

    def __init__(self, tokenizer, image_processor) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.chat_template = getattr(tokenizer, "chat_template", None)

    @classmethod
    def from_pretrained(cls, location: str | Path) -> QwenVLProcessing:
        """Load tokenizer and image processor from a checkpoint folder or hub id."""
        return cls(
            AutoTokenizer.from_pretrained(location, trust_remote_code=False),
            AutoImageProcessor.from_pretrained(location, trust_remote_code=False),
        )

    def apply_chat_template(self, messages: list[dict], **kwargs: Any) -> str:
        """The tokenizer's chat template as text."""
        kwargs.setdefault("tokenize", False)
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(
        self, images: Any = None, text: str | None = None, return_tensors: str = "pt", **kwargs
    ) -> BatchFeature:
        """Pixel patches, grid sizes and token ids with expanded image placeholders."""
        data: dict[str, Any] = {}
        if images is not None:
            images = images if isinstance(images, list | tuple) else [images]
            data.update(
                self.image_processor(images=images, return_tensors=return_tensors, **kwargs)
            )
            merge = self.image_processor.merge_size**2
            counts = [int(grid.prod()) // merge for grid in data["image_grid_thw"]]
            pieces = text.split(self.image_token)
            if len(pieces) != len(counts) + 1:
                raise ValueError(f"{len(counts)} images but {len(pieces) - 1} placeholders")
            text = pieces[0] + "".join(
                self.image_token * count + piece
                for count, piece in zip(counts, pieces[1:], strict=True)
            )
        tokens = self.tokenizer(text, return_tensors=return_tensors)
        data.update(tokens)
        data["mm_token_type_ids"] = (tokens["input_ids"] == self.image_token_id).int()
        return BatchFeature(data)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Save both parts so :meth:`from_pretrained` (and ``AutoProcessor``) reads them."""
        self.tokenizer.save_pretrained(out_dir)
        self.image_processor.save_pretrained(out_dir)


def load_qwen_processor(location: str | Path):
    """``AutoProcessor`` where it can be built, else :class:`QwenVLProcessing`."""
    try:
        return AutoProcessor.from_pretrained(location, trust_remote_code=False)
    except ImportError:  # torchvision missing: Qwen2VLVideoProcessor cannot be built
        return QwenVLProcessing.from_pretrained(location)


def is_qwen_vl(config: Any) -> bool:
    """Whether a model config (or its ``model_type`` string) is a supported Qwen-VL one."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", "")
    return model_type in QWEN_MODEL_TYPES


class QwenVLAdapter(VisionLanguageAdapter[QwenVLOptions]):
    """Uniform access to the vision tower, merger and LLM of a Qwen-VL model.

    Mirrors :class:`lrsvqa.models.adapter.LlavaAdapter`: a tile and the thumbnail both
    become ``tokens_per_side`` x ``tokens_per_side`` merged tokens; there are no row-end
    tokens and no extra pooling (the model's 2 x 2 patch merger is its pooling).

    On Qwen3-VL, vision tokens and assembled embeddings are rows of ``token_width`` =
    ``(1 + deepstack_layers) * hidden_size`` values (:mod:`lrsvqa.models.deepstack`).

    Args:
        model: A loaded ``Qwen2VLForConditionalGeneration`` (or Qwen2.5-VL).
        processor: Its processor, or a :class:`QwenVLProcessing`.
        options: Tile size (default: the config's ``tile_size``, else 448 px).
    """

    family = "Qwen-VL"
    model_types = QWEN_MODEL_TYPES
    vision_tower_name = "visual"  # the vision transformer with its patch merger
    uses_mrope = True

    def __init__(
        self, model: PreTrainedModel, processor, options: QwenVLOptions | None = None
    ) -> None:
        super().__init__(model, processor)
        self.image_processor = processor.image_processor
        self.qwen_options = options or QwenVLOptions.from_config(model.config)
        vision = self.config.vision_config
        self.merge_size: int = vision.spatial_merge_size
        self.patch_size: int = vision.patch_size
        unit = self.patch_size * self.merge_size
        if self.qwen_options.tile_size % unit:
            raise ValueError(
                f"tile_size {self.qwen_options.tile_size} is not a multiple of "
                f"patch_size * spatial_merge_size = {unit}"
            )
        self.tile_size: int = self.qwen_options.tile_size
        self.encoder_tokens_per_side: int = self.tile_size // unit
        self.tokens_per_side: int = self.encoder_tokens_per_side
        self.options = VisionTokenOptions(hr_pool=1, newline=False)
        self.deepstack_layers: int = len(getattr(vision, "deepstack_visual_indexes", None) or ())

    @classmethod
    def load_processor(cls, location: str | Path):
        """The checkpoint's processor, built without torchvision where needed."""
        return load_qwen_processor(location)

    def with_options(
        self,
        *,
        hr_pool: int | None = None,
        pool_mode: str | None = None,
        newline: bool | None = None,
    ) -> QwenVLAdapter:
        """The LLaVA token options do not apply: only their neutral values are accepted.

        Raises:
            OptionError: Pooling or row-end tokens asked of a Qwen-VL model (a
                ``ValueError``; the CLI reports it in one line).
        """
        if hr_pool not in (None, 1) or newline:
            raise OptionError(
                "hr_pool" if hr_pool not in (None, 1) else "newline",
                "does not apply: Qwen-VL models merge 2 x 2 patches themselves and have no "
                "row-end tokens",
            )
        return self

    def with_tile_size(self, tile_size: int) -> QwenVLAdapter:
        """A view of the same model with another tile size."""
        if tile_size == self.tile_size:
            return self
        return QwenVLAdapter(
            self.model, self.processor, replace(self.qwen_options, tile_size=tile_size)
        )

    # ------------------------------------------------------------------ modules
    @property
    def token_width(self) -> int:
        """Width of a vision token's row: the hidden size, times 1 + deepstack layers."""
        return self.hidden_size * (1 + self.deepstack_layers)

    # ------------------------------------------------------------------ vision
    def pixel_values(self, tiles: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 RGB tiles into the vision tower's patch rows and ``(t, h, w)`` grids.

        The model's own image processor normalises and orders the patches; tiles are
        resized to ``tile_size`` first where needed and never resized by it.
        """
        images = []
        for tile in tiles:
            image = Image.fromarray(np.asarray(tile, dtype=np.uint8))
            if image.size != (self.tile_size, self.tile_size):
                image = image.resize((self.tile_size, self.tile_size), Image.BICUBIC)
            images.append(image)
        out = self.image_processor(images=images, do_resize=False, return_tensors="pt")
        pixels, grids = out["pixel_values"], out["image_grid_thw"]
        return pixels.to(self.device, self.dtype), grids.to(self.device)

    def encode_pixels(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, batch_size: int = 16
    ) -> torch.Tensor:
        """Vision tower + merger on equally sized views: (N, thumbnail_tokens, hidden).

        Keeps the autograd graph (training encodes through it); inference callers wrap
        it in ``torch.no_grad``.
        """
        rows = int(grid_thw[0].prod()) if len(grid_thw) else 0
        outputs = []
        for start in range(0, grid_thw.shape[0], batch_size):
            grids = grid_thw[start : start + batch_size]
            patches = pixel_values[start * rows : (start + grids.shape[0]) * rows]
            merged = self.model.model.get_image_features(patches, grids, return_dict=True)
            if self.deepstack_layers:
                # Each token's row: the merged token, then its deepstack features.
                views = zip(merged.pooler_output, *merged.deepstack_features, strict=True)
                outputs.extend(torch.cat(view, dim=-1) for view in views)
            else:
                outputs.extend(merged.pooler_output)
        if not outputs:
            return torch.zeros(
                0, self.thumbnail_tokens, self.token_width, dtype=self.dtype, device=self.device
            )
        return torch.stack(outputs)

    def encode_tiles(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        """Encode uint8 RGB views: (N, thumbnail_tokens, token_width), raster order per view."""
        if not len(tiles):
            return torch.zeros(
                0, self.thumbnail_tokens, self.token_width, dtype=self.dtype, device=self.device
            )
        return self.encode_pixels(*self.pixel_values(tiles))

    def pool_tiles(self, features: torch.Tensor) -> torch.Tensor:
        """No pooling beyond the model's own merger."""
        return features

    # ------------------------------------------------------------------ text
    def chat_text(self, question: str, images: int = 1) -> str:
        """The chat-templated prompt with ``images`` image placeholders, then the question."""
        content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        owner = self.processor if hasattr(self.processor, "apply_chat_template") else self.tokenizer
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prompt_parts(self, question: str) -> PromptParts:
        """Split the chat-templated prompt around ``<|image_pad|>`` into token ids.

        The prefix ends with ``<|vision_start|>`` and the suffix starts with
        ``<|vision_end|>``, as the template writes them around the image.
        """
        image_token = getattr(self.processor, "image_token", None) or IMAGE_TOKEN
        return self._split_prompt(self.chat_text(question), image_token)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids (n,) into (n, token_width): zero deepstack columns for text."""
        return widen(self.embed_tokens(ids.to(self.device)), self.token_width)

    def language_model_inputs(self, inputs_embeds: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of :attr:`language_model` for assembled (wide) embeddings."""
        return language_model_inputs(inputs_embeds, self.hidden_size)

    def causal_lm_outputs(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ):
        """The causal LM's forward (loss, logits, hidden states) on assembled embeddings.

        Without deepstack this is the model's own forward; with it, the language model is
        called with the deepstack features and the model's own head and loss follow.
        """
        if not self.deepstack_layers:
            return self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
                use_cache=False,
                output_hidden_states=output_hidden_states,
            )
        outputs = self.language_model(
            **self.language_model_inputs(inputs_embeds),
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.model.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    # ------------------------------------------------------------------ positions
    def position_ids(self, prompt: PromptParts, segments: Sequence[VisionSegment]) -> torch.Tensor:
        """M-RoPE ``(3, 1, n)`` positions of ``[prefix, segments..., suffix]``.

        See the module docstring: each segment is placed like one Qwen-VL image over
        its whole grid, its tokens at their own cells, so pruned tokens leave holes.
        """
        return sequence_position_ids(
            len(prompt.prefix_ids), segments, len(prompt.suffix_ids), self.device
        )

    def segment_of_tiles(self, grid: tuple[int, int], positions: np.ndarray) -> VisionSegment:
        """The segment of tokens at ``positions`` of a level whose grid is ``grid`` tiles."""
        g = self.tokens_per_side
        return VisionSegment(np.asarray(positions), (grid[0] * g, grid[1] * g))

    def thumbnail_segment(self) -> VisionSegment:
        """The thumbnail's own full grid."""
        g = self.tokens_per_side
        cells = np.stack(np.divmod(np.arange(g * g), g), axis=1)
        return VisionSegment(cells, (g, g))

    # ------------------------------------------------------------------ LLM
    @torch.no_grad()
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        position_ids: torch.Tensor | None = None,
    ) -> str:
        """Greedy generation from assembled embeddings with explicit M-RoPE positions.

        Without ``position_ids`` every token is placed as text (0, 1, 2, ...); the
        model's own cached ``rope_deltas`` are never used, so no earlier call leaks in.
        With deepstack features (Qwen3-VL) :meth:`_generate_deepstack` decodes instead.
        """
        n = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = text_position_ids(0, n, inputs_embeds.device)
        if self.deepstack_layers:
            return self._generate_deepstack(inputs_embeds, max_new_tokens, position_ids)
        attention_mask = torch.ones((1, n), dtype=torch.long, device=inputs_embeds.device)
        output = self.model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()

    def _generate_deepstack(
        self, inputs_embeds: torch.Tensor, max_new_tokens: int, position_ids: torch.Tensor
    ) -> str:
        """Greedy decoding through the language model with a ``DynamicCache``.

        ``generate`` cannot carry deepstack features (the model's forward sets them
        itself from pixels), so the prefill calls the language model with them and each
        new token follows as text at the prompt's largest position + 1, + 2, ... (what
        ``generate`` does with the ``rope_deltas`` of an image prompt).
        """
        inputs_embeds = inputs_embeds.to(self.dtype)
        n = inputs_embeds.shape[1]
        device = inputs_embeds.device
        cache = DynamicCache(config=self.config.text_config)
        outputs = self.language_model(
            **self.language_model_inputs(inputs_embeds),
            attention_mask=torch.ones((1, n), dtype=torch.long, device=device),
            position_ids=position_ids,
            **{CACHE_KEYWORD: cache},
            use_cache=True,
        )
        generated: list[int] = []
        for step in range(max_new_tokens):
            logits = self.lm_head(outputs.last_hidden_state[:, -1:])
            token = logits.argmax(dim=-1)
            generated.append(int(token))
            if int(token) in self.eos_token_ids or step + 1 == max_new_tokens:
                break
            outputs = self.language_model(
                inputs_embeds=self.embed_tokens(token),
                attention_mask=torch.ones((1, n + step + 1), dtype=torch.long, device=device),
                position_ids=_text_positions_after(position_ids, step),
                **{CACHE_KEYWORD: cache},
                use_cache=True,
            )
        return self.tokenizer.decode(generated, skip_special_tokens=True).strip()


def text_position_ids(start: int, count: int, device: torch.device | str) -> torch.Tensor:
    """``(3, 1, count)`` positions of text tokens from ``start``: t = h = w."""
    return (torch.arange(count, device=device) + start).view(1, 1, -1).expand(3, 1, -1)


def sequence_position_ids(
    prefix_length: int,
    segments: Sequence[VisionSegment],
    suffix_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """M-RoPE ``(3, 1, n)`` positions of text, vision segments, then text."""
    pieces = [text_position_ids(0, prefix_length, device)]
    cursor = prefix_length
    for segment in segments:
        cells = torch.as_tensor(np.asarray(segment.positions), dtype=torch.long, device=device)
        cells = cells.reshape(-1, 2)
        t = torch.full((cells.shape[0],), cursor, dtype=torch.long, device=device)
        pieces.append(torch.stack([t, cursor + cells[:, 0], cursor + cells[:, 1]])[:, None])
        cursor += max(segment.grid)
    pieces.append(text_position_ids(cursor, suffix_length, device))
    return torch.cat(pieces, dim=-1)


def _text_positions_after(position_ids: torch.Tensor, step: int) -> torch.Tensor:
    """``(3, 1, 1)`` position of the ``step``-th generated token: after the prompt's largest."""
    start = int(position_ids.max()) + 1
    return torch.full((3, 1, 1), start + step, dtype=torch.long, device=position_ids.device)
