import math

import numpy as np
import pytest
import torch

from lrsvqa.train.losses import LossWeights, distillation_loss, restrict, top_overlap


def _rows(shape, seed, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=generator) * scale, dim=-1)


def _masks():
    # Sample 0: 14 keys, vision 2..11, high-res 4..9 and 11; sample 1 padded after 12 keys.
    vision = torch.zeros(2, 14, dtype=torch.bool)
    hr = torch.zeros(2, 14, dtype=torch.bool)
    vision[0, 2:12] = True
    hr[0, 4:10] = True
    hr[0, 11] = True
    vision[1, 1:9] = True
    hr[1, 2:5] = True
    hr[1, 6:9] = True
    turns = torch.tensor([[True, True, True], [True, False, False]])
    return vision, hr, turns


def _reference(student, teacher, vision, hr, turns, w):
    """Eqs. 4-6 written out with loops in float64."""
    s, t = student.double().numpy(), teacher.double().numpy()
    K, B, H, _, _ = s.shape
    per_sample, parts = [], {"kl": [], "kl_hr": [], "mse": []}
    for b in range(B):
        valid = [j for j in range(turns.shape[1]) if turns[b, j]]
        v, h_keys = vision[b].numpy(), hr[b].numpy()
        total = 0.0
        for k in range(K):
            for h in range(H):
                kl = kl_hr = mse = 0.0
                for j in range(len(valid)):
                    sv = s[k, b, h, valid[j], v] / s[k, b, h, valid[j], v].sum()
                    tv = t[k, b, h, valid[j], v] / t[k, b, h, valid[j], v].sum()
                    sh = s[k, b, h, valid[j], h_keys] / s[k, b, h, valid[j], h_keys].sum()
                    th = t[k, b, h, valid[j], h_keys] / t[k, b, h, valid[j], h_keys].sum()
                    kl += float(np.sum(tv * np.log(tv / sv)))
                    kl_hr += float(np.sum(th * np.log(th / sh)))
                    mse += float(np.mean((sh - th) ** 2))
                kl, kl_hr, mse = kl / len(valid), kl_hr / len(valid), mse / len(valid)
                parts["kl"].append(kl)
                parts["kl_hr"].append(kl_hr)
                parts["mse"].append(mse)
                total += w.mse * mse + w.kl * (kl + w.hr * kl_hr)
        per_sample.append(total / (K * H))
    return float(np.mean(per_sample)), {key: float(np.mean(v)) for key, v in parts.items()}


@pytest.mark.parametrize("weights", [LossWeights(), LossWeights(hr=0.5, mse=100.0, kl=3.0)])
def test_loss_matches_float64_loops(weights):
    vision, hr, turns = _masks()
    shape = (2, 2, 3, 3, 14)  # K pairs, B samples, H heads, J turns, n keys
    student, teacher = _rows(shape, 0), _rows(shape, 1)
    terms = distillation_loss(student, teacher, vision, hr, turns, weights)
    loss, parts = _reference(student, teacher, vision, hr, turns, weights)
    assert math.isclose(terms.loss.item(), loss, rel_tol=1e-5)
    for name, value in parts.items():
        assert math.isclose(getattr(terms, name).item(), value, rel_tol=1e-5), name


def test_loss_is_zero_for_identical_attention_and_positive_otherwise():
    vision, hr, turns = _masks()
    rows = _rows((1, 2, 2, 3, 14), 3)
    same = distillation_loss(rows, rows.clone(), vision, hr, turns, LossWeights())
    assert abs(same.loss.item()) < 1e-6
    other = distillation_loss(rows, _rows((1, 2, 2, 3, 14), 4), vision, hr, turns, LossWeights())
    assert other.loss.item() > 1e-3 and other.mse.item() > 0


def test_only_vision_keys_matter():
    vision, hr, turns = _masks()
    student, teacher = _rows((1, 2, 2, 3, 14), 5), _rows((1, 2, 2, 3, 14), 6)
    changed = student.clone()
    changed[..., 0] *= 10  # mass on a non-vision key (e.g. the system prompt)
    changed[..., 13] *= 0.1
    a = distillation_loss(student, teacher, vision, hr, turns, LossWeights())
    b = distillation_loss(changed, teacher, vision, hr, turns, LossWeights())
    assert torch.allclose(a.loss, b.loss, rtol=1e-6)


def test_padded_turns_are_ignored():
    vision, hr, turns = _masks()
    student, teacher = _rows((1, 2, 2, 3, 14), 7), _rows((1, 2, 2, 3, 14), 8)
    noisy = student.clone()
    noisy[:, 1, :, 1:] = _rows((1, 2, 2, 14), 9)  # sample 1 has one real turn
    a = distillation_loss(student, teacher, vision, hr, turns, LossWeights())
    b = distillation_loss(noisy, teacher, vision, hr, turns, LossWeights())
    assert torch.allclose(a.loss, b.loss, rtol=1e-6)


def test_gradient_reaches_student_logits():
    vision, hr, turns = _masks()
    logits = torch.randn(1, 2, 2, 3, 14, requires_grad=True)
    teacher = _rows((1, 2, 2, 3, 14), 10)
    distillation_loss(
        torch.softmax(logits, -1), teacher, vision, hr, turns, LossWeights()
    ).loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_restrict_renormalises_inside_the_mask():
    vision, _, _ = _masks()
    rows = restrict(_rows((2, 1, 1, 14), 11), vision)
    assert torch.allclose(rows.sum(-1), torch.ones(2, 1, 1))
    assert (rows[~vision[:, None, None, :].expand_as(rows)] == 0).all()


def test_top_overlap_counts_shared_top_tokens():
    hr = torch.zeros(1, 10, dtype=torch.bool)
    hr[0, 2:10] = True  # 8 high-res tokens: top-25% is 2 tokens
    turns = torch.tensor([[True, True]])
    teacher = torch.full((1, 2, 2, 10), 0.01)
    teacher[..., 0] = 5.0  # a non-high-res key never counts
    teacher[..., 3] = teacher[..., 7] = 1.0
    student = torch.full((1, 2, 2, 10), 0.01)
    student[:, :, 0, 3] = student[:, :, 0, 7] = 1.0  # turn 0: both
    student[:, :, 1, 3] = student[:, :, 1, 8] = 1.0  # turn 1: one of two
    overlap = top_overlap(student, teacher, hr, turns, alpha=0.25)
    assert overlap.tolist() == [pytest.approx(0.75)]
    assert top_overlap(teacher, teacher, hr, turns, 0.25).item() == 1.0


def test_weights_must_be_non_negative():
    with pytest.raises(ValueError, match="non-negative"):
        LossWeights(hr=-1.0)


def test_gradient_stays_finite_when_the_student_barely_sees_high_res_tokens():
    # A trained model's student can put ~1e-5 of its mass on the high-res tokens, one of
    # them ~1e-40: renormalising divides by that mass, and -teacher/student overflowed.
    student = torch.tensor([1 - 1e-5, 1e-5, 1e-40], dtype=torch.float32)
    student = student.view(1, 1, 1, 1, 3).requires_grad_(True)
    teacher = torch.tensor([0.2, 0.4, 0.4]).view(1, 1, 1, 1, 3)
    vision = torch.ones(1, 3, dtype=torch.bool)
    hr = torch.tensor([[False, True, True]])
    turns = torch.ones(1, 1, dtype=torch.bool)
    terms = distillation_loss(student, teacher, vision, hr, turns, LossWeights())
    terms.loss.backward()
    assert torch.isfinite(terms.loss) and torch.isfinite(student.grad).all()
