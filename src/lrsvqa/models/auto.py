"""Pick the adapter for a checkpoint by its model type: LLaVA family or Qwen-VL family."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.checkpoint import resolve_checkpoint
from lrsvqa.models.placement import DEFAULT_DEVICE, DEFAULT_DTYPE
from lrsvqa.models.qwen_adapter import QwenVLAdapter, is_qwen_vl

Adapter = LlavaAdapter | QwenVLAdapter


def checkpoint_model_type(path: str | Path) -> str | None:
    """``model_type`` of a checkpoint's ``config.json``, or None where it cannot be read.

    Unreadable configs are left to the adapter's own loading, which names the fault.
    """
    location = Path(resolve_checkpoint(path))
    if not location.is_dir():
        try:
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(str(location)).model_type
        except (OSError, ValueError):
            return None
    try:
        return json.loads((location / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def load_adapter(
    path: str | Path,
    *,
    dtype: str | torch.dtype = DEFAULT_DTYPE,
    device: str | torch.device = DEFAULT_DEVICE,
    **kwargs: Any,
) -> Adapter:
    """Load a checkpoint with the adapter of its family (Qwen-VL, else LLaVA)."""
    cls = QwenVLAdapter if is_qwen_vl(checkpoint_model_type(path) or "") else LlavaAdapter
    return cls.from_pretrained(path, dtype=dtype, device=device, **kwargs)


def uses_mrope(adapter: Any) -> bool:
    """Whether the adapter's LLM places vision tokens with 2-D (M-RoPE) positions."""
    return bool(getattr(adapter, "uses_mrope", False))
