"""dinolab.models.checkpoints: official DINO / DINOv2 layouts built here, loaded back."""

from __future__ import annotations

import argparse
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab.models import (
    DINOHead,
    MultiCropWrapper,
    ResNetBackbone,
    VisionTransformer,
    load_pretrained,
)

D = 16


def vit(img_size: int = 16, **kw) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, patch_size=4, embed_dim=D, depth=2, num_heads=2,
                             **kw)


def head_state(prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in DINOHead(D, 10, hidden_dim=8, bottleneck_dim=4)
            .state_dict().items()}


def assert_backbone_equal(model: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    for k, v in model.state_dict().items():
        if prefix + k in state:
            torch.testing.assert_close(v, state[prefix + k], rtol=0, atol=0, msg=k)


def dino_v1_training_checkpoint() -> dict:
    """Official DINO's main_dino.py layout: DDP student (module.), plain teacher, extras."""
    student = MultiCropWrapper(vit(), DINOHead(D, 10, hidden_dim=8, bottleneck_dim=4))
    teacher = MultiCropWrapper(vit(), DINOHead(D, 10, hidden_dim=8, bottleneck_dim=4))
    v1 = lambda sd: {k: v for k, v in sd.items() if k != "backbone.mask_token"}  # v1 has none
    return {
        "student": {"module." + k: v for k, v in v1(student.state_dict()).items()},
        "teacher": v1(teacher.state_dict()),
        "optimizer": torch.optim.AdamW(student.parameters()).state_dict(),
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, lr=5e-4),
        "dino_loss": {"center": torch.zeros(1, 10)},
        "fp16_scaler": None,
    }


def test_dino_v1_training_checkpoint_teacher_and_student(tmp_path):
    ckpt = dino_v1_training_checkpoint()
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    assert "backbone.cls_token" in ckpt["teacher"] and "head.mlp.0.weight" in ckpt["teacher"]

    model = vit()
    missing, unexpected = load_pretrained(model, path)  # checkpoint_key="teacher"
    assert missing == ["mask_token"]  # DINO v1 has none
    assert sorted(unexpected) == sorted(k for k in ckpt["teacher"] if k.startswith("head."))
    assert_backbone_equal(model, ckpt["teacher"], "backbone.")

    student_model = vit()
    missing, unexpected = load_pretrained(student_model, path, checkpoint_key="student")
    assert missing == ["mask_token"]
    assert all(k.startswith("module.head.") for k in unexpected) and len(unexpected) == 8
    assert_backbone_equal(student_model, ckpt["student"], "module.backbone.")


def test_training_checkpoint_into_a_whole_wrapper_with_parametrized_weight_norm(tmp_path):
    ckpt = dino_v1_training_checkpoint()
    teacher = ckpt["teacher"]
    # Newer torch's parametrized weight_norm names the two tensors original0 / original1.
    teacher["head.last_layer.parametrizations.weight.original0"] = teacher.pop(
        "head.last_layer.weight_g")
    teacher["head.last_layer.parametrizations.weight.original1"] = teacher.pop(
        "head.last_layer.weight_v")
    torch.save(ckpt, tmp_path / "ck.pth")
    model = MultiCropWrapper(vit(), DINOHead(D, 10, hidden_dim=8, bottleneck_dim=4))
    missing, unexpected = load_pretrained(model, tmp_path / "ck.pth")
    assert missing == ["backbone.mask_token"] and unexpected == []
    torch.testing.assert_close(model.head.last_layer.weight_v,
                               teacher["head.last_layer.parametrizations.weight.original1"],
                               rtol=0, atol=0)


def reference_resize(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """REFERENCE.md section 9: CLS kept, bicubic with scale (grid + 0.1) / sqrt(N)."""
    m = int(math.sqrt(pos_embed.shape[1] - 1))
    patches = pos_embed[:, 1:].reshape(1, m, m, D).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((grid + 0.1) / m, (grid + 0.1) / m),
                            mode="bicubic")
    return torch.cat([pos_embed[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, D)], 1)


