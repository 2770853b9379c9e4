"""dinolab.models.vit: official key layout, shapes, position-embedding interpolation, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinolab.models import count_parameters
from dinolab.models.vit import (
    VisionTransformer,
    ViTBackbone,
    drop_path,
    interpolate_pos_embed,
    vit_base,
    vit_course,
    vit_large,
    vit_small,
    vit_tiny,
)

D, HEADS, PATCH, IMG = 32, 4, 8, 32  # a tiny ViT: 4x4 = 16 patches


def tiny_vit(**kw) -> VisionTransformer:
    kw = {"img_size": IMG, "patch_size": PATCH, "embed_dim": D, "depth": 2, "num_heads": HEADS,
          **kw}
    return VisionTransformer(**kw).eval()


def expected_param_count(dim: int, depth: int, patch: int, img: int, ls: bool = False,
                         registers: int = 0) -> int:
    """Parameters of a ViT written out by hand (patch conv, tokens, blocks, final norm)."""
    n = (img // patch) ** 2
    patch_embed = dim * 3 * patch * patch + dim
    tokens = dim + (1 + n) * dim + dim + registers * dim  # cls, pos, mask_token, registers
    block = (
        2 * dim  # norm1
        + 3 * dim * dim + 3 * dim  # qkv with bias
        + dim * dim + dim  # proj
        + 2 * dim  # norm2
        + 4 * dim * dim + 4 * dim  # fc1
        + 4 * dim * dim + dim  # fc2
        + (2 * dim if ls else 0)  # ls1.gamma, ls2.gamma
    )
    return patch_embed + tokens + depth * block + 2 * dim


@pytest.mark.parametrize(
    "factory, dim, depth, heads",
    [(vit_tiny, 192, 12, 3), (vit_small, 384, 12, 6), (vit_base, 768, 12, 12),
     (vit_large, 1024, 24, 16), (vit_course, 128, 4, 4)],
)
def test_factory_sizes_and_parameter_counts(factory, dim, depth, heads):
    # Built on the meta device: the shapes are real, no memory is allocated (ViT-L: 303 M).
    with torch.device("meta"):
        model = factory()
    patch, img = (8, 32) if factory is vit_course else (16, 224)
    assert (model.embed_dim, len(model.blocks), model.num_heads) == (dim, depth, heads)
    assert model.patch_size == patch and model.pos_embed.shape == (1, 1 + (img // patch) ** 2, dim)
    assert model.blocks[0].mlp.fc1.out_features == 4 * dim  # mlp_ratio 4
    assert model.norm.eps == 1e-6
    assert count_parameters(model) == expected_param_count(dim, depth, patch, img)


@pytest.mark.parametrize("factory, dim", [(vit_tiny, 192), (vit_small, 384), (vit_course, 128)])
def test_forward_on_small_inputs(factory, dim):
    model = factory(patch_size=16, img_size=224) if factory is not vit_course else factory()
    model.eval()
    x = torch.randn(2, 3, 32, 32)  # far from 224: the position embeddings are interpolated
    with torch.no_grad():
        assert model(x).shape == (2, dim)


def test_official_key_names_and_shapes():
    """Keys of REFERENCE.md section 9 (DINO v1) plus DINOv2's mask_token, nothing else."""
    model = tiny_vit()
    n = (IMG // PATCH) ** 2
    expected = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, 1 + n, D),
        "mask_token": (1, D),
        "patch_embed.proj.weight": (D, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (D,),
        "norm.weight": (D,),
        "norm.bias": (D,),
    }
    for i in range(2):
        expected |= {
            f"blocks.{i}.norm1.weight": (D,),
            f"blocks.{i}.norm1.bias": (D,),
            f"blocks.{i}.attn.qkv.weight": (3 * D, D),
            f"blocks.{i}.attn.qkv.bias": (3 * D,),
            f"blocks.{i}.attn.proj.weight": (D, D),
            f"blocks.{i}.attn.proj.bias": (D,),
            f"blocks.{i}.norm2.weight": (D,),
            f"blocks.{i}.norm2.bias": (D,),
            f"blocks.{i}.mlp.fc1.weight": (4 * D, D),
            f"blocks.{i}.mlp.fc1.bias": (4 * D,),
            f"blocks.{i}.mlp.fc2.weight": (D, 4 * D),
            f"blocks.{i}.mlp.fc2.bias": (D,),
        }
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


