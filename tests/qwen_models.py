"""Shared helpers for Qwen-VL tests: tiny models and the reference generation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lrsvqa.models.qwen_adapter import QwenVLAdapter
from lrsvqa.models.tiny_qwen import build_tiny_qwen_vl
from tests.tiny_models import WORDS

QWEN_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def tiny_qwen_model(kind: str = "qwen2_vl", **kwargs):
    """A tiny Qwen-VL model with large LLM weights, and its processing.

    Large weights make greedy answers depend on the input (random tiny models otherwise
    repeat one token whatever they see), so equal answers mean equal inputs. Qwen3-VL's
    deepstack mergers get large weights too, so that answers depend on those features.
    """
    model, processor = build_tiny_qwen_vl(WORDS, kind=kind, **kwargs)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.model.language_model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
        model.lm_head.weight.normal_(0, 0.3)
        for merger in getattr(model.model.visual, "deepstack_merger_list", ()):
            for module in merger.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0, 0.3)
    return model, processor


def tiny_qwen_adapter(kind: str = "qwen2_vl", **kwargs) -> QwenVLAdapter:
    """A freshly built tiny Qwen-VL model wrapped in the adapter."""
    return QwenVLAdapter(*tiny_qwen_model(kind, **kwargs))


def hf_generate(adapter: QwenVLAdapter, image: np.ndarray, question: str, max_new_tokens: int):
    """Hugging Face's own path: processor inputs, ``generate`` with pixels: (answer, length)."""
    processor = adapter.processor
    inputs = processor(images=Image.fromarray(image), text=adapter.chat_text(question))
    with torch.no_grad():
        output = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    length = inputs["input_ids"].shape[1]
    answer = processor.tokenizer.decode(output[0, length:], skip_special_tokens=True).strip()
    return answer, length, inputs