def test_dinov2_teacher_checkpoint_layerscale_pos_embed_and_chunks(tmp_path):
    source = vit(img_size=24, init_values=1e-5)  # trained at another resolution: 6x6 grid
    with torch.no_grad():
        source.mask_token.normal_()
        for blk in source.blocks:
            blk.ls1.gamma.normal_()
    state = {}
    for k, v in source.state_dict().items():
        # DINOv2 with block_chunks=2 saves block i of chunk c as blocks.c.i (here c = i).
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            k = f"blocks.{i}.{i}.{rest}"
        state["backbone." + k] = v
    assert "backbone.blocks.1.1.ls1.gamma" in state
    state |= head_state("dino_head.") | head_state("ibot_head.")
    torch.save({"teacher": state}, tmp_path / "teacher_checkpoint.pth")

    model = vit(img_size=16, init_values=1.0)  # a 4x4 grid
    missing, unexpected = load_pretrained(model, tmp_path / "teacher_checkpoint.pth")
    assert missing == []
    assert sorted(unexpected) == sorted(k for k in state if "_head." in k)
    torch.testing.assert_close(model.pos_embed, reference_resize(source.pos_embed.detach(), 4),
                               rtol=0, atol=1e-6)
    src = source.state_dict()
    for k, v in model.state_dict().items():
        if k != "pos_embed":
            torch.testing.assert_close(v, src[k], rtol=0, atol=0, msg=k)


def test_bare_backbone_and_wrapped_state_dicts(tmp_path):
    source = vit()
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    torch.save({"model": source.state_dict()}, tmp_path / "model.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}},
               tmp_path / "sd.pth")
    for name in ("bare.pth", "model.pth", "sd.pth"):
        model = vit()
        assert load_pretrained(model, tmp_path / name) == ([], [])
        assert_backbone_equal(model, source.state_dict(), "")
    # A bare backbone file also fills the backbone of a MultiCropWrapper.
    wrapper = MultiCropWrapper(vit(), nn.Linear(D, 3))
    missing, unexpected = load_pretrained(wrapper, tmp_path / "bare.pth")
    assert missing == ["head.weight", "head.bias"] and unexpected == []
    assert_backbone_equal(wrapper.backbone, source.state_dict(), "")


def test_resnet_state_dict_with_a_supervised_classifier(tmp_path):
    source = ResNetBackbone("resnet18")
    state = source.state_dict() | {"fc.weight": torch.randn(7, 512), "fc.bias": torch.zeros(7)}
    torch.save(state, tmp_path / "r18.pth")
    model = ResNetBackbone("resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dropped classifier is expected: no warning
        missing, unexpected = load_pretrained(model, tmp_path / "r18.pth")
    assert missing == [] and unexpected == ["fc.weight", "fc.bias"]
    assert_backbone_equal(model, state, "")


def test_architecture_leftovers_warn(tmp_path):
    torch.save(vit(init_values=1e-5).state_dict(), tmp_path / "ls.pth")
    with pytest.warns(UserWarning, match="LayerScale"):
        _, unexpected = load_pretrained(vit(), tmp_path / "ls.pth")
    assert sorted(unexpected) == sorted(f"blocks.{i}.ls{j}.gamma" for i in (0, 1) for j in (1, 2))


def test_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"encoder.layer.weight": torch.zeros(3), "decoder.bias": torch.zeros(2)},
               tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="foreign checkpoint") as info:
        load_pretrained(vit(), tmp_path / "foreign.pth")
    assert "encoder.layer.weight" in str(info.value) and "cls_token" in str(info.value)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    other = VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2)
    torch.save(other.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"'cls_token': file \(1, 1, 24\) vs model \(1, 1, 16\)"):
        load_pretrained(vit(), tmp_path / "wide.pth")


