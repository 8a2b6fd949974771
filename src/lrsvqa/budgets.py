"""Token budgets of coarse-to-fine and the baselines: pure arithmetic, one source of truth.

The strategies' option dataclasses (:mod:`lrsvqa.strategies.options`) take their
defaults from here, the strategies enforce them and their counters count with them, so
the FLOPs table and what the model actually sees cannot drift apart. Torch-free, so the
command line can show them without loading a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Coarse-to-fine (the LRS-VQA paper, Sec. 5.1): keep the top 25 % of the tokens at each
# level (alpha) and prune rather than descend when more than N_max = 80 tiles are needed.
DEFAULT_ALPHA = 0.25
DEFAULT_MAX_TILES = 80

# Tokens generated per answer: LRS-VQA answers are a word or a short phrase.
DEFAULT_MAX_NEW_TOKENS = 32

# VisionZip (Yang et al., 2024, "VisionZip: Longer is Better but Not Necessary in
# Vision Language Models"): its 64-token setting keeps 54 dominant + 10 contextual.
VISIONZIP_RETAINED = 64
VISIONZIP_DOMINANT_SHARE = 54 / 64

# PruMerge+ (Shang et al., 2024, "LLaVA-PruMerge"), at the LRS-VQA paper's 25 %.
PRUMERGE_RATIO = 0.25
PRUMERGE_NEIGHBOURS = 32

# FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2").
FASTV_LAYER = 2
FASTV_RATIO = 0.5

# Qwen-VL (Wang et al., 2024, "Qwen2-VL"): DIP tiles of 448 px, 16 x 16 merged tokens
# of 28 px. The ``native`` baseline reads the whole image at the model's own dynamic
# resolution under a pixel budget (the LRS-VQA paper's Fig. 5 setting), by default the
# 1280 x 28 x 28 px that Qwen2-VL's model card recommends.
QWEN_TILE_SIZE = 448
NATIVE_MAX_PIXELS = 1280 * 28 * 28
NATIVE_MIN_PIXELS = 4 * 28 * 28

# PyramidDrop (Xing et al., 2024, "PyramidDrop"): four equal stages, half dropped at
# each boundary; layers 7, 14, 21 for the 28-layer Qwen2-7B (LRS-VQA paper, Tab. 3).
PDROP_STAGES = 4
PDROP_RATIO = 0.5


def visionzip_split(retained: int, tile_tokens: int) -> tuple[int, int]:
    """``(dominant, contextual)`` tokens VisionZip keeps of one tile's ``tile_tokens``.

    The retained count is split in VisionZip's 54:10 proportion (rounded); a tile with
    no more tokens than the budget is kept whole.
    """
    if retained < 1:
        raise ValueError(f"VisionZip must retain at least one token, got {retained}")
    if retained >= tile_tokens:
        return tile_tokens, 0
    dominant = min(retained, max(1, round(retained * VISIONZIP_DOMINANT_SHARE)))
    return dominant, retained - dominant


def prumerge_budget(tile_tokens: int, ratio: float = PRUMERGE_RATIO) -> int:
    """Tokens PruMerge+ keeps of one tile: ``ceil(ratio * n)``, at least one."""
    if not 0 < ratio <= 1:
        raise ValueError(f"PruMerge+ ratio must be in (0, 1], got {ratio}")
    return max(1, math.ceil(ratio * tile_tokens))


def kept_after_drop(vision_tokens: int, ratio: float) -> int:
    """Vision tokens left when a drop removes ``floor(ratio * n)`` of ``n``."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"drop ratio must be in [0, 1], got {ratio}")
    return vision_tokens - math.floor(ratio * vision_tokens)


def pdrop_layers(num_layers: int, stages: int = PDROP_STAGES) -> tuple[int, ...]:
    """Stage boundaries of PyramidDrop scaled to the LLM depth: ``floor(k * M / stages)``.

    Gives 7, 14, 21 for 28 layers (Qwen2-7B) and 8, 16, 24 for 32 (Vicuna-7B, PDrop's
    own setting); boundaries that collapse on shallow models are merged.
    """
    if num_layers < 2:
        raise ValueError(f"PyramidDrop needs at least two LLM layers, got {num_layers}")
    return tuple(sorted({num_layers * k // stages for k in range(1, stages)} - {0}))


def check_drops(drops: Mapping[int, float], num_layers: int) -> None:
    """Validate a drop schedule ``{layer: ratio}`` for an LLM of ``num_layers`` layers.

    Raises:
        ValueError: A layer outside ``1..num_layers - 1`` (layer 0 has no earlier
            attention to rank by) or a ratio outside ``[0, 1]``.
    """
    for layer, ratio in drops.items():
        if not 1 <= layer < num_layers:
            raise ValueError(f"drop layer {layer} must be in 1..{num_layers - 1}")
        if not 0 <= ratio <= 1:
            raise ValueError(f"drop ratio at layer {layer} must be in [0, 1], got {ratio}")


def vision_tokens_per_layer(
    vision_tokens: int, num_layers: int, drops: Mapping[int, float]
) -> list[int]:
    """Vision tokens entering each LLM layer when ``drops`` cut them before those layers."""
    check_drops(drops, num_layers)
    counts, current = [], vision_tokens
    for layer in range(num_layers):
        if layer in drops:
            current = kept_after_drop(current, drops[layer])
        counts.append(current)
    return counts


def native_size(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = NATIVE_MIN_PIXELS,
    max_pixels: int = NATIVE_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen-VL's resize rule (``smart_resize``): sides a multiple of ``factor``, area in budget.

    Raises:
        ValueError: An aspect ratio beyond 200, which Qwen-VL refuses.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"aspect ratio must be below 200, got {max(height, width) / min(height, width)}"
        )
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
