"""A small synthetic conversation set for exercising distillation without real data.

Images are noisy backgrounds with a few coloured rectangles ("objects"); questions are
template-like (colour, count, presence, position) and dialogues have one to three
turns. The vocabulary is closed (:data:`TOY_WORDS`) so a tiny word-level tokenizer built
from it covers every word.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

OBJECTS = ("ship", "plane", "tank", "car", "bridge")
COLORS = {
    "red": (200, 40, 40),
    "blue": (40, 60, 210),
    "green": (40, 170, 60),
    "white": (235, 235, 235),
    "yellow": (220, 200, 40),
}
NUMBERS = ("zero", "one", "two", "three", "four")
PLACES = ("top", "bottom", "left", "right", "center")
TEMPLATE_WORDS = ("what", "color", "is", "the", "how", "many", "are", "there", "a", "where")
TOY_WORDS = (*TEMPLATE_WORDS, *OBJECTS, *COLORS, *NUMBERS, *PLACES)


def _place(y: float, x: float) -> str:
    """Coarse location word of a relative centre."""
    if abs(y - 0.5) < 0.2 and abs(x - 0.5) < 0.2:
        return "center"
    if abs(y - 0.5) >= abs(x - 0.5):
        return "top" if y < 0.5 else "bottom"
    return "left" if x < 0.5 else "right"


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """Noisy background plus 2-4 coloured rectangles; returns the image and objects."""
    base = rng.integers(60, 140, 3)
    noise = rng.normal(0, 18, (height, width, 3))
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    objects = []
    for _ in range(rng.integers(2, 5)):
        kind, color = rng.choice(OBJECTS), rng.choice(list(COLORS))
        h, w = rng.integers(height // 12, height // 5), rng.integers(width // 12, width // 5)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        image[y : y + h, x : x + w] = COLORS[color]
        objects.append(
            {
                "kind": str(kind),
                "color": str(color),
                "place": _place((y + h / 2) / height, (x + w / 2) / width),
            }
        )
    return image, objects


def _question(rng: np.random.Generator, objects: list[dict]) -> tuple[str, str]:
    """One template question about the scene and its answer."""
    target = objects[rng.integers(len(objects))]
    kind = target["kind"]
    template = rng.integers(4)
    if template == 0:
        return f"what color is the {kind} ?", target["color"]
    if template == 1:
        count = sum(o["kind"] == kind for o in objects)
        return f"how many {kind} are there ?", NUMBERS[min(count, len(NUMBERS) - 1)]
    if template == 2:
        color = rng.choice(list(COLORS))
        present = any(o["kind"] == kind and o["color"] == color for o in objects)
        return f"is there a {color} {kind} ?", "yes" if present else "no"
    return f"where is the {target['color']} {kind} ?", target["place"]


def write_toy_dataset(
    out_dir: str | Path,
    count: int,
    *,
    seed: int = 0,
    size_range: tuple[int, int] = (672, 1000),
    max_turns: int = 3,
) -> Path:
    """Write ``count`` PNG images and a LLaVA-format JSON of dialogues about them.

    Args:
        out_dir: Directory for ``images/`` and ``conversations.json``.
        count: Number of conversations (one image each).
        seed: Random seed (images, questions and dialogue lengths).
        size_range: Inclusive range of image height and width in pixels.
        max_turns: Longest dialogue.

    Returns:
        Path of the JSON file; image paths in it are relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        image, objects = _scene(rng, height, width)
        name = f"images/toy_{seed}_{index:04d}.png"
        Image.fromarray(image).save(out_dir / name)
        messages = []
        for turn in range(int(rng.integers(1, max_turns + 1))):
            question, answer = _question(rng, objects)
            prefix = "<image>\n" if turn == 0 else ""
            messages.append({"from": "human", "value": prefix + question})
            messages.append({"from": "gpt", "value": answer})
        items.append({"id": f"toy-{seed}-{index}", "image": name, "conversations": messages})
    path = out_dir / "conversations.json"
    path.write_text(json.dumps(items, indent=1) + "\n")
    return path