def test_unreadable_files(tmp_path):
    torch.save(vit().state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("not a checkpoint")
    for name in ("truncated.pth", "text.pth"):
        with pytest.raises(ValueError, match="not a PyTorch checkpoint, or it is truncated") as e:
            load_pretrained(vit(), tmp_path / name)
        assert name in str(e.value)
    missing = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(vit(), missing)


class Opaque:
    """A class weights_only loading refuses to rebuild."""


def test_pickled_objects_other_than_tensors_are_refused(tmp_path):
    torch.save({"teacher": vit().state_dict(), "extra": Opaque()}, tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="stores Python objects other than tensors"):
        load_pretrained(vit(), tmp_path / "obj.pth")


def test_files_without_tensors_are_refused(tmp_path):
    torch.save({"epoch": 3, "teacher": {"lr": 0.1}}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="found no tensors"):
        load_pretrained(vit(), tmp_path / "empty.pth")


def test_infer_vit_options_reads_patch_layerscale_and_registers(tmp_path):
    from dinolab.models import infer_vit_options, vit_small

    # A DINOv2 ViT-S/14 with 4 registers, saved at 518 px as the hub files are.
    source = vit_small(patch_size=14, img_size=518, init_values=1e-5, num_register_tokens=4)
    torch.save(source.state_dict(), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    found = infer_vit_options(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    assert found == {"patch_size": 14, "embed_dim": 384, "arch": "vit_small",
                     "init_values": 1.0, "num_register_tokens": 4}
    # DINO v1 (no LayerScale, no registers), in a training checkpoint under teacher.backbone.
    torch.save(dino_v1_training_checkpoint(), tmp_path / "v1.pth")
    assert infer_vit_options(tmp_path / "v1.pth") == {"patch_size": 4, "embed_dim": D}
    torch.save(ResNetBackbone("resnet18").state_dict(), tmp_path / "r18.pth")
    assert infer_vit_options(tmp_path / "r18.pth") == {}
    swiglu = {k: v for k, v in vit().state_dict().items() if ".mlp." not in k}
    swiglu |= {f"blocks.{i}.mlp.w12.weight": torch.zeros(2 * D, D) for i in (0, 1)}
    torch.save(swiglu, tmp_path / "vitg.pth")
    with pytest.raises(ValueError, match="SwiGLU"):
        infer_vit_options(tmp_path / "vitg.pth")


def test_allow_missing_refuses_a_partial_backbone_before_touching_it(tmp_path):
    """Without it, a file of 1 block would leave the model's second block random."""
    state = {k: v for k, v in vit().state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(state, tmp_path / "shallow.pth")
    model = vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    missing, _ = load_pretrained(model, tmp_path / "shallow.pth")  # the default: lenient
    assert any(k.startswith("blocks.1.") for k in missing)
    model = vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"no tensor for \d+ of the model's \d+ keys.*blocks\.1"):
        load_pretrained(model, tmp_path / "shallow.pth", allow_missing=["mask_token"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # mask_token (not in DINO v1 files) is allowed; a complete file loads.
    complete = {k: v for k, v in vit().state_dict().items() if k != "mask_token"}
    torch.save(complete, tmp_path / "v1_bare.pth")
    assert load_pretrained(vit(), tmp_path / "v1_bare.pth", allow_missing=["mask_token"]) == (
        ["mask_token"], [])


def test_infer_dino_head_options_from_v1_and_v2_checkpoints(tmp_path):
    from dinolab.models import infer_dino_head_options

    torch.save(dino_v1_training_checkpoint(), tmp_path / "v1.pth")
    expected = {"out_dim": 10, "bottleneck_dim": 4, "nlayers": 3, "use_bn": False,
                "hidden_dim": 8}
    assert infer_dino_head_options(tmp_path / "v1.pth") == ("head.", expected)
    assert infer_dino_head_options(tmp_path / "v1.pth", "student") == ("head.", expected)
    bn = DINOHead(D, 12, use_bn=True, nlayers=2, hidden_dim=6, bottleneck_dim=5)
    v2 = {"backbone." + k: v for k, v in vit().state_dict().items()}
    v2 |= {"dino_head." + k: v for k, v in bn.state_dict().items()} | head_state("ibot_head.")
    torch.save({"teacher": v2}, tmp_path / "v2.pth")
    assert infer_dino_head_options(tmp_path / "v2.pth") == (
        "dino_head.",
        {"out_dim": 12, "bottleneck_dim": 5, "nlayers": 2, "use_bn": True, "hidden_dim": 6},
    )
    torch.save(vit().state_dict(), tmp_path / "bare.pth")
    assert infer_dino_head_options(tmp_path / "bare.pth") is None
