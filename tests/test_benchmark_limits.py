"""benchmarks/limits.py and run.py's Reference: the FLOP counts and fractions RESULTS.md reports.

Counts only; no timing is asserted anywhere (goals are targets, not tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from limits import GemmReplay, count_flops, profile_breakdown  # noqa: E402
from run import Reference  # noqa: E402


def test_a_linear_layer_counts_two_m_n_k_forward_and_three_times_with_backward():
    m, k, n = 6, 5, 4
    layer = nn.Linear(k, n)
    x = torch.randn(m, k, requires_grad=True)
    total, by_op = count_flops(lambda: layer(x))
    assert total == 2 * m * n * k and set(by_op) == {"addmm"}
    total, _ = count_flops(lambda: layer(x).sum().backward())
    assert total == 3 * 2 * m * n * k  # forward, grad of the input, grad of the weight


def test_the_replay_runs_the_same_products_as_the_call():
    layer = nn.Linear(5, 4)
    x = torch.randn(6, 5, requires_grad=True)

    def call() -> None:
        layer(x).sum().backward()

    replay = GemmReplay(call)
    flops, _ = count_flops(call)
    assert replay.calls == 3 and replay.flops == flops
    replay()  # runs on its own tensors
    assert replay.largest(1)[0].startswith(("mm", "addmm"))


def test_cpu_attention_counts_its_two_matrix_products():
    b, h, n, d = 2, 3, 5, 8
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    total, _ = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert total == 2 * (2 * b * h * n * n * d)  # q k^T, then (softmax) v


def test_profile_groups_cover_the_whole_time():
    layer = nn.Linear(32, 32)
    x = torch.randn(64, 32)
    shares = dict(profile_breakdown(lambda: F.gelu(layer(x)), calls=1))
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    assert "matrix products" in shares and "GELU" in shares


def test_reference_fraction_and_status():
    ref = Reference(what="bandwidth", unit="GB/s", rate=20.0, achieved=19.0, goal=0.9)
    assert ref.fraction == 0.95 and ref.status() == "met"
    assert Reference("x", "GB/s", 20.0, 10.0, 0.9).status() == "NOT met"
    assert Reference("x", "images/s", 10.0, 12.0).status() == "reported"
