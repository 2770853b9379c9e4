"""dinolab.models.dinov3: DINOv3 files written here from the published facts, loaded back and
compared with a reference computed independently, by the formulas, in float64.

The files are tiny (width 32, 2 blocks, heads of width 16: 4 RoPE periods, 8-px patches) but
in the official key layout, with every tensor away from its initial value: LayerScale, storage
tokens, qkv biases (key part included, which the mask must cancel), norms, and RoPE periods
that are NOT the default ones (so a loader that recomputed them would fail).
"""

from __future__ import annotations

import math

import pytest
import torch

import dinolab.models
from dinolab.models import (
    DINOV3_SIZES,
    DINOv3ViT,
    VisionTransformer,
    dinov3_vits16,
    dinov3_vits16plus,
    load_backbone,
    load_pretrained,
)
from dinolab.models.dinov3 import dinov3_options, dinov3_size_name, swiglu_hidden_dim

DIM, DEPTH, HEADS, PATCH, STORAGE = 32, 2, 2, 8, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def default_periods(head_dim: int) -> torch.Tensor:
    quarter = head_dim // 4
    return torch.tensor([100.0 ** (k / quarter) for k in range(quarter)])


def official_state(
    ffn: str = "mlp", dim: int = DIM, depth: int = DEPTH, heads: int = HEADS, seed: int = 0,
    periods: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """A DINOv3 backbone state dict in the official layout, every tensor random."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    head_dim = dim // heads
    if periods is None:  # bf16-rounded like the releases, and far from the defaults
        periods = (default_periods(head_dim) * 1.37).to(torch.bfloat16)
    s = {
        "cls_token": r(1, 1, dim, scale=1.0),
        "storage_tokens": r(1, STORAGE, dim, scale=1.0),
        "mask_token": r(1, dim),
        "patch_embed.proj.weight": r(dim, 3, PATCH, PATCH, scale=0.05),
        "patch_embed.proj.bias": r(dim),
        "rope_embed.periods": periods,
        "norm.weight": 1.0 + r(dim),
        "norm.bias": r(dim),
    }
    hidden = 4 * dim if ffn == "mlp" else swiglu_hidden_dim(dim, 6.0)
    for i in range(depth):
        b = f"blocks.{i}."
        s |= {
            b + "norm1.weight": 1.0 + r(dim), b + "norm1.bias": r(dim),
            b + "attn.qkv.weight": r(3 * dim, dim, scale=dim**-0.5),
            b + "attn.qkv.bias": r(3 * dim, scale=0.5),
            b + "attn.qkv.bias_mask": torch.cat(
                [torch.ones(dim), torch.zeros(dim), torch.ones(dim)]),
            b + "attn.proj.weight": r(dim, dim, scale=dim**-0.5), b + "attn.proj.bias": r(dim),
            b + "ls1.gamma": 0.5 + torch.rand(dim, generator=g),
            b + "norm2.weight": 1.0 + r(dim), b + "norm2.bias": r(dim),
            b + "ls2.gamma": 0.5 + torch.rand(dim, generator=g),
        }
        if ffn == "mlp":
            s |= {b + "mlp.fc1.weight": r(hidden, dim, scale=dim**-0.5),
                  b + "mlp.fc1.bias": r(hidden),
                  b + "mlp.fc2.weight": r(dim, hidden, scale=hidden**-0.5),
                  b + "mlp.fc2.bias": r(dim)}
        else:
            s |= {b + "mlp.w1.weight": r(hidden, dim, scale=dim**-0.5),
                  b + "mlp.w1.bias": r(hidden),
                  b + "mlp.w2.weight": r(hidden, dim, scale=dim**-0.5),
                  b + "mlp.w2.bias": r(hidden),
                  b + "mlp.w3.weight": r(dim, hidden, scale=hidden**-0.5),
                  b + "mlp.w3.bias": r(dim)}
    return s


# ------------------------------------------------------------------ the reference, in float64
def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def _rotate_pairs(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate channel c with channel c + d/2 by angle theta[n, c]: z [B, h, N, d]."""
    half = z.shape[-1] // 2
    a, b = z[..., :half], z[..., half:]
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def reference(
    state: dict[str, torch.Tensor], x: torch.Tensor, heads: int = HEADS
) -> dict[str, object]:
    """DINOv3's forward pass by the formulas: normed tokens, each block's, last attention."""
    sd = {k: v.double() for k, v in state.items()}
    x = x.double()
    weight = sd["patch_embed.proj.weight"]
    dim, p = weight.shape[0], weight.shape[-1]
    bsz, _, height, width = x.shape
    gh, gw = height // p, width // p
    pieces = x.unfold(2, p, p).unfold(3, p, p)  # [B, 3, gh, gw, p, p], row-major patches
    pieces = pieces.permute(0, 2, 3, 1, 4, 5).reshape(bsz, gh * gw, -1)
    patches = pieces @ weight.reshape(dim, -1).T + sd["patch_embed.proj.bias"]
    prefix = torch.cat([sd["cls_token"], sd["storage_tokens"]], dim=1).expand(bsz, -1, -1)
    t = torch.cat([prefix, patches], dim=1)
    n_prefix = prefix.shape[1]

    periods = sd["rope_embed.periods"]
    quarter = periods.numel()
    theta = torch.zeros(gh * gw, 2 * quarter, dtype=torch.float64)
    for i in range(gh):
        for j in range(gw):
            y, xc = 2 * (i + 0.5) / gh - 1, 2 * (j + 0.5) / gw - 1
            for c in range(quarter):
                theta[i * gw + j, c] = 2 * math.pi * y / periods[c]
                theta[i * gw + j, quarter + c] = 2 * math.pi * xc / periods[c]

    def rope(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z[:, :, :n_prefix], _rotate_pairs(z[:, :, n_prefix:], theta)], dim=2)

    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    per_block, attn = [], None
    for i in blocks:
        b = f"blocks.{i}."
        y = _layer_norm(t, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        bias = sd[b + "attn.qkv.bias"] * sd[b + "attn.qkv.bias_mask"]
        qkv = y @ sd[b + "attn.qkv.weight"].T + bias
        q, k, v = (z.reshape(bsz, -1, heads, dim // heads).transpose(1, 2)
                   for z in qkv.split(dim, dim=-1))
        q, k = rope(q), rope(k)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bsz, -1, dim)
        proj = out @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        t = t + sd[b + "ls1.gamma"] * proj
        y = _layer_norm(t, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
        if b + "mlp.fc1.weight" in sd:
            hid = y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
            hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
            mlp = hid @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        else:
            g1 = y @ sd[b + "mlp.w1.weight"].T + sd[b + "mlp.w1.bias"]
            g2 = y @ sd[b + "mlp.w2.weight"].T + sd[b + "mlp.w2.bias"]
            mlp = (g1 * torch.sigmoid(g1) * g2) @ sd[b + "mlp.w3.weight"].T + sd[b + "mlp.w3.bias"]
        t = t + sd[b + "ls2.gamma"] * mlp
        per_block.append(_layer_norm(t, sd["norm.weight"], sd["norm.bias"]))
    return {"normed": per_block[-1], "per_block": per_block, "attn": attn,
            "n_prefix": n_prefix}


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 2e-4) -> None:
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=atol)


