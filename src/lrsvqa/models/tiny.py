"""Tiny LLaVA / LLaVA-NeXT checkpoints built offline from small configs.

No weights can be downloaded here, so tests and the embedded demo use models built
from these configs with stock ``transformers`` classes, saved with
``save_pretrained`` and loaded back through exactly the same ``from_pretrained`` path
as a real checkpoint. The tokenizer is word level and built with ``tokenizers``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
IMAGE_TOKEN = "<image>"
# A minimal LLaVA-style chat template: one image placeholder, then the question.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}user : "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> "
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}assistant : {{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }} </s> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)
BASE_WORDS = ("user", "assistant", ":", "?", ".", ",", "yes", "no")


def word_level_backend(tokens: Iterable[str]) -> Tokenizer:
    """A lower-casing, whitespace-and-punctuation word-level backend over ``tokens``.

    Ids follow the tokens' first appearance; ``<unk>`` must be among them.
    """
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    return backend


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-and-punctuation word-level tokenizer.

    Args:
        words: Vocabulary words besides the special tokens and chat-template words.
    """
    backend = word_level_backend((*SPECIAL_TOKENS, *BASE_WORDS, *sorted(set(words))))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_vision_config(
    image_size: int = 336, patch_size: int = 42, hidden_size: int = 64
) -> CLIPVisionConfig:
    """A 2-layer CLIP vision tower: 336 px tiles into an 8 x 8 token grid by default."""
    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=hidden_size,
    )


def tiny_text_config(
    vocab_size: int, family: str = "llama", num_layers: int = 6, hidden_size: int = 64
) -> dict:
    """Config dict of a small Llama or Qwen2 decoder with grouped-query attention."""
    if family not in ("llama", "qwen2"):
        raise ValueError(f"unknown text model family {family!r}; use 'llama' or 'qwen2'")
    return {
        "model_type": family,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 3,
    }


def build_tiny_llava(
    words: Iterable[str] = (),
    *,
    kind: str = "llava_next",
    family: str = "llama",
    num_layers: int = 6,
    hidden_size: int = 64,
    patch_size: int = 42,
    vision_hidden_size: int = 64,
    seed: int = 0,
) -> tuple[PreTrainedModel, LlavaNextProcessor | LlavaProcessor]:
    """Build a randomly initialised tiny LLaVA model and its processor.

    Args:
        words: Extra vocabulary for the word-level tokenizer.
        kind: ``"llava_next"`` (anyres, image newline) or ``"llava"`` (LLaVA-1.5).
        family: Text decoder family, ``"llama"`` or ``"qwen2"``.
        num_layers: Decoder layers of the LLM.
        hidden_size: LLM hidden size.
        patch_size: Vision patch size; 336 / patch_size tokens per tile side.
        vision_hidden_size: Width of the CLIP vision tower.
        seed: Torch seed for the random initialisation.

    Returns:
        ``(model, processor)``, both ready for ``save_pretrained``.
    """
    tokenizer = build_word_tokenizer(words)
    text_config = tiny_text_config(len(tokenizer), family, num_layers, hidden_size)
    vision_config = tiny_vision_config(patch_size=patch_size, hidden_size=vision_hidden_size)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    common = {
        "vision_config": vision_config.to_dict(),
        "text_config": text_config,
        "image_token_id": image_token_id,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
    }
    torch.manual_seed(seed)
    image_kwargs = {
        "size": {"shortest_edge": vision_config.image_size},
        "crop_size": {"height": vision_config.image_size, "width": vision_config.image_size},
    }
    tokens_per_side = vision_config.image_size // patch_size
    if kind == "llava_next":
        b = vision_config.image_size
        pinpoints = [[b * r, b * c] for r in range(1, 4) for c in range(1, 4)]
        config = LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        model = LlavaNextForConditionalGeneration(config)
        processor = LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **image_kwargs),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # the CLIP [CLS] token, dropped by "default"
            chat_template=CHAT_TEMPLATE,
        )
    elif kind == "llava":
        config = LlavaConfig(image_seq_length=tokens_per_side**2, **common)
        model = LlavaForConditionalGeneration(config)
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(**image_kwargs),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # the CLIP [CLS] token, dropped by "default"
            chat_template=CHAT_TEMPLATE,
        )
    else:
        raise ValueError(f"unknown model kind {kind!r}; use 'llava_next' or 'llava'")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model, processor


def save_tiny_llava(model: PreTrainedModel, processor, out_dir: Path) -> Path:
    """Save model and processor so ``from_pretrained(out_dir)`` loads them back."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
