"""Attention rows of a few query positions, without the n x n attention matrix.

Stock Hugging Face decoder layers run with sdpa or flash attention, which never
expose attention weights. The Region Focus Module and the distillation trainer only
need the attention *of a few queries* (the last text token of each dialogue turn) over
all keys, so we recompute those rows from the layer's own projections and rotary
embedding: ``softmax(q_j K^T / sqrt(d))`` costs O(j n d) memory instead of O(n^2).

Works for Llama, Qwen2, Mistral-style attention modules (``q_proj``, ``k_proj``,
optional ``q_norm``/``k_norm``) in transformers' layout.
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, seq, dim) with ``cos``/``sin`` (batch, seq, dim)."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def _project_heads(
    projection: nn.Linear, norm: nn.Module | None, hidden: torch.Tensor, head_dim: int
) -> torch.Tensor:
    """Project hidden states (batch, seq, d) to (batch, heads, seq, head_dim)."""
    batch, seq, _ = hidden.shape
    states = projection(hidden).view(batch, seq, -1, head_dim)
    if norm is not None:
        states = norm(states)
    return states.transpose(1, 2)


def query_attention_rows(
    attention: nn.Module,
    normed_hidden: torch.Tensor,
    query_positions: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention weights of selected query positions over all keys, per head.

    Args:
        attention: The layer's self-attention module (``layer.self_attn``).
        normed_hidden: Layer input after ``input_layernorm``, shape (batch, n, d).
        query_positions: Long tensor (batch, j) of query indices into the sequence.
        position_embeddings: ``(cos, sin)`` from the model's rotary embedding, each
            (batch, n, head_dim).
        key_padding_mask: Optional bool (batch, n), True where a key is real.

    Returns:
        Float32 tensor (batch, heads, j, n); each row sums to one over the keys the
        query may see (keys after the query get zero).
    """
    head_dim = attention.head_dim
    cos, sin = position_embeddings
    batch, n, _ = normed_hidden.shape
    gather_index = query_positions[..., None].expand(-1, -1, normed_hidden.shape[-1])
    query_hidden = normed_hidden.gather(1, gather_index)
    q = _project_heads(attention.q_proj, getattr(attention, "q_norm", None), query_hidden, head_dim)
    k = _project_heads(
        attention.k_proj, getattr(attention, "k_norm", None), normed_hidden, head_dim
    )
    rope_index = query_positions[..., None].expand(-1, -1, cos.shape[-1])
    q = _apply_rotary(q, cos.gather(1, rope_index), sin.gather(1, rope_index))
    k = _apply_rotary(k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (head_dim**-0.5)
    key_index = torch.arange(n, device=scores.device)
    allowed = key_index[None, None, :] <= query_positions[:, :, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, :].bool()
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


def layer_attention_rows(
    layer: nn.Module,
    hidden: torch.Tensor,
    query_positions: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`query_attention_rows` for a decoder layer given its *input* hidden states."""
    return query_attention_rows(
        layer.self_attn,
        layer.input_layernorm(hidden),
        query_positions,
        position_embeddings,
        key_padding_mask,
    )
