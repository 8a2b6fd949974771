"""Tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints built offline from small configs.

As :mod:`lrsvqa.models.tiny` does for LLaVA: stock ``transformers`` classes with random
weights, a word-level tokenizer carrying Qwen's special tokens and a Qwen-style chat
template, saved with ``save_pretrained`` and loaded back like a real checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from lrsvqa.models.qwen_adapter import QwenVLProcessing
from lrsvqa.models.tiny import word_level_backend

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<unk>",
)
BASE_WORDS = ("system", "user", "assistant", ":", "?", ".", ",", "yes", "no")
# Qwen2-VL's template for one user turn of images and text, without the system turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
KINDS = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration),
}


def build_qwen_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer that keeps Qwen's special tokens whole."""
    backend = word_level_backend((*SPECIAL_TOKENS, *BASE_WORDS, *sorted(set(words))))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen_vl(
    words: Iterable[str] = (),
    *,
    kind: str = "qwen2_vl",
    num_layers: int = 4,
    hidden_size: int = 64,
    vision_width: int = 32,
    patch_size: int = 14,
    seed: int = 0,
) -> tuple[PreTrainedModel, QwenVLProcessing]:
    """Build a randomly initialised tiny Qwen-VL model and its processing.

    Args:
        words: Extra vocabulary for the word-level tokenizer.
        kind: ``"qwen2_vl"``, ``"qwen2_5_vl"`` or ``"qwen3_vl"`` (2 deepstack layers,
            interleaved M-RoPE, q/k norms).
        num_layers: Decoder layers of the LLM.
        hidden_size: LLM hidden size (4 heads, 2 key-value heads).
        vision_width: Width of the 2-block vision transformer.
        patch_size: Vision patch side; tiles are multiples of ``2 * patch_size``.
        seed: Torch seed for the random initialisation.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown Qwen-VL kind {kind!r}; use one of {', '.join(KINDS)}")
    tokenizer = build_qwen_tokenizer(words)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden_size // 4
    third = head_dim // 2 // 3
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 2 * third, third, third],
        },
        "pad_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "bos_token_id": None,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": vision_width if kind == "qwen2_5_vl" else hidden_size,
        "num_heads": 2,
        "patch_size": patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if kind == "qwen3_vl":
        # Interleaved M-RoPE: h and w take every third frequency of their sections.
        text_config["head_dim"] = head_dim
        text_config["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 2 * (head_dim // 8), head_dim // 8, head_dim // 8],
            "mrope_interleaved": True,
        }
        vision_config |= {
            "hidden_size": vision_width,
            "intermediate_size": 2 * vision_width,
            "out_hidden_size": hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0, 1],
        }
    elif kind == "qwen2_vl":
        vision_config |= {"embed_dim": vision_width, "mlp_ratio": 2}
    else:
        vision_config |= {
            "intermediate_size": 2 * vision_width,
            "out_hidden_size": hidden_size,
            "window_size": 8 * patch_size,
            "fullatt_block_indexes": [1],
        }
    config_class, model_class = KINDS[kind]
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    unit = 2 * patch_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * unit * unit, "longest_edge": 4096 * unit * unit},
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    return model, QwenVLProcessing(tokenizer, image_processor)


def save_tiny_qwen_vl(model: PreTrainedModel, processor: QwenVLProcessing, out_dir: Path) -> Path:
    """Save model and processing so ``QwenVLAdapter.from_pretrained(out_dir)`` loads them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
