"""SimCLR, MoCo (queue, loss, model step) and BYOL against explicit per-row formulas."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from dinolab.losses import MoCo, MoCoQueue, byol_loss, moco_loss, simclr_loss


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def reference_simclr(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Per-row cross-entropy; the positive of row i is i+N and of row i+N is i."""
    rows = [unit(r) for r in z1.tolist() + z2.tolist()]
    n = z1.shape[0]
    total = 0.0
    for r, zr in enumerate(rows):
        positive = r + n if r < n else r - n
        logits = {c: dot(zr, zc) / tau for c, zc in enumerate(rows) if c != r}
        log_norm = math.log(sum(math.exp(v) for v in logits.values()))
        total += log_norm - logits[positive]
    return total / (2 * n)


def make(n: int = 4, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_simclr_matches_per_row_reference(tau: float) -> None:
    z1, z2 = make()
    got = simclr_loss(z1, z2, temperature=tau)
    # float64 vs float64 Python arithmetic.
    assert float(got) == pytest.approx(reference_simclr(z1, z2, tau), rel=1e-10)


def test_simclr_positive_is_the_other_view() -> None:
    z1, _ = make(seed=1)
    # With z2 == z1 the positive of row i (row i+N) is its exact twin, so the loss is lower than
    # when the twins are shuffled; labels [0..N-1] twice (a self-match) would not see this.
    matched = simclr_loss(z1, z1.clone(), temperature=0.1)
    shuffled = simclr_loss(z1, z1.flip(0), temperature=0.1)
    assert float(matched) < float(shuffled)


def test_simclr_is_half_of_the_tf_reference() -> None:
    z1, z2 = make(seed=2)
    tau = 0.5
    a = [unit(r) for r in z1.tolist()]
    b = [unit(r) for r in z2.tolist()]
    n = len(a)

    def tf_side(x, y):  # logits [x_i . y_j, x_i . x_j (j != i)], label i
        total = 0.0
        for i in range(n):
            logits = [dot(x[i], y[j]) / tau for j in range(n)]
            logits += [dot(x[i], x[j]) / tau for j in range(n) if j != i]
            total += math.log(sum(math.exp(v) for v in logits)) - logits[i]
        return total / n

    tf_loss = tf_side(a, b) + tf_side(b, a)
    assert float(simclr_loss(z1, z2, tau)) == pytest.approx(tf_loss / 2, rel=1e-10)


def test_byol_matches_formula_and_detaches_target() -> None:
    p, z = make(seed=3)
    p.requires_grad_(True)
    z.requires_grad_(True)
    got = byol_loss(p, z)
    want = sum(2 - 2 * dot(unit(a), unit(b)) for a, b in zip(p.tolist(), z.tolist(), strict=True))
    assert float(got.detach()) == pytest.approx(want / p.shape[0], rel=1e-10)
    # Equal to the squared distance of the normalised vectors.
    pn = torch.nn.functional.normalize(p.detach(), dim=1)
    zn = torch.nn.functional.normalize(z.detach(), dim=1)
    assert float(got.detach()) == pytest.approx(float((pn - zn).pow(2).sum(1).mean()), rel=1e-10)
    got.backward()
    assert z.grad is None and p.grad.abs().sum() > 0


# --- MoCo --------------------------------------------------------------------------------------


def test_moco_queue_pointer_and_wrap_around() -> None:
    queue = MoCoQueue(dim=3, K=5)
    assert queue.queue.shape == (3, 5) and queue.ptr == 0
    torch.testing.assert_close(queue.queue.norm(dim=0), torch.ones(5))
    first = torch.randn(3, 3)
    queue.enqueue(first)
    assert queue.ptr == 3
    torch.testing.assert_close(queue.queue[:, :3], torch.nn.functional.normalize(first, dim=1).T)
    second = torch.randn(3, 3)  # 5 % 3 != 0: two columns at the end, one at the start
    old_col_2 = queue.queue[:, 2].clone()
    queue.enqueue(second)
    assert queue.ptr == 1
    second_n = torch.nn.functional.normalize(second, dim=1)
    torch.testing.assert_close(queue.queue[:, 3:5], second_n[:2].T)
    torch.testing.assert_close(queue.queue[:, 0], second_n[2])
    torch.testing.assert_close(queue.queue[:, 2], old_col_2)  # not yet the oldest: kept
    queue.enqueue(torch.randn(5, 3))  # a full queue's worth
    assert queue.ptr == 1


def test_moco_queue_bad_input() -> None:
    queue = MoCoQueue(dim=3, K=4)
    with pytest.raises(ValueError, match="5 keys do not fit in a queue of K=4"):
        queue.enqueue(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"keys must be \[N, dim=3\]"):
        queue.enqueue(torch.randn(2, 4))
    bad = torch.randn(2, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="keys has 1 NaN"):
        queue.enqueue(bad)
    with pytest.raises(ValueError, match="K must be >= 1"):
        MoCoQueue(3, K=0)


def test_moco_loss_matches_per_row_reference() -> None:
    q, k = make(n=3, d=4, seed=4)
    queue = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=0)
    tau = 0.07
    got = moco_loss(q, k, queue, temperature=tau)
    total = 0.0
    for qi, ki in zip(q.tolist(), k.tolist(), strict=True):
        qn, kn = unit(qi), unit(ki)
        logits = [dot(qn, kn) / tau] + [dot(qn, queue[:, j].tolist()) / tau for j in range(6)]
        m = max(logits)
        total += m + math.log(sum(math.exp(v - m) for v in logits)) - logits[0]  # label 0
    assert float(got) == pytest.approx(total / 3, rel=1e-10)
    with pytest.raises(ValueError, match=r"queue must be \[D=4, K\]"):
        moco_loss(q, k, queue.T)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        moco_loss(q, k, queue, temperature=0)


def test_moco_step_order_ema_before_keys_then_enqueue() -> None:
    torch.manual_seed(0)
    encoder = nn.Linear(6, 4)
    model = MoCo(encoder, dim=4, K=8, m=0.9, T=0.2)
    # Make the key encoder differ from the query encoder so the EMA step is visible.
    with torch.no_grad():
        for p in model.encoder_k.parameters():
            p.add_(1.0)
    k_before = copy.deepcopy(model.encoder_k)
    queue_before = model.queue.queue.clone()
    x_q, x_k = torch.randn(3, 6), torch.randn(3, 6)

    loss = model(x_q, x_k)

    # 1. Key encoder = 0.9 * old key + 0.1 * query encoder, applied BEFORE computing keys.
    for (name, pk), pk_old, pq in zip(model.encoder_k.named_parameters(), k_before.parameters(),
                                      model.encoder_q.parameters(), strict=True):
        torch.testing.assert_close(pk, 0.9 * pk_old + 0.1 * pq.detach(), msg=name)
        assert not pk.requires_grad
    with torch.no_grad():
        k_expected = torch.nn.functional.normalize(model.encoder_k(x_k), dim=1)
        q_expected = torch.nn.functional.normalize(encoder(x_q), dim=1)
    # 2. The loss used the queue as it was before this batch's keys went in.
    want = moco_loss(q_expected, k_expected, queue_before, temperature=0.2)
    torch.testing.assert_close(loss.detach(), want)
    # 3. Enqueued after: the first 3 columns now hold this batch's keys.
    torch.testing.assert_close(model.queue.queue[:, :3], k_expected.T)
    assert model.queue.ptr == 3
    loss.backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())
