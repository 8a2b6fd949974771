"""Attention-distillation loss (paper eqs. 4-6) and student/teacher agreement metrics.

All functions take attention rows shaped ``(K, B, H, J, n)``: K student-teacher layer
pairs, B samples, H heads, J dialogue turns (the last prompt token of each) and n keys.

Choices the paper leaves open, made explicit here:

* ``A`` (the attention "over the vision tokens") is the attention row restricted to the
  n_v vision tokens and renormalised to sum to one. The raw row also puts mass on the
  system prompt and text; renormalising compares *where in the image* the two models
  look, which is what tile selection uses, independently of how much total attention
  each model gives to the image.
* ``A^hr`` restricts further to the high-resolution tile tokens (not the thumbnail, not
  ``image_newline``) and renormalises again.
* A ``j x n_v`` KL or MSE is averaged over the j turns, so long dialogues do not weigh
  more per sample than short ones; MSE averages over the ``j x n_hr`` entries.
* Eq. 6 divides the sum over K pairs and H heads by ``K H``: that is a mean over pairs
  and heads, then a mean over the batch.

MSE on probabilities is tiny: with n_hr = 10^3 tokens, entries are ~10^-3 and squared
errors ~10^-6, so with ``lambda_mse = 1`` the MSE term barely moves the total. We keep
the paper's formula and weights (so results are comparable) and log the term
separately; raise ``lambda_mse`` to make it matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrsvqa.models.layout import top_alpha

_TINY = torch.finfo(torch.float32).tiny
_LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class LossWeights:
    """The paper's ``lambda_hr``, ``lambda_mse`` and ``lambda_kl`` (defaults 2, 1, 1)."""

    hr: float = 2.0
    mse: float = 1.0
    kl: float = 1.0

    def __post_init__(self) -> None:
        if min(self.hr, self.mse, self.kl) < 0:
            raise ValueError(f"loss weights must be non-negative, got {self}")


@dataclass(frozen=True)
class LossTerms:
    """The total loss and its parts, each a mean over pairs, heads and samples.

    ``loss = weights.kl * (kl + weights.hr * kl_hr) + weights.mse * mse``.
    """

    loss: torch.Tensor
    kl: torch.Tensor
    kl_hr: torch.Tensor
    mse: torch.Tensor


def restrict(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Restrict attention rows to the keys in ``mask`` and renormalise them to sum to one.

    Args:
        rows: (..., B, H, J, n) attention probabilities.
        mask: (B, n) bool keys to keep.

    Returns:
        Same shape as ``rows``, zero outside ``mask``.
    """
    kept = rows * mask[:, None, None, :].to(rows.dtype)
    return kept / kept.sum(dim=-1, keepdim=True).clamp_min(_TINY)


def row_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` per row over the last dim; zero-probability keys add 0.

    The student is floored at ``_LOG_FLOOR`` before the log. Its softmax rows are
    positive wherever the teacher's are, but a near-zero student probability makes
    the gradient ``-teacher / student`` overflow float32 (seen as NaN weights after a
    few steps on a trained model); below the floor the gradient is simply zero.
    """
    cross = teacher * torch.log(student.clamp_min(_LOG_FLOOR))
    return (torch.xlogy(teacher, teacher) - cross).sum(dim=-1)


def _mean_over_turns(values: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    """(K, B, H, J) -> (K, B, H): mean over each sample's real turns."""
    weights = turn_mask[None, :, None, :].to(values.dtype)
    return (values * weights).sum(-1) / weights.sum(-1).clamp_min(1)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    vision_mask: torch.Tensor,
    hr_mask: torch.Tensor,
    turn_mask: torch.Tensor,
    weights: LossWeights,
) -> LossTerms:
    """Eqs. 4-6: KL over all vision tokens, weighted KL and MSE over high-res tokens.

    Args:
        student: (K, B, H, J, n) student attention rows (full rows over the sequence).
        teacher: Teacher rows, same shape (no gradient needed).
        vision_mask: (B, n) bool vision tokens.
        hr_mask: (B, n) bool high-resolution tokens (a subset of the vision tokens).
        turn_mask: (B, J) bool real turns.
        weights: Loss weights.
    """
    student, teacher = student.float(), teacher.float()
    stu_vis, tea_vis = restrict(student, vision_mask), restrict(teacher, vision_mask)
    stu_hr, tea_hr = restrict(student, hr_mask), restrict(teacher, hr_mask)
    kl = _mean_over_turns(row_kl(tea_vis, stu_vis), turn_mask)
    kl_hr = _mean_over_turns(row_kl(tea_hr, stu_hr), turn_mask)
    hr_count = hr_mask.sum(-1).clamp_min(1).to(student.dtype)[None, :, None, None]
    squared = ((stu_hr - tea_hr) ** 2).sum(-1) / hr_count
    mse = _mean_over_turns(squared, turn_mask)
    kl, kl_hr, mse = kl.mean(), kl_hr.mean(), mse.mean()
    loss = weights.kl * (kl + weights.hr * kl_hr) + weights.mse * mse
    return LossTerms(loss=loss, kl=kl, kl_hr=kl_hr, mse=mse)


def top_overlap(
    student: torch.Tensor,
    teacher: torch.Tensor,
    hr_mask: torch.Tensor,
    turn_mask: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Share of the teacher's top-alpha high-res tokens the student also puts in its top-alpha.

    Scores are head-averaged attention at the high-resolution tokens, the quantity
    coarse-to-fine inference ranks (``RegionFocusModule.vision_scores``), ranked with the
    same :func:`top_alpha`.

    Args:
        student: (B, H, J, n) student rows of one layer pair.
        teacher: Teacher rows, same shape.
        hr_mask: (B, n) bool high-resolution tokens.
        turn_mask: (B, J) bool real turns.
        alpha: Proportion of tokens selected (the paper's 0.25).

    Returns:
        (B,) mean overlap over each sample's turns, in [0, 1].
    """
    stu_scores, tea_scores = student.float().mean(1), teacher.float().mean(1)
    result = []
    for b in range(student.shape[0]):
        keys = hr_mask[b].nonzero().squeeze(-1)
        overlaps = []
        for j in turn_mask[b].nonzero().squeeze(-1).tolist():
            picked_s = set(top_alpha(stu_scores[b, j, keys], alpha).tolist())
            picked_t = top_alpha(tea_scores[b, j, keys], alpha).tolist()
            overlaps.append(len(picked_s.intersection(picked_t)) / len(picked_t))
        result.append(sum(overlaps) / len(overlaps))
    return torch.tensor(result)
