"""dinolab.models.heads: the official DINO head, its keys, its weight norm and its outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from dinolab.models.heads import DINOHead, WeightNormLinear

IN, K, HID, BOT = 16, 40, 32, 8


def small_head(**kw) -> DINOHead:
    return DINOHead(IN, K, hidden_dim=HID, bottleneck_dim=BOT, **kw)


def test_default_sizes_follow_official_dino():
    head = DINOHead(24, 100)  # hidden 2048, bottleneck 256, 3 layers, no BN
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (2048, 24), "mlp.0.bias": (2048,),
        "mlp.2.weight": (2048, 2048), "mlp.2.bias": (2048,),
        "mlp.4.weight": (256, 2048), "mlp.4.bias": (256,),
        "last_layer.weight_g": (100, 1), "last_layer.weight_v": (100, 256),
    }
    assert isinstance(head.mlp[1], nn.GELU) and isinstance(head.mlp[3], nn.GELU)


def test_batchnorm_layout_and_single_layer_head():
    bn = small_head(use_bn=True)
    linear_at = [i for i, m in enumerate(bn.mlp) if isinstance(m, nn.Linear)]
    assert linear_at == [0, 3, 6]
    assert isinstance(bn.mlp[1], nn.BatchNorm1d) and isinstance(bn.mlp[2], nn.GELU)
    one = small_head(nlayers=1)
    assert set(one.state_dict()) == {"mlp.weight", "mlp.bias", "last_layer.weight_g",
                                     "last_layer.weight_v"}
    assert one(torch.randn(3, IN)).shape == (3, K)
    four = small_head(nlayers=4)
    assert sum(isinstance(m, nn.Linear) for m in four.mlp) == 4


def test_forward_equals_the_formula_written_out():
    head = small_head()
    x = torch.randn(5, IN)
    h = x
    for i in (0, 2):
        h = F.gelu(h @ head.mlp[i].weight.T + head.mlp[i].bias)
    z = h @ head.mlp[4].weight.T + head.mlp[4].bias
    z = z / z.norm(dim=1, keepdim=True)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    w = g * v / v.norm(dim=1, keepdim=True)
    want = z @ w.T
    torch.testing.assert_close(head(x), want, rtol=0, atol=1e-6)  # float32 rounding


def test_outputs_are_logits_not_unit_vectors():
    head = small_head()
    out = head(torch.randn(8, IN))
    norms = out.norm(dim=1)
    assert torch.all((norms - 1).abs() > 1e-3), norms  # seed mistake 2: not L2-normalised
    # With a frozen unit gain each output is a cosine between the bottleneck and a prototype.
    assert torch.all(out.abs() <= 1 + 1e-6)


def test_norm_last_layer_freezes_the_gain_at_one():
    frozen, free = small_head(norm_last_layer=True), small_head(norm_last_layer=False)
    for head in (frozen, free):
        assert torch.all(head.last_layer.weight_g == 1)
    assert not frozen.last_layer.weight_g.requires_grad
    assert free.last_layer.weight_g.requires_grad
    for head in (frozen, free):
        head(torch.randn(4, IN)).pow(2).sum().backward()
    assert frozen.last_layer.weight_g.grad is None
    assert free.last_layer.weight_g.grad is not None
    assert frozen.last_layer.weight_v.grad is not None


def test_weight_norm_linear_matches_torch_parametrization():
    ours = WeightNormLinear(BOT, K)
    ref = weight_norm(nn.Linear(BOT, K, bias=False))
    with torch.no_grad():
        ours.weight_g.copy_(torch.rand(K, 1) + 0.5)
        ours.weight_v.copy_(torch.randn(K, BOT))
        ref.parametrizations.weight.original0.copy_(ours.weight_g)
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
    x = torch.randn(6, BOT)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.weight.norm(dim=1, keepdim=True), ours.weight_g,
                               rtol=1e-6, atol=0)


def test_weight_norm_linear_starts_equal_to_its_direction():
    layer = WeightNormLinear(BOT, K)
    torch.testing.assert_close(layer.weight, layer.weight_v, rtol=1e-6, atol=1e-7)


def test_init_truncated_normal_and_zero_bias():
    head = DINOHead(64, 10, hidden_dim=256, bottleneck_dim=32)
    w = head.mlp[2].weight  # 65536 draws
    assert abs(w.std().item() - 0.02) < 0.001
    assert all(torch.all(m.bias == 0) for m in head.mlp if isinstance(m, nn.Linear))


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="nlayers must be >= 1, got 0"):
        small_head(nlayers=0)
    with pytest.raises(ValueError, match="out_dim must be a positive integer, got 0"):
        DINOHead(IN, 0)
    with pytest.raises(ValueError, match=r"expected input \[B, 16\], got shape \(4, 15\)"):
        small_head()(torch.randn(4, 15))