def test_dinov2_extras_layerscale_and_registers():
    model = tiny_vit(init_values=1e-5, num_register_tokens=4)
    sd = model.state_dict()
    assert sd["register_tokens"].shape == (1, 4, D)
    for i in range(2):
        for name in ("ls1", "ls2"):
            gamma = sd[f"blocks.{i}.{name}.gamma"]
            assert gamma.shape == (D,) and torch.all(gamma == 1e-5)
    assert sd["pos_embed"].shape == (1, 1 + 16, D)  # registers get no position embedding
    assert count_parameters(model) == expected_param_count(D, 2, PATCH, IMG, ls=True, registers=4)
    assert not any("ls1" in k or "register" in k for k in tiny_vit().state_dict())


def test_registers_sit_after_cls_without_position_embedding():
    model = tiny_vit(num_register_tokens=3)
    with torch.no_grad():
        model.register_tokens.copy_(torch.randn(1, 3, D))
        tokens = model.prepare_tokens(torch.randn(2, 3, IMG, IMG))
    assert tokens.shape == (2, 1 + 3 + 16, D)
    torch.testing.assert_close(tokens[:, 1:4], model.register_tokens.expand(2, -1, -1),
                               rtol=0, atol=0)
    attn = model.get_last_selfattention(torch.randn(2, 3, IMG, IMG))
    assert attn.shape == (2, HEADS, 20, 20)
    feats = model.forward_features(torch.randn(2, 3, IMG, IMG))
    assert feats["x_norm_patchtokens"].shape == (2, 16, D)
    assert feats["x_norm_regtokens"].shape == (2, 3, D)


def _reference_interpolation(pos_embed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """REFERENCE.md section 9 written out: keep CLS, bicubic with ((rows+0.1)/M, (cols+0.1)/M)."""
    m = int(math.sqrt(pos_embed.shape[1] - 1))
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / m, (cols + 0.1) / m), mode="bicubic")
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], 1)


@pytest.mark.parametrize("h, w", [(16, 16), (16, 24), (48, 40), (8, 8)])
def test_pos_embed_interpolation_matches_reference(h, w):
    model = tiny_vit()
    want = _reference_interpolation(model.pos_embed.detach(), h // PATCH, w // PATCH)
    got = model.interpolate_pos_encoding(None, h, w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)  # same float32 ops
    # The forward really adds those embeddings: rows follow the image height.
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        tokens = model.prepare_tokens(x)
        patches = model.patch_embed(x)
    manual = torch.cat([model.cls_token, patches], 1) + want
    torch.testing.assert_close(tokens, manual, rtol=0, atol=1e-6)


def test_pos_embed_same_grid_is_returned_unchanged():
    model = tiny_vit()
    assert model.interpolate_pos_encoding(None, IMG, IMG) is model.pos_embed
    pe = torch.randn(1, 1 + 9, 5)
    assert interpolate_pos_embed(pe, (3, 3)) is pe


def test_interpolate_pos_embed_rejects_non_square_grids():
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(torch.randn(1, 1 + 10, 4), (2, 2))
    with pytest.raises(ValueError, match=r"\[1, T, D\]"):
        interpolate_pos_embed(torch.randn(2, 17, 4), (2, 2))


def test_mask_token_replaces_patches_before_pos_embed():
    model = tiny_vit()
    with torch.no_grad():
        model.mask_token.copy_(torch.randn(1, D))
    x = torch.randn(3, 3, IMG, IMG)
    masks = torch.zeros(3, 16, dtype=torch.bool)
    masks[0, [0, 5, 7]] = True
    masks[2, :] = True
    with torch.no_grad():
        tokens = model.prepare_tokens(x, masks)
        patches = model.patch_embed(x)
    patches[masks] = model.mask_token.detach().expand(int(masks.sum()), D)
    manual = torch.cat([model.cls_token.detach().expand(3, -1, -1), patches], 1) + model.pos_embed
    torch.testing.assert_close(tokens, manual, rtol=0, atol=1e-6)

    # A fully masked image carries no information about its pixels.
    with torch.no_grad():
        a = model.forward_features(torch.randn(1, 3, IMG, IMG), torch.ones(1, 16, dtype=bool))
        b = model.forward_features(torch.randn(1, 3, IMG, IMG), torch.ones(1, 16, dtype=bool))
    torch.testing.assert_close(a["x_norm_clstoken"], b["x_norm_clstoken"], rtol=0, atol=1e-6)
    assert a["masks"].shape == (1, 16)


def test_masks_of_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"masks must have shape \[B, N\] = \[2, 16\]"):
        tiny_vit().forward_features(torch.randn(2, 3, IMG, IMG), torch.zeros(2, 15, dtype=bool))


