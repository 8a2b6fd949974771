"""Deepstack visual features (Qwen3-VL) carried as extra columns of the token embeddings.

Qwen3-VL's vision tower returns, beside each merged vision token, ``D`` more features
taken from intermediate vision blocks; the language model adds feature ``l`` to the
token's hidden state right after decoder layer ``l`` (``l < D``,
``Qwen3VLTextModel._deepstack_process``). Generating from ``inputs_embeds`` alone skips
them.

Here a vision token of a Qwen3-VL model is a *wide* row ``[token, deepstack_0, ...,
deepstack_{D-1}]`` of ``(1 + D) * hidden`` values, and text rows carry zeros in the
extra columns. Everything that selects, orders or prunes tokens then moves a token's
deepstack features with it, and every code path that runs decoder layers splits the
row and adds column block ``l`` after layer ``l`` on *all* rows: adding zeros to text
rows leaves them exactly as the model's masked addition does. Models without deepstack
(LLaVA, Qwen2-VL, Qwen2.5-VL) have rows of exactly ``hidden`` values and nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def split_deepstack(embeds: torch.Tensor, hidden_size: int) -> tuple[torch.Tensor, list]:
    """``(tokens, [deepstack_0, ...])`` of wide rows; ``(embeds, [])`` of plain ones."""
    if embeds.shape[-1] == hidden_size:
        return embeds, []
    if embeds.shape[-1] % hidden_size:
        raise ValueError(
            f"embedding width {embeds.shape[-1]} is not a multiple of hidden size {hidden_size}"
        )
    parts = embeds.split(hidden_size, dim=-1)
    return parts[0], list(parts[1:])


def widen(embeds: torch.Tensor, width: int) -> torch.Tensor:
    """Pad rows (text embeddings) with zero deepstack columns up to ``width``."""
    extra = width - embeds.shape[-1]
    if extra <= 0:
        return embeds
    return torch.cat([embeds, embeds.new_zeros(*embeds.shape[:-1], extra)], dim=-1)


def add_deepstack(hidden: torch.Tensor, deepstack: Sequence[torch.Tensor], layer: int):
    """Hidden states after LLM decoder layer ``layer``: plus its deepstack features, if any."""
    if 0 <= layer < len(deepstack):
        return hidden + deepstack[layer].to(hidden.dtype)
    return hidden


def add_deepstack_between(
    hidden: torch.Tensor, deepstack: Sequence[torch.Tensor], first: int, stop: int
) -> torch.Tensor:
    """Add the features of LLM layers ``first .. stop - 1`` (layers skipped by a subset)."""
    for layer in range(max(first, 0), min(stop, len(deepstack))):
        hidden = add_deepstack(hidden, deepstack, layer)
    return hidden


def language_model_inputs(embeds: torch.Tensor, hidden_size: int) -> dict[str, Any]:
    """Keyword arguments of the bare language model for (possibly wide) embeddings.

    Wide rows become ``inputs_embeds`` plus ``visual_pos_masks`` (every row: text rows
    add zeros) and ``deepstack_visual_embeds``, as ``Qwen3VLModel.forward`` passes them.
    """
    tokens, deepstack = split_deepstack(embeds, hidden_size)
    if not deepstack:
        return {"inputs_embeds": embeds}
    mask = torch.ones(tokens.shape[:-1], dtype=torch.bool, device=tokens.device)
    return {
        "inputs_embeds": tokens,
        "visual_pos_masks": mask,
        "deepstack_visual_embeds": [d.reshape(-1, hidden_size) for d in deepstack],
    }


def layer_inputs_from_hidden_states(
    hidden_states: Sequence[torch.Tensor], embeds: torch.Tensor | None, hidden_size: int
) -> list[torch.Tensor]:
    """The input of every decoder layer from ``output_hidden_states``.

    Hugging Face records each layer's *output*, before the deepstack features are added;
    layer ``m``'s input is that plus the features of layer ``m - 1``.
    """
    deepstack = [] if embeds is None else split_deepstack(embeds, hidden_size)[1]
    states = list(hidden_states)
    for m in range(1, min(len(states), len(deepstack) + 1)):
        states[m] = add_deepstack(states[m], deepstack, m - 1)
    return states
