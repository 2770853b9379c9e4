"""SPD Log-Euclidean loss: spd_log against scipy, its custom backward against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from dinolab.losses import SPDLogEuclideanLoss, log_euclidean_distance, spd_log, spd_matrix


def random_spd(n: int, seed: int, eigenvalues: list[float] | None = None) -> torch.Tensor:
    """Float64 SPD matrix U diag(l) U^T with a random orthogonal U."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = (torch.tensor(eigenvalues, dtype=torch.float64) if eigenvalues is not None
           else torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.2)
    a = u @ torch.diag(lam) @ u.T
    return 0.5 * (a + a.T)


# --- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 6])
def test_spd_log_matches_scipy_logm(n: int) -> None:
    a = random_spd(n, seed=n)
    got = spd_log(a)
    want = scipy.linalg.logm(a.numpy())
    # Both float64: agreement to round-off of a well-conditioned eigendecomposition.
    np.testing.assert_allclose(got.numpy(), np.real(want), rtol=1e-10, atol=1e-10)


def test_spd_log_batched_and_float32() -> None:
    batch = torch.stack([random_spd(4, seed=s) for s in range(3)])
    got = spd_log(batch.float())
    assert got.dtype == torch.float32 and got.shape == (3, 4, 4)
    for i in range(3):
        want = np.real(scipy.linalg.logm(batch[i].numpy()))
        # float32 input rounding (~6e-8 relative) propagated through log: 1e-5 is ample.
        np.testing.assert_allclose(got[i].double().numpy(), want, rtol=1e-5, atol=1e-5)


def test_exp_of_log_is_identity_map() -> None:
    a = random_spd(5, seed=11, eigenvalues=[1e-3, 0.5, 1.0, 1.0, 40.0])
    # float64: matrix_exp(log A) reproduces A to ~1e-12 relative to its largest entry.
    torch.testing.assert_close(torch.linalg.matrix_exp(spd_log(a)), a, rtol=1e-10, atol=1e-10)


def test_spd_matrix_gram_and_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    gram = spd_matrix(x, "gram", eps=1e-4)
    assert gram.shape == (2, 5, 5)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                xi, xj = x[b, i], x[b, j]
                cos = float(xi @ xj / (xi.norm() * xj.norm()))
                expected = cos + (1e-4 if i == j else 0.0)
                assert float(gram[b, i, j]) == pytest.approx(expected, abs=1e-12)
    cov = spd_matrix(x, "covariance", eps=1e-4)
    assert cov.shape == (2, 3, 3)
    for b in range(2):
        want = np.cov(x[b].numpy(), rowvar=False) + 1e-4 * np.eye(3)
        np.testing.assert_allclose(cov[b].numpy(), want, rtol=1e-12, atol=1e-12)
    # N=5 > D=3: the Gram matrix has rank 3, so eps*I gives the two smallest eigenvalues.
    lam = torch.linalg.eigvalsh(gram)
    torch.testing.assert_close(lam[:, :2], torch.full((2, 2), 1e-4, dtype=torch.float64),
                               rtol=0, atol=1e-12)


# --- backward ----------------------------------------------------------------------------------


def symmetric_input(a: torch.Tensor) -> torch.Tensor:
    """A free matrix whose symmetric part is ``a``; gradcheck perturbs entries one at a time."""
    return a.clone().requires_grad_(True)


def sym(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x + x.mT)


@pytest.mark.parametrize(
    "eigenvalues",
    [None, [1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 2.0, 3.0], [1e-3, 1e-3, 1e-3, 5.0]],
    ids=["distinct", "identity", "repeated", "eps-floor-like"],
)
def test_gradcheck_float64(eigenvalues) -> None:
    a = random_spd(4, seed=3, eigenvalues=eigenvalues)
    x = symmetric_input(a)
    # Finite differences (eps 1e-6) vs the Daleckii-Krein backward; default float64 tolerances
    # (atol 1e-5, rtol 1e-3), step kept below the smallest eigenvalue.
    assert torch.autograd.gradcheck(lambda m: spd_log(sym(m)), (x,), eps=1e-7, atol=1e-5)
    b = random_spd(4, seed=4)
    assert torch.autograd.gradcheck(
        lambda m: log_euclidean_distance(sym(m), b), (x,), eps=1e-7, atol=1e-5
    )


def torch_eigh_log(a: torch.Tensor) -> torch.Tensor:
    lam, u = torch.linalg.eigh(a)
    return u @ torch.diag_embed(torch.log(lam)) @ u.mT


@pytest.mark.parametrize("c", [1.0, 2.5])
def test_scaled_identity_gradient_is_finite_and_closed_form(c: float) -> None:
    b = random_spd(3, seed=5)
    a = (c * torch.eye(3, dtype=torch.float64)).requires_grad_(True)

    # torch.linalg.eigh's own backward divides by eigenvalue gaps, here all 0.
    naive = a.detach().clone().requires_grad_(True)
    (torch_eigh_log(naive) - torch_eigh_log(b)).pow(2).sum().backward()
    assert not torch.isfinite(naive.grad).all(), "torch's eigh backward is expected to fail here"

    log_euclidean_distance(a, b).backward()
    assert torch.isfinite(a.grad).all()
    # A = cI commutes with B, so d/dA ||log A - log B||^2 = 2 A^{-1} (log A - log B)
    #                                                     = 2 (log(c) I - log B) / c.
    log_b = torch.from_numpy(np.real(scipy.linalg.logm(b.numpy())))
    want = 2.0 * (np.log(c) * torch.eye(3, dtype=torch.float64) - log_b) / c
    torch.testing.assert_close(a.grad, want, rtol=1e-9, atol=1e-10)