def test_forward_features_agree_with_forward_and_intermediate_layers():
    model = tiny_vit()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        feats = model.forward_features(x)
        cls = model(x)
        layers = model.get_intermediate_layers(x, n=2)
    assert feats["x_norm_clstoken"].shape == (2, D)
    assert feats["x_norm_patchtokens"].shape == (2, 16, D)
    assert feats["x_prenorm"].shape == (2, 17, D) and feats["masks"] is None
    torch.testing.assert_close(feats["x_norm_clstoken"], cls, rtol=0, atol=0)
    torch.testing.assert_close(model.norm(feats["x_prenorm"]), torch.cat(
        [cls[:, None], feats["x_norm_patchtokens"]], 1), rtol=0, atol=0)
    assert len(layers) == 2 and all(t.shape == (2, 17, D) for t in layers)
    torch.testing.assert_close(layers[-1][:, 0], cls, rtol=0, atol=0)
    # The first returned layer is the output of block 0 (depth 2), normalised.
    with torch.no_grad():
        first = model.norm(model.blocks[0](model.prepare_tokens(x)))
    torch.testing.assert_close(layers[0], first, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"n must be in \[1, 2\], got 3"):
        model.get_intermediate_layers(x, n=3)


def test_attention_rows_sum_to_one_and_match_the_fused_path():
    model = tiny_vit()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        attn = model.get_last_selfattention(x)
        assert attn.shape == (2, HEADS, 17, 17)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, HEADS, 17), rtol=0, atol=1e-5)
        assert torch.all(attn >= 0)
        # The explicit map and scaled_dot_product_attention give the same block output.
        tokens = torch.randn(2, 17, D)
        explicit, _ = model.blocks[0].attn(tokens, return_attention=True)
        fused = model.blocks[0].attn(tokens)
    torch.testing.assert_close(explicit, fused, rtol=0, atol=1e-5)  # float32 summation order


def test_stochastic_depth_rates_and_eval_identity():
    model = tiny_vit(depth=5, drop_path_rate=0.4)
    rates = [blk.drop_path.drop_prob for blk in model.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.4, 5), rtol=0, atol=1e-12)
    plain = tiny_vit(depth=5)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # eval: identity
        model.train()
        assert not torch.allclose(model(x), model(x))  # train: random per call


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
    x = torch.ones(1000, 3, 2)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.reshape(1000, -1)
    kept = per_sample[:, 0] != 0
    assert torch.all(per_sample[kept] == 1 / 0.75) and torch.all(per_sample[~kept] == 0)
    assert 0.65 < kept.float().mean() < 0.85  # Bernoulli(0.75) over 1000 samples
    assert drop_path(x, 0.25, training=False) is x


def test_init_is_truncated_normal_002():
    model = tiny_vit(depth=4)
    w = torch.cat([blk.mlp.fc1.weight.flatten() for blk in model.blocks])
    assert abs(w.std().item() - 0.02) < 0.002  # 16384 draws of N(0, .02) cut at +-2
    assert all(torch.all(blk.attn.qkv.bias == 0) for blk in model.blocks)
    assert torch.all(model.mask_token == 0)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="not a multiple of patch_size=8"):
        tiny_vit()(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        tiny_vit()(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="img_size=30 must be a positive multiple of"):
        VisionTransformer(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        VisionTransformer(img_size=32, patch_size=8, embed_dim=30, num_heads=4)


def test_alias_and_official_list_img_size():
    assert ViTBackbone is VisionTransformer
    model = VisionTransformer(img_size=[32], patch_size=8, embed_dim=16, depth=1, num_heads=2)
    assert model.pos_embed.shape == (1, 17, 16)
