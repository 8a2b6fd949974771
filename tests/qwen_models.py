"""Shared helpers for Qwen-VL tests: tiny models and the reference generation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lrsvqa.models.qwen_adapter import QwenVLAdapter
from lrsvqa.models.tiny_qwen import build_tiny_qwen_vl
from tests.tiny_models import WORDS

QWEN_KINDS = ("qwen2_vl", "qwen2_5_vl")


def tiny_qwen_adapter(kind: str = "qwen2_vl", **kwargs) -> QwenVLAdapter:
    """A freshly built tiny Qwen-VL model wrapped in the adapter."""
    model, processor = build_tiny_qwen_vl(WORDS, kind=kind, **kwargs)
    return QwenVLAdapter(model, processor)


def hf_generate(adapter: QwenVLAdapter, image: np.ndarray, question: str, max_new_tokens: int):
    """Hugging Face's own path: processor inputs, ``generate`` with pixels: (answer, length)."""
    processor = adapter.processor
    inputs = processor(images=Image.fromarray(image), text=adapter.chat_text(question))
    with torch.no_grad():
        output = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    length = inputs["input_ids"].shape[1]
    answer = processor.tokenizer.decode(output[0, length:], skip_special_tokens=True).strip()
    return answer, length, inputs
