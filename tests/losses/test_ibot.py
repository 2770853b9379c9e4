"""iBOTPatchLoss against a per-image, per-patch loop of DINOv2's formula."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from dinolab.losses import iBOTPatchLoss

B, N, K = 4, 6, 10


def reference_ibot(s, t, masks, center, teacher_temp, student_temp=0.1):
    """Loop: per image, mean over its masked patches of -sum_k q log p; sum / B."""
    total = torch.zeros((), dtype=s.dtype)
    for b in range(s.shape[0]):
        idx = [n for n in range(s.shape[1]) if bool(masks[b, n])]
        if not idx:
            continue  # an image without masked patches adds 0 but still counts in B
        image_sum = torch.zeros((), dtype=s.dtype)
        for n in idx:
            q = torch.softmax((t[b, n] - center) / teacher_temp, dim=0)
            log_p = torch.log_softmax(s[b, n] / student_temp, dim=0)
            image_sum = image_sum - (q * log_p).sum()
        total = total + image_sum / len(idx)
    return total / s.shape[0]


def make_inputs(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, N, K, generator=g, dtype=dtype)
    t = torch.randn(B, N, K, generator=g, dtype=dtype)
    masks = torch.rand(B, N, generator=g) < 0.5
    masks[0, :] = False  # one image with no masked patch
    masks[1, 2] = True
    return s, t, masks


def test_matches_loop_reference_and_updates_center() -> None:
    loss_fn = iBOTPatchLoss(K)
    loss_fn.center.copy_(torch.randn(1, 1, K) * 0.2)
    c0 = loss_fn.center.clone().double().reshape(K)
    s, t, masks = make_inputs()
    got = loss_fn(s, t, masks, teacher_temp=0.05)
    want = reference_ibot(s, t, masks, c0, 0.05)
    # float64 inputs; the center is a float32 buffer read exactly.
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # Center after: 0.9 c0 + 0.1 mean of the teacher logits at the masked positions.
    masked_rows = torch.stack([t[b, n] for b in range(B) for n in range(N) if masks[b, n]])
    expected_center = 0.9 * c0 + 0.1 * masked_rows.mean(dim=0)
    torch.testing.assert_close(loss_fn.center.double().reshape(K), expected_center,
                               rtol=1e-6, atol=1e-7)  # float32 buffer


def test_second_call_uses_updated_center() -> None:
    loss_fn = iBOTPatchLoss(K)
    s, t, masks = make_inputs(1)
    loss_fn(s, t, masks, teacher_temp=0.07)
    c1 = loss_fn.center.clone().double().reshape(K)
    s2, t2, masks2 = make_inputs(2)
    got = loss_fn(s2, t2, masks2, teacher_temp=0.07)
    torch.testing.assert_close(got, reference_ibot(s2, t2, masks2, c1, 0.07), rtol=1e-12,
                               atol=1e-12)


def test_forward_masked_equals_forward() -> None:
    s, t, masks = make_inputs(3)
    a, b = iBOTPatchLoss(K), iBOTPatchLoss(K)
    full = a(s, t, masks, teacher_temp=0.04)
    gathered = b.forward_masked(s[masks], t[masks], masks, teacher_temp=0.04)
    torch.testing.assert_close(full, gathered, rtol=1e-12, atol=1e-12)
    assert torch.equal(a.center, b.center)


def test_gradient_only_to_student_and_only_at_masked_positions() -> None:
    s, t, masks = make_inputs(4)
    s.requires_grad_(True)
    t.requires_grad_(True)
    iBOTPatchLoss(K)(s, t, masks, teacher_temp=0.04).backward()
    assert t.grad is None
    grad_norm = s.grad.abs().sum(dim=-1)  # [B, N]
    assert (grad_norm[masks] > 0).all()
    assert (grad_norm[~masks] == 0).all()


def test_no_masked_patch_gives_zero_and_keeps_center() -> None:
    loss_fn = iBOTPatchLoss(K)
    s, t, _ = make_inputs(5)
    masks = torch.zeros(B, N, dtype=torch.bool)
    loss = loss_fn(s, t, masks, teacher_temp=0.04)
    assert float(loss) == 0.0
    assert torch.equal(loss_fn.center, torch.zeros(1, 1, K))


def test_divides_by_all_images() -> None:
    # One masked patch in one of 4 images: the loss is that patch's CE divided by 4.
    s, t, _ = make_inputs(6)
    masks = torch.zeros(B, N, dtype=torch.bool)
    masks[2, 3] = True
    got = iBOTPatchLoss(K)(s, t, masks, teacher_temp=0.1)
    q = torch.softmax(t[2, 3] / 0.1, dim=0)
    ce = -(q * torch.log_softmax(s[2, 3] / 0.1, dim=0)).sum()
    torch.testing.assert_close(got, ce / 4, rtol=1e-12, atol=1e-12)


def test_guard_without_process_group(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("all_reduce without a process group")

    monkeypatch.setattr(dist, "all_reduce", forbidden)
    s, t, masks = make_inputs(7)
    iBOTPatchLoss(K)(s, t, masks, teacher_temp=0.04)


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "m_shape", "match"),
    [
        ((B, N), (B, N, K), (B, N), "student_patch_logits must be 3-D"),
        ((B, N, K + 1), (B, N, K + 1), (B, N), r"has K=11, expected patch_out_dim=10"),
        ((B, N, K), (B, N + 1, K), (B, N), "must have the same shape"),
        ((B, N, K), (B, N, K), (B, N + 1), r"masks has shape \(4, 7\), expected"),
        ((B, N, K), (B, N, K), (B * N,), "masks must be 2-D"),
    ],
)
def test_bad_shapes(s_shape, t_shape, m_shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        iBOTPatchLoss(K)(torch.randn(s_shape), torch.randn(t_shape),
                         torch.ones(m_shape, dtype=torch.bool), teacher_temp=0.04)


def test_bad_masks_and_values() -> None:
    loss_fn = iBOTPatchLoss(K)
    s, t, masks = make_inputs(8)
    with pytest.raises(ValueError, match="masks must be a bool tensor"):
        loss_fn(s, t, masks.float(), teacher_temp=0.04)
    with pytest.raises(ValueError, match="teacher_temp must be a positive"):
        loss_fn(s, t, masks, teacher_temp=0.0)
    bad = s.clone()
    b, n = torch.nonzero(masks)[0].tolist()
    bad[b, n, 0] = float("nan")
    with pytest.raises(ValueError, match="student_masked has 1 NaN"):
        loss_fn(bad, t, masks, teacher_temp=0.04)
    with pytest.raises(ValueError, match=r"student_masked has 3 rows but masks has"):
        loss_fn.forward_masked(s[masks][:3], t[masks][:3], masks, teacher_temp=0.04)
    with pytest.raises(ValueError, match="patch_out_dim must be >= 1"):
        iBOTPatchLoss(0)
    with pytest.raises(ValueError, match=r"center_momentum must be in \[0, 1\]"):
        iBOTPatchLoss(K, center_momentum=-0.1)


def test_without_centering_the_teacher_is_a_plain_sharpened_softmax_and_no_center_moves():
    # The collapse study's "no centering" variants: softmax(t / tau), center left at zero.
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 8), torch.randn(3, 5, 8) + 2.0
    masks = torch.rand(3, 5) < 0.5
    masks[0, 0] = True
    plain = iBOTPatchLoss(8, teacher_centering="none")
    loss = plain(s, t, masks, teacher_temp=0.07)
    q = torch.softmax(t[masks] / 0.07, dim=-1)
    per_patch = -(q * torch.log_softmax(s[masks] / 0.1, dim=-1)).sum(-1)
    weights = (1.0 / masks.sum(1).clamp(min=1)).unsqueeze(1).expand_as(masks)[masks]
    assert torch.allclose(loss, (per_patch * weights).sum() / 3, rtol=1e-5)  # float32 rounding
    assert torch.count_nonzero(plain.center) == 0
    with pytest.raises(ValueError, match="teacher_centering"):
        iBOTPatchLoss(8, teacher_centering="sinkhorn")
