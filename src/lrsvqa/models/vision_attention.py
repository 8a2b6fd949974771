"""Vision-tower features with the [CLS] token's attention, on unmodified ``transformers``.

VisionZip and PruMerge+ rank a tile's patch tokens by how much the CLIP [CLS] token
attends to them in the layer that produces LLaVA's features. Stock CLIP runs with
sdpa, which never returns attention weights, so we recompute the one row we need
from that layer's own ``layer_norm1``, ``q_proj`` and ``k_proj``:
``softmax(q_cls K^T * scale)`` per head, O(n) memory and independent of the
attention implementation (a test checks it against eager ``output_attentions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lrsvqa.models.adapter import LlavaAdapter


@dataclass
class TileFeatures:
    """Per-tile vision features at LLaVA's feature layer, before the projector.

    Attributes:
        features: (tiles, n, c) patch-token features ([CLS] removed).
        cls_attention: (tiles, n) float32 head-averaged attention of [CLS] over the
            patch tokens (the [CLS] self-attention is left out, so rows sum below one).
        keys: (tiles, n, c) the same layer's keys of the patch tokens (heads
            concatenated), the similarity metric both methods merge with.
    """

    features: torch.Tensor
    cls_attention: torch.Tensor
    keys: torch.Tensor


def _encoder_parts(adapter: LlavaAdapter) -> tuple[nn.Module, int]:
    """The CLIP encoder layers and the index of the hidden state LLaVA reads.

    Raises:
        ValueError: The model concatenates several feature layers, or drops no [CLS]
            token (``vision_feature_select_strategy`` other than ``"default"``, e.g.
            SigLIP towers, which have no [CLS] to rank by).
    """
    config = adapter.config
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"[CLS]-attention ranking needs one vision feature layer, got {layer}")
    if config.vision_feature_select_strategy != "default":
        raise ValueError(
            "[CLS]-attention ranking needs a vision tower with a [CLS] token "
            f"(vision_feature_select_strategy 'default', got "
            f"{config.vision_feature_select_strategy!r})"
        )
    layers = adapter.vision_encoder_layers
    index = layer % (len(layers) + 1)
    if index == 0:
        raise ValueError("the vision feature layer is the embedding output; no attention to use")
    return layers, index


def cls_attention_and_keys(
    layer: nn.Module, layer_input: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] attention row (head-averaged, float32) and keys of one CLIP encoder layer.

    Args:
        layer: A ``CLIPEncoderLayer``.
        layer_input: Its input hidden states (tiles, 1 + n, c), [CLS] first.

    Returns:
        ``(attention, keys)``: (tiles, 1 + n) attention of [CLS] over every token and
        (tiles, 1 + n, c) keys.
    """
    attention = layer.self_attn
    normed = layer.layer_norm1(layer_input)
    tiles, tokens, _ = normed.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    keys = attention.k_proj(normed)
    query = attention.q_proj(normed[:, :1]).view(tiles, 1, heads, head_dim).transpose(1, 2)
    key_heads = keys.view(tiles, tokens, heads, head_dim).transpose(1, 2)
    scores = torch.matmul(query.float(), key_heads.float().transpose(-1, -2)) * attention.scale
    return torch.softmax(scores, dim=-1).mean(dim=1)[:, 0], keys


@torch.no_grad()
def encode_with_cls_attention(
    adapter: LlavaAdapter, pixel_values: torch.Tensor, batch_size: int = 16
) -> TileFeatures:
    """Run the vision tower on normalised tiles and keep what the rankings need."""
    layers, index = _encoder_parts(adapter)
    tower = adapter.vision_tower
    features, attention, keys = [], [], []
    for start in range(0, pixel_values.shape[0], batch_size):
        hidden = tower(pixel_values[start : start + batch_size], output_hidden_states=True)
        states = hidden.hidden_states
        row, layer_keys = cls_attention_and_keys(layers[index - 1], states[index - 1])
        features.append(states[index][:, 1:])
        attention.append(row[:, 1:])
        keys.append(layer_keys[:, 1:])
    return TileFeatures(torch.cat(features), torch.cat(attention), torch.cat(keys))


def gather_tokens(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (crops, k) of ``values`` (crops, n, c), crop by crop: (crops, k, c)."""
    return torch.gather(values, 1, index[..., None].expand(-1, -1, values.shape[-1]))


def project(adapter: LlavaAdapter, features: torch.Tensor) -> torch.Tensor:
    """The multimodal projector on (tokens, c) vision features: (tokens, hidden)."""
    return adapter.project(features[None])[0]
