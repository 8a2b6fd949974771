"""The strategy interface every inference method implements (coarse-to-fine and baselines).

The evaluation runner drives any strategy through these two calls, so one
``lrsvqa eval --strategy NAME`` and one comparison table cover all methods.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lrsvqa.types import Box


@dataclass
class StrategyResult:
    """What a strategy returns for one question.

    Attributes:
        answer: The generated text.
        vision_tokens_encoded: Vision tokens produced by the vision encoder + projector
            (all tiles encoded at every level, thumbnail included).
        tokens_to_llm: Length of the multimodal sequence fed to the LLM (system,
            vision and text tokens).
        vision_tokens_to_llm: Vision tokens in that sequence.
        selected_boxes: Original-image pixel boxes ``(x0, y0, x1, y1)`` of the finest
            tiles the strategy looked at (empty when it does not select regions).
        tflops: Theoretical LLM TFLOPs for the vision tokens, when known.
        trace: JSON-serialisable per-level details.
    """

    answer: str
    vision_tokens_encoded: int = 0
    tokens_to_llm: int = 0
    vision_tokens_to_llm: int = 0
    selected_boxes: list[Box] = field(default_factory=list)
    tflops: float | None = None
    trace: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


@runtime_checkable
class Strategy(Protocol):
    """An inference method: prepare an image (I/O only), then answer a question on it."""

    name: str

    def prepare(self, image_path: Path) -> Any:
        """Open the image and do the I/O-only work (thread-safe; runs on a prefetch thread)."""
        ...

    def answer(self, prepared: Any, question: str) -> StrategyResult:
        """Answer ``question`` about a prepared image."""
        ...