def write(tmp_path, state, name: str = "dinov3_pretrain.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_official_file_loads_and_matches_the_reference(tmp_path, ffn, size):
    state = official_state(ffn)
    model = load_backbone(write(tmp_path, state))
    assert isinstance(model, DINOv3ViT) and not model.training
    assert (model.embed_dim, model.num_heads, model.patch_size) == (DIM, HEADS, PATCH)
    assert model.n_storage_tokens == model.num_register_tokens == STORAGE
    assert type(model.blocks[0].mlp).__name__ == ("Mlp" if ffn == "mlp" else "SwiGLUFFN")
    # The periods come from the file (bf16-rounded, scaled), not recomputed.
    assert torch.equal(model.rope_embed.periods, state["rope_embed.periods"].float())
    x = torch.randn(2, 3, *size)
    ref = reference(state, x)
    with torch.no_grad():
        out = model.forward_features(x)
        cls = model(x)
    n = 1 + STORAGE
    close(cls, ref["normed"][:, 0])
    close(out["x_norm_clstoken"], ref["normed"][:, 0])
    close(out["x_storage_tokens"], ref["normed"][:, 1:n])
    close(out["x_norm_patchtokens"], ref["normed"][:, n:])
    assert out["x_norm_patchtokens"].shape == (2, (size[0] // 8) * (size[1] // 8), DIM)


def test_the_reference_would_catch_recomputed_periods_or_an_unmasked_key_bias(tmp_path):
    state = official_state()
    x = torch.randn(1, 3, 24, 40)
    expected = reference(state, x)["normed"]
    model = load_backbone(write(tmp_path, state))
    with torch.no_grad():
        close(model(x), expected[:, 0])
        model.rope_embed.periods.copy_(default_periods(DIM // HEADS))
        assert (model(x).double() - expected[:, 0]).abs().max() > 1e-3
        model.rope_embed.periods.copy_(state["rope_embed.periods"].float())
        model.blocks[0].attn.qkv.bias_mask.fill_(1.0)
        assert (model(x).double() - expected[:, 0]).abs().max() > 1e-3


def test_last_selfattention_is_the_reference_attention_and_feeds_cls_attention(tmp_path):
    from dinolab.eval.attention import cls_attention

    state = official_state()
    model = load_backbone(write(tmp_path, state))
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        attn = model.get_last_selfattention(x)
    ref = reference(state, x)["attn"]
    assert attn.shape == (2, HEADS, 1 + STORAGE + 15, 1 + STORAGE + 15)
    close(attn, ref, atol=1e-5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, HEADS, 20))
    maps = cls_attention(model, x)  # CLS -> patches only: the 4 storage tokens skipped
    assert maps.shape == (2, HEADS, 3, 5)
    close(maps, ref[:, :, 0, 1 + STORAGE:].reshape(2, HEADS, 3, 5), atol=1e-5)


def test_attention_jaccard_and_pca_features_work_on_a_dinov3_model(tmp_path):
    from dinolab.eval.attention import attention_jaccard, patch_features, pca_colors

    state = official_state()
    model = load_backbone(write(tmp_path, state))
    x = torch.randn(3, 3, 24, 40)
    masks = torch.zeros(3, 24, 40, dtype=torch.bool)
    masks[:, 8:16, 8:24] = True
    result = attention_jaccard(model, x, masks)
    assert 0.0 <= result.mean_map <= 1.0 and result.per_head.shape == (HEADS,)
    feats = patch_features(model, x)  # the storage tokens left out
    assert feats.shape == (3, 3, 5, DIM)
    close(feats.flatten(1, 2), reference(state, x)["normed"][:, 1 + STORAGE:])
    colors, _ = pca_colors(feats)
    assert colors.shape[:3] == (3, 3, 5)


def test_get_intermediate_layers_as_official(tmp_path):
    state = official_state()
    model = load_backbone(write(tmp_path, state))
    x = torch.randn(2, 3, 24, 40)
    ref = reference(state, x)["per_block"]
    n = 1 + STORAGE
    with torch.no_grad():
        patches = model.get_intermediate_layers(x, n=2)
        first = model.get_intermediate_layers(x, n=[0], reshape=True, return_class_token=True,
                                              return_extra_tokens=True)
    assert isinstance(patches, tuple) and len(patches) == 2
    for got, want in zip(patches, ref, strict=True):
        close(got, want[:, n:])
    (maps, cls, storage), = first
    assert maps.shape == (2, DIM, 3, 5)
    close(maps.flatten(2).transpose(1, 2), ref[0][:, n:])
    close(cls, ref[0][:, 0])
    close(storage, ref[0][:, 1:n])
    with pytest.raises(ValueError, match=r"n=3 must be in \[1, 2\]"):
        model.get_intermediate_layers(x, n=3)
    with pytest.raises(TypeError):  # keyword-only as official: no DINO v1-style call
        model.get_intermediate_layers(x, 2)


def test_released_sizes_have_the_official_keys_and_shapes():
    small = dinov3_vits16().state_dict()
    expected = {
        "cls_token": (1, 1, 384), "storage_tokens": (1, 4, 384), "mask_token": (1, 384),
        "patch_embed.proj.weight": (384, 3, 16, 16), "rope_embed.periods": (16,),
        "blocks.11.attn.qkv.bias_mask": (1152,), "blocks.0.ls1.gamma": (384,),
        "blocks.0.mlp.fc1.weight": (1536, 384), "norm.weight": (384,),
    }
    for key, shape in expected.items():
        assert tuple(small[key].shape) == shape, key
    assert "pos_embed" not in small and "blocks.12.norm1.weight" not in small
    per_block = {k.split(".", 2)[2] for k in small if k.startswith("blocks.0.")}
    assert per_block == {
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.qkv.bias_mask",
        "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma",
    }
    torch.testing.assert_close(small["rope_embed.periods"], default_periods(64))
    mask = small["blocks.0.attn.qkv.bias_mask"]
    assert mask[:384].eq(1).all() and mask[384:768].eq(0).all() and mask[768:].eq(1).all()
    plus = dinov3_vits16plus().state_dict()
    assert tuple(plus["blocks.0.mlp.w1.weight"].shape) == (1536, 384)  # 2/3 * 6 * 384
    assert tuple(plus["blocks.0.mlp.w3.weight"].shape) == (384, 1536)
    assert swiglu_hidden_dim(1280, 6.0) == 5120 and swiglu_hidden_dim(100, 6.0) == 400


def test_a_teacher_of_another_size_runs_on_any_multiple_of_the_patch():
    model = DINOv3ViT(patch_size=4, embed_dim=32, depth=1, num_heads=2).eval()
    for size in [(4, 4), (12, 20), (36, 8)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 32)


@pytest.mark.parametrize("size", [(30, 32), (32, 4), (3, 8)])
def test_an_image_that_is_no_multiple_of_the_patch_is_refused(size):
    model = DINOv3ViT(patch_size=8, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]} px is not a multiple of "
                                         r"patch_size=8"):
        model(torch.randn(1, 3, *size))


def test_a_file_with_a_tensor_missing_is_refused_naming_it(tmp_path):
    state = official_state()
    del state["blocks.1.ls2.gamma"]
    with pytest.raises(ValueError, match=r"no tensor for 1 .*'blocks\.1\.ls2\.gamma'"):
        load_backbone(write(tmp_path, state))
    state = official_state()
    del state["blocks.0.attn.qkv.bias"]
    with pytest.raises(ValueError, match=r"no blocks\.0\.attn\.qkv\.bias"):
        load_backbone(write(tmp_path, state))
    state = official_state()
    state["blocks.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"no place for.*blocks\.0\.extra\.weight"):
        load_backbone(write(tmp_path, state))


def test_vit_7b_is_refused_clearly(tmp_path):
    # The 7B's distinguishing tensors, at its real width (only a few small ones are written).
    state = {
        "storage_tokens": torch.zeros(1, 4, 4096),
        "patch_embed.proj.weight": torch.zeros(4096, 3, 16, 16),
        "rope_embed.periods": torch.ones(32),
        "blocks.0.attn.qkv.weight": torch.zeros(1, 1),
    }
    with pytest.raises(ValueError, match=r"ViT-7B \(width 4096\).*dinov3_vith16plus"):
        load_backbone(write(tmp_path, state))


def test_load_backbone_checks_arch_patch_and_heads_against_the_file(tmp_path):
    path = write(tmp_path, official_state())
    with pytest.raises(ValueError, match="patch_size=16 contradicts"):
        load_backbone(path, patch_size=16)
    with pytest.raises(ValueError, match="arch='dinov3_vits16' contradicts"):
        load_backbone(path, arch="dinov3_vits16")
    with pytest.raises(ValueError, match="num_heads=4 contradicts"):
        load_backbone(path, num_heads=4)


@pytest.mark.parametrize("name", list(DINOV3_SIZES))
def test_each_released_size_is_read_back_from_its_tensors(name):
    with torch.device("meta"):  # shapes only: ViT-L and H+ are not allocated
        state = getattr(dinolab.models, name)().state_dict()
    opts = dinov3_options(state)
    dim, depth, heads, _, ffn = DINOV3_SIZES[name]
    assert (opts["embed_dim"], opts["depth"], opts["num_heads"], opts["ffn_layer"]) == (
        dim, depth, heads, ffn)
    assert opts["n_storage_tokens"] == 4 and opts["patch_size"] == 16
    assert dinov3_size_name(opts) == name


def test_a_training_checkpoint_teacher_entry_loads(tmp_path):
    state = official_state()
    ckpt = {"teacher": {"backbone." + k: v for k, v in state.items()},
            "iteration": 5}
    ckpt["teacher"]["dino_head.mlp.0.weight"] = torch.zeros(4, DIM)
    model = load_backbone(write(tmp_path, ckpt))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        close(model(x), reference(state, x)["normed"][:, 0])


def test_load_pretrained_fills_a_dinov3_model_and_refuses_a_plain_vit(tmp_path):
    state = official_state()
    path = write(tmp_path, state)
    model = DINOv3ViT(patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    missing, unexpected = load_pretrained(model, path, allow_missing=[])
    assert missing == [] and unexpected == []
    x = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        close(model.eval()(x), reference(state, x)["normed"][:, 0])
    # timm's layout: no periods (the model keeps its own, computed) and no mask token.
    fresh = DINOv3ViT(patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    timm_path = write(tmp_path, to_timm(state), "timm.pth")
    missing, unexpected = load_pretrained(fresh, timm_path, allow_missing=["mask_token"])
    assert missing == ["mask_token", "rope_embed.periods"] and unexpected == []
    torch.testing.assert_close(fresh.blocks[1].ls2.gamma, state["blocks.1.ls2.gamma"])
    plain = VisionTransformer(img_size=32, patch_size=PATCH, embed_dim=DIM, depth=DEPTH,
                              num_heads=HEADS)
    with pytest.raises(ValueError, match="is a DINOv3 ViT .*VisionTransformer cannot take it"):
        load_pretrained(plain, path)


def test_masks_replace_patches_by_the_mask_token(tmp_path):
    state = official_state()
    model = load_backbone(write(tmp_path, state))
    x = torch.randn(2, 3, 16, 16)
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 1] = True
    tokens, grid = model.prepare_tokens_with_masks(x, masks)
    assert grid == (2, 2)
    torch.testing.assert_close(tokens[0, 1 + STORAGE + 1], state["mask_token"][0])
    assert not torch.allclose(tokens[1, 1 + STORAGE + 1], state["mask_token"][0])
    with pytest.raises(ValueError, match=r"masks must have shape \[B, N\] = \[2, 4\]"):
        model.forward_features(x, masks[:, :3])


def test_rope_augmentations_act_only_in_training():
    model = DINOv3ViT(patch_size=4, embed_dim=32, depth=1, num_heads=2, rope_rescale_coords=2.0,
                      rope_shift_coords=0.1)
    x = torch.randn(1, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(x), model(x))


# ------------------------------------------------------------------ timm and transformers
def to_timm(state: dict[str, torch.Tensor], with_bias: bool = True) -> dict[str, torch.Tensor]:
    """timm's eva.py layout of an official state, as read from timm's checkpoint_filter_fn."""
    out = {}
    for k, v in state.items():
        if k.endswith((".periods", ".bias_mask")) or k == "mask_token":
            continue
        if k.endswith("attn.qkv.bias"):
            if with_bias:
                q, _, val = v.chunk(3)
                out[k.replace("qkv.bias", "q_bias")] = q
                out[k.replace("qkv.bias", "v_bias")] = val
            continue
        k = k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
        k = k.replace("storage_tokens", "reg_token")
        k = k.replace("mlp.w1", "mlp.fc1_g").replace("mlp.w2", "mlp.fc1_x")
        k = k.replace("mlp.w3", "mlp.fc2")
        out[k] = v
    return out


def to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' DINOv3ViTModel layout, as its conversion script maps the official one."""
    import re

    out = {}
    for k, v in state.items():
        if k.endswith((".periods", ".bias_mask")):
            continue
        if ".attn.qkv." in k:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3), strict=True):
                if not (name == "k_proj" and k.endswith("bias")):  # no key bias
                    new = re.sub(r"blocks\.(\d+)\.attn\.qkv", rf"layer.\1.attention.{name}", k)
                    out[new] = part
            continue
        if k == "mask_token":
            v = v.unsqueeze(1)
        for pattern, new in (
            (r"^cls_token", "embeddings.cls_token"), (r"^mask_token", "embeddings.mask_token"),
            (r"^storage_tokens", "embeddings.register_tokens"),
            (r"^patch_embed\.proj", "embeddings.patch_embeddings"),
            (r"blocks\.(\d+)\.attn\.proj", r"layer.\1.attention.o_proj"),
            (r"blocks\.(\d+)\.ls(\d)\.gamma", r"layer.\1.layer_scale\2.lambda1"),
            (r"blocks\.(\d+)\.mlp\.fc1", r"layer.\1.mlp.up_proj"),
            (r"blocks\.(\d+)\.mlp\.fc2", r"layer.\1.mlp.down_proj"),
            (r"blocks\.(\d+)\.mlp\.w1", r"layer.\1.mlp.gate_proj"),
            (r"blocks\.(\d+)\.mlp\.w2", r"layer.\1.mlp.up_proj"),
            (r"blocks\.(\d+)\.mlp\.w3", r"layer.\1.mlp.down_proj"),
            (r"blocks\.(\d+)\.norm", r"layer.\1.norm"),
        ):
            k = re.sub(pattern, new, k)
        out[k] = v
    return out


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
@pytest.mark.parametrize("layout", ["timm", "transformers"])
def test_timm_and_transformers_layouts_give_the_official_network(tmp_path, ffn, layout):
    # Neither stores the periods: they compute the defaults, so compare with those.
    state = official_state(ffn, heads=HEADS, periods=default_periods(DIM // HEADS))
    other = to_timm(state) if layout == "timm" else to_transformers(state)
    assert "rope_embed.periods" not in other
    official = load_backbone(write(tmp_path, state, "official.pth"))
    model = load_backbone(write(tmp_path, other, f"{layout}.pth"), num_heads=HEADS)
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        for key in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens"):
            torch.testing.assert_close(model.forward_features(x)[key],
                                       official.forward_features(x)[key], rtol=0, atol=1e-5)
        close(model(x), reference(state, x)["normed"][:, 0])


def test_a_transformers_safetensors_file_loads(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = official_state("swiglu", periods=default_periods(DIM // HEADS))
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(to_transformers(state), path)
    model = load_backbone(path, num_heads=HEADS)
    x = torch.randn(1, 3, 16, 32)
    with torch.no_grad():
        close(model(x), reference(state, x)["normed"][:, 0])
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        load_backbone(path)


def test_foreign_layout_files_missing_a_tensor_or_with_extra_ones_are_refused(tmp_path):
    state = official_state(periods=default_periods(DIM // HEADS))
    hf = to_transformers(state)
    del hf["layer.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match=r"transformers key layout.*'blocks\.1\.mlp\.fc2\.weight'"):
        load_backbone(write(tmp_path, hf), num_heads=HEADS)
    timm_state = to_timm(state)
    timm_state["blocks.0.attn.q_norm.weight"] = torch.ones(DIM // HEADS)  # a qk-norm EVA
    with pytest.raises(ValueError, match=r"no exact place.*q_norm"):
        load_backbone(write(tmp_path, timm_state), num_heads=HEADS)


def test_timm_without_qkv_bias_is_a_zero_bias(tmp_path):
    state = official_state(periods=default_periods(DIM // HEADS))
    for i in range(DEPTH):
        state[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * DIM)
    model = load_backbone(write(tmp_path, to_timm(state, with_bias=False)), num_heads=HEADS)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        close(model(x), reference(state, x)["normed"][:, 0])


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3"])
def test_a_real_timm_model_is_matched(tmp_path, name):
    timm = pytest.importorskip("timm")
    try:
        net = timm.create_model(name, pretrained=False, embed_dim=DIM, depth=DEPTH,
                                num_heads=HEADS, patch_size=PATCH, img_size=32, num_classes=0)
    except RuntimeError as err:  # an older timm without the DINOv3 models
        pytest.skip(f"timm {timm.__version__} has no {name}: {err}")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))
    net.eval()
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    model = load_backbone(tmp_path / "timm.pth", num_heads=HEADS)
    for size in [(32, 32), (24, 40)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            want = net.forward_features(x)  # normed [CLS, 4 registers, patches]
            got = model.forward_features(x)
        torch.testing.assert_close(got["x_norm_clstoken"], want[:, 0], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["x_norm_patchtokens"], want[:, 5:], rtol=0, atol=1e-4)
