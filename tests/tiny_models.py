"""Shared helpers for model tests: tiny LLaVA models and an in-memory tile source."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from lrsvqa.imagery.pyramid import PyramidGeometry, build_pyramid
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.tiny import build_tiny_llava

WORDS = ("what", "color", "is", "the", "ship", "red", "blue", "how", "many", "are", "there")


def tiny_adapter(kind: str = "llava_next", family: str = "llama", **kwargs) -> LlavaAdapter:
    """A freshly built tiny model wrapped in the adapter."""
    model, processor = build_tiny_llava(WORDS, kind=kind, family=family, **kwargs)
    return LlavaAdapter(model, processor)


class ArraySource:
    """Tiles cut from an in-memory image with the DIP geometry (Pillow resampling)."""

    def __init__(self, image: np.ndarray, geometry: PyramidGeometry | None = None) -> None:
        self.image = image
        self.geometry = geometry or build_pyramid(*image.shape[:2])
        self.requests: list[tuple[int, int, int]] = []

    def _read(self, box, size: tuple[int, int]) -> np.ndarray:
        resized = Image.fromarray(self.image).resize(
            (size[1], size[0]), Image.BILINEAR, box=tuple(box)
        )
        return np.asarray(resized)

    def tile(self, level_index: int, row: int, col: int) -> np.ndarray:
        self.requests.append((level_index, row, col))
        level = self.geometry.levels[level_index]
        size = level.tile_size
        out = np.zeros((size, size, 3), np.uint8)
        rh, rw = level.resized_size
        y0, x0 = row * size, col * size
        h, w = min(size, rh - y0), min(size, rw - x0)
        if h > 0 and w > 0:
            out[:h, :w] = self._read(level.canvas_to_image((x0, y0, x0 + w, y0 + h)), (h, w))
        return out

    def thumbnail(self) -> np.ndarray:
        thumb = self.geometry.thumbnail
        out = np.zeros((thumb.tile_size, thumb.tile_size, 3), np.uint8)
        rh, rw = thumb.resized_size
        out[:rh, :rw] = self._read((0, 0, self.image.shape[1], self.image.shape[0]), (rh, rw))
        return out


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def chat_text(processor, question: str) -> str:
    """The processor's chat prompt for one image and one question."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def vanilla_generate(
    model, processor, image: Image.Image, question: str, pixel_values, max_new_tokens: int
) -> tuple[str, int]:
    """Hugging Face's own LLaVA-NeXT path on given pixels: (answer, prompt length)."""
    inputs = processor(images=image, text=chat_text(processor, question), return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            pixel_values=pixel_values,
            image_sizes=inputs.image_sizes,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    length = inputs.input_ids.shape[1]
    answer = processor.tokenizer.decode(output[0, length:], skip_special_tokens=True).strip()
    return answer, length


def builtin_strategies() -> list[str]:
    """Every strategy the package registers, read in a fresh interpreter.

    Test modules register test-only strategies in this process; the package's own list
    is what a user's ``lrsvqa`` sees.
    """
    code = "from lrsvqa.strategies.registry import available_strategies as a; print(*a())"
    listing = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return listing.stdout.decode().split()