def test_repeated_eigenvalues_gradient_matches_commuting_closed_form() -> None:
    g = torch.Generator().manual_seed(6)
    u, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    lam_a = torch.tensor([0.7, 0.7, 0.7, 2.0], dtype=torch.float64)
    lam_b = torch.tensor([0.3, 1.1, 4.0, 0.9], dtype=torch.float64)  # same eigenvectors: commutes
    a = (u @ torch.diag(lam_a) @ u.T)
    a = sym(a).requires_grad_(True)
    b = sym(u @ torch.diag(lam_b) @ u.T)
    log_euclidean_distance(a, b).backward()
    assert torch.isfinite(a.grad).all()
    # Commuting A and B: the gradient 2 A^{-1} (log A - log B)
    # is U diag(2 (log a_i - log b_i) / a_i) U^T.
    want = u @ torch.diag(2.0 * (lam_a.log() - lam_b.log()) / lam_a) @ u.T
    torch.testing.assert_close(a.grad, want, rtol=1e-8, atol=1e-10)


# --- the loss --------------------------------------------------------------------------------


def test_loss_matches_scipy_per_image_and_handles_other_widths() -> None:
    g = torch.Generator().manual_seed(7)
    student = torch.randn(3, 6, 4, generator=g)  # N=6 > D=4: rank-deficient Gram, eps floor
    teacher = torch.randn(3, 6, 10, generator=g)
    loss = SPDLogEuclideanLoss("gram", eps=1e-4)(student, teacher)
    assert loss.dtype == torch.float32
    total = 0.0
    for b in range(3):
        gs = spd_matrix(student[b].double(), "gram", 1e-4).numpy()
        gt = spd_matrix(teacher[b].double(), "gram", 1e-4).numpy()
        diff = np.real(scipy.linalg.logm(gs)) - np.real(scipy.linalg.logm(gt))
        total += float((diff**2).sum())
    # float64 inside; the float32 output rounds at ~1e-7 relative.
    assert float(loss) == pytest.approx(total / 3, rel=1e-6)


def test_loss_zero_for_identical_tokens_and_gradients() -> None:
    x = torch.randn(2, 8, 4)
    loss_fn = SPDLogEuclideanLoss("gram")
    assert float(loss_fn(x, x.clone())) == pytest.approx(0.0, abs=1e-9)
    student = torch.randn(2, 8, 4, requires_grad=True)  # rank 4 of 8: eigenvalue 1e-4 repeated
    teacher = torch.randn(2, 8, 16, requires_grad=True)
    loss_fn(student, teacher).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_covariance_loss_matches_formula() -> None:
    s = torch.randn(2, 5, 3, dtype=torch.float64)
    t = torch.randn(2, 5, 3, dtype=torch.float64)
    got = SPDLogEuclideanLoss("covariance", eps=1e-3)(s, t)
    want = np.mean([
        float(((np.real(scipy.linalg.logm(np.cov(s[b].numpy(), rowvar=False) + 1e-3 * np.eye(3)))
                - np.real(scipy.linalg.logm(np.cov(t[b].numpy(), rowvar=False)
                                            + 1e-3 * np.eye(3)))) ** 2).sum())
        for b in range(2)
    ])
    assert float(got) == pytest.approx(want, rel=1e-8)


# --- bad input --------------------------------------------------------------------------------


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"not positive definite: smallest eigenvalue -1"):
        spd_log(torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)))
    nan = torch.eye(3, dtype=torch.float64)
    nan[0, 1] = nan[1, 0] = float("nan")
    with pytest.raises(ValueError, match="a has 2 NaN"):
        spd_log(nan)
    with pytest.raises(ValueError, match="not symmetric"):
        spd_log(torch.tensor([[2.0, 1.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="square matrices"):
        spd_log(torch.ones(2, 3))
    with pytest.raises(ValueError, match="float32 or float64"):
        spd_log(torch.eye(2, dtype=torch.float16))
    with pytest.raises(ValueError, match="kind must be 'gram' or 'covariance'"):
        spd_matrix(torch.randn(2, 3, 4), kind="corr")
    with pytest.raises(ValueError, match="N >= 2"):
        spd_matrix(torch.randn(2, 1, 4), kind="covariance")
    with pytest.raises(ValueError, match="same shape"):
        log_euclidean_distance(torch.eye(2), torch.eye(3))
    loss_fn = SPDLogEuclideanLoss("gram")
    with pytest.raises(ValueError, match="N=5 tokens and the teacher N=6"):
        loss_fn(torch.randn(2, 5, 4), torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="B=2 images, teacher B=3"):
        loss_fn(torch.randn(2, 5, 4), torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="D=4 and the teacher D=8"):
        SPDLogEuclideanLoss("covariance")(torch.randn(2, 5, 4), torch.randn(2, 5, 8))
    tokens = torch.randn(2, 5, 4)
    tokens[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="student_tokens has 0 NaN and 1 infinite"):
        loss_fn(tokens, torch.randn(2, 5, 4))
