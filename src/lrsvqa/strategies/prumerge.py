"""PruMerge+ token reduction of vision-encoder crops, reimplemented from its paper.

Shang et al., 2024, "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large
Multimodal Models" (Sec. 3; PruMerge+ adds spatially uniform samples), training-free,
inside the vision encoder:

1. Outliers: patch tokens whose [CLS] attention (head-averaged, in the layer that
   produces LLaVA's features) exceeds ``Q3 + 1.5 * IQR`` of the crop's attention
   distribution (Tukey's interquartile-range rule).
2. Spatial samples (the "+"): the budget left after the outliers is filled with
   tokens evenly spaced in raster order over the non-outlier tokens, so every part of
   the crop keeps some coverage.
3. Merge: each kept token absorbs its ``k`` nearest pruned tokens (cosine similarity
   of the layer's keys), as the [CLS]-attention-weighted mean of itself and them.

The LRS-VQA paper fixes the retain ratio at 25 % (Tab. 3-4), so, unlike the adaptive
original, the budget is exact: ``ceil(0.25 n)`` per crop (:func:`budgets.prumerge_budget`).
If there are more outliers than the budget, the most attended ones are kept. ``k``
defaults to 32 (our choice; the paper describes k-nearest-neighbour merging by key
similarity). On LLaVA-NeXT the reduction runs per crop, as for VisionZip.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from lrsvqa.budgets import PRUMERGE_NEIGHBOURS, PRUMERGE_RATIO, prumerge_budget
from lrsvqa.models.vision_attention import gather_tokens


def iqr_outliers(cls_attention: torch.Tensor) -> torch.Tensor:
    """Indices of tokens above ``Q3 + 1.5 * (Q3 - Q1)`` of the attention values."""
    values = cls_attention.float()
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], device=values.device))
    return torch.nonzero(values > q3 + 1.5 * (q3 - q1)).flatten()


def select_tokens(cls_attention: torch.Tensor, budget: int) -> torch.Tensor:
    """Sorted indices of the ``budget`` tokens PruMerge+ keeps (outliers + spatial samples)."""
    n = cls_attention.numel()
    outliers = iqr_outliers(cls_attention)
    if outliers.numel() >= budget:
        ranked = torch.argsort(-cls_attention[outliers].float(), stable=True)
        return torch.sort(outliers[ranked[:budget]]).values
    is_outlier = torch.zeros(n, dtype=torch.bool, device=cls_attention.device)
    is_outlier[outliers] = True
    rest = torch.nonzero(~is_outlier).flatten()
    need = budget - outliers.numel()
    samples = rest[torch.arange(need, device=rest.device) * rest.numel() // need]
    return torch.sort(torch.cat([outliers, samples])).values


def merge_neighbours(
    features: torch.Tensor,
    cls_attention: torch.Tensor,
    keys: torch.Tensor,
    kept: torch.Tensor,
    neighbours: int,
) -> torch.Tensor:
    """Each kept token as the attention-weighted mean of itself and its nearest pruned tokens.

    Args:
        features: (crops, n, c) features.
        cls_attention: (crops, n) [CLS] attention, the merge weights.
        keys: (crops, n, c_k) keys, the similarity metric.
        kept: (crops, budget) sorted kept indices per crop.
        neighbours: ``k`` pruned tokens absorbed by each kept token.

    Returns:
        (crops, budget, c) merged features.
    """
    crops, n, c = features.shape
    k = min(neighbours, n - kept.shape[1])
    if k == 0:
        return gather_tokens(features, kept)
    is_kept = torch.zeros(crops, n, dtype=torch.bool, device=features.device)
    is_kept.scatter_(1, kept, True)
    unit = functional.normalize(keys.float(), dim=-1)
    similarity = gather_tokens(unit, kept) @ unit.transpose(1, 2)
    similarity = similarity.masked_fill(is_kept[:, None, :], -torch.inf)
    members = torch.cat([kept[..., None], similarity.topk(k, dim=-1).indices], dim=-1)
    flat = members.reshape(crops, -1)
    weights = torch.gather(cls_attention.float(), 1, flat).reshape(members.shape)
    values = gather_tokens(features.float(), flat).reshape(*members.shape, c)
    merged = (weights[..., None] * values).sum(dim=2) / weights.sum(dim=2, keepdim=True)
    return merged.to(features.dtype)


def prumerge_crops(
    features: torch.Tensor,
    cls_attention: torch.Tensor,
    keys: torch.Tensor,
    ratio: float = PRUMERGE_RATIO,
    neighbours: int = PRUMERGE_NEIGHBOURS,
) -> torch.Tensor:
    """Reduce every crop's n tokens to ``prumerge_budget(n, ratio)`` merged tokens.

    Args:
        features: (crops, n, c) patch-token features before the projector.
        cls_attention: (crops, n) [CLS] attention over those tokens.
        keys: (crops, n, c_k) their keys in the same layer.
        ratio: Retain ratio.
        neighbours: ``k`` pruned tokens merged into each kept token.

    Returns:
        (crops, budget, c) features in raster order of the kept tokens.
    """
    if neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}")
    budget = prumerge_budget(features.shape[1], ratio)
    attention = cls_attention.float().cpu()
    kept = torch.stack([select_tokens(row, budget) for row in attention])
    return merge_neighbours(features, cls_attention, keys, kept.to(features.device), neighbours)
