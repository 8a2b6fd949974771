"""VisionZip token reduction of vision-encoder crops, reimplemented from its paper.

Yang et al., 2024, "VisionZip: Longer is Better but Not Necessary in Vision Language
Models" (Sec. 3.2-3.3), training-free, inside the vision encoder:

* Dominant tokens: the ``D`` patch tokens the [CLS] token attends to most (attention
  averaged over heads, in the layer that produces LLaVA's features), kept as they are.
* Contextual tokens: the remaining tokens, in raster order, provide ``C`` targets
  sampled uniformly (every ``floor(m / C)``-th); every other remaining token is assigned
  to the target whose key is most similar (cosine similarity of that layer's keys) and
  each target becomes the mean of itself and its assigned tokens.

The crop keeps exactly ``D + C`` tokens (dominant in raster order, then contextual);
the paper's 64-token setting is ``D = 54, C = 10`` (:func:`budgets.visionzip_split`).
On LLaVA-NeXT the reduction runs per crop (base view and every grid tile), before the
model would unpad and add newlines, so the LLM sees the crops' kept tokens one crop
after the other, base first, without ``image_newline``.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from lrsvqa.budgets import visionzip_split
from lrsvqa.models.vision_attention import gather_tokens


def visionzip_crops(
    features: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor, retained: int
) -> torch.Tensor:
    """Reduce every crop's n tokens to ``sum(visionzip_split(retained, n))`` tokens.

    Args:
        features: (crops, n, c) patch-token features before the projector.
        cls_attention: (crops, n) [CLS] attention over those tokens.
        keys: (crops, n, c_k) their keys in the same layer.
        retained: Token budget ``D + C`` per crop.

    Returns:
        (crops, D + C, c) features: dominant tokens in raster order, then merged
        contextual tokens in target order.
    """
    n = features.shape[1]
    dominant, contextual = visionzip_split(retained, n)
    order = torch.argsort(-cls_attention.float(), dim=1, stable=True)
    kept = gather_tokens(features, torch.sort(order[:, :dominant], dim=1).values)
    if contextual == 0:
        return kept
    rest = torch.sort(order[:, dominant:], dim=1).values
    step = rest.shape[1] // contextual
    is_target = torch.zeros(rest.shape[1], dtype=torch.bool, device=rest.device)
    is_target[torch.arange(contextual, device=rest.device) * step] = True
    targets, others = rest[:, is_target], rest[:, ~is_target]
    target_keys = functional.normalize(gather_tokens(keys, targets).float(), dim=-1)
    other_keys = functional.normalize(gather_tokens(keys, others).float(), dim=-1)
    assignment = (other_keys @ target_keys.transpose(1, 2)).argmax(dim=-1)
    # members[t, j, i] = 1 when remaining token i of crop t merges into target j.
    members = functional.one_hot(assignment, contextual).float().transpose(1, 2)
    target_features = gather_tokens(features, targets).float()
    sums = target_features + members @ gather_tokens(features, others).float()
    merged = sums / (1 + members.sum(dim=-1, keepdim=True))
    return torch.cat([kept, merged.to(features.dtype)], dim=1)
