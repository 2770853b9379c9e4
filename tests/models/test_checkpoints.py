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


# --- load_backbone: the backbone of any checkpoint, built as the file says, read once --------


@pytest.fixture(scope="module")
def dino_run(tmp_path_factory):
    """A real 1-epoch `dinolab train dino` checkpoint: ViT of width 32, 2 blocks, 2 heads, patch 8
    (the classic settings' vit_course)."""
    from dinolab.train.recipes.dino import DINOConfig, train_dino

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dino")
    try:
        train_dino(DINOConfig.classic(output_dir=str(out), epochs=1, warmup_epochs=0,
                              batch_size_per_gpu=4,
                              num_images=16, num_eval_images=8, local_crops_number=2, out_dim=64,
                              head_hidden_dim=32, head_bottleneck_dim=16, embed_dim=32, depth=2,
                              num_heads=2, knn_k=5, progress=False, plots=False, device="cpu"))
    finally:
        torch.set_num_threads(previous)
    return out / "checkpoint.pth"


class CountingLoad:
    """Stands in for torch.load and counts the files read."""

    def __init__(self) -> None:
        self.calls = 0
        self.load = torch.load

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.load(*args, **kwargs)


def test_dinolab_and_train_agree_on_the_checkpoint_marker_and_vit_sizes():
    from dinolab.models import checkpoints
    from dinolab.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    from dinolab.train.recipes import dino

    assert checkpoints._DINOLAB_FORMAT == CHECKPOINT_FORMAT
    assert checkpoints._DINOLAB_VERSION == CHECKPOINT_VERSION
    assert checkpoints._VIT_SIZES == dino._VIT_SIZES


def test_load_backbone_of_a_dino_run_is_its_teacher(dino_run, monkeypatch):
    from dinolab.models import load_backbone
    from dinolab.train.checkpoint import load_checkpoint
    from dinolab.train.recipes.dino import DINOConfig, build_student

    ckpt = load_checkpoint(dino_run)
    nets = {}
    for which in ("teacher", "student"):
        net = build_student(DINOConfig.from_args(ckpt["args"]))
        net.load_state_dict(ckpt[which])
        nets[which] = net.backbone.eval()
    counter = CountingLoad()
    monkeypatch.setattr(torch, "load", counter)
    backbone = load_backbone(dino_run)
    assert counter.calls == 1  # the file is read once
    assert not backbone.training and backbone.embed_dim == 32 and len(backbone.blocks) == 2
    assert backbone.num_heads == 2 and backbone.patch_size == 8
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(x), nets["teacher"](x))
        assert torch.equal(backbone.get_last_selfattention(x),
                           nets["teacher"].get_last_selfattention(x))
        student = load_backbone(dino_run, which="student")
        assert torch.equal(student(x), nets["student"](x))
        assert not torch.equal(student(x), backbone(x))
        # Position embeddings built for another size once, here: the same outputs at 16 px.
        small = load_backbone(dino_run, img_size=16)
        assert small.pos_embed.shape == (1, 5, 32)
        torch.testing.assert_close(small(x[..., :16, :16]), backbone(x[..., :16, :16]))
    # The settings it was trained with, agreed with, are fine; contradicted, an error.
    load_backbone(dino_run, arch="vit_course", patch_size=8, num_heads=2)
    with pytest.raises(ValueError, match="patch_size=4 contradicts .* leave it unset"):
        load_backbone(dino_run, patch_size=4)
    with pytest.raises(ValueError, match="arch='vit_small' contradicts"):
        load_backbone(dino_run, arch="vit_small")
    with pytest.raises(ValueError, match="num_heads=4 contradicts"):
        load_backbone(dino_run, num_heads=4)
    with pytest.raises(ValueError, match=r"has no 'ema' entry; expected 'teacher' or 'student'"):
        load_backbone(dino_run, which="ema")


def test_backbone_from_checkpoint_brings_the_head_and_the_settings(dino_run):
    from dinolab.models import backbone_from_checkpoint, is_dinolab_checkpoint, read_checkpoint
    from dinolab.train.recipes.dino import DINOConfig, build_student

    ckpt = read_checkpoint(dino_run)
    assert is_dinolab_checkpoint(ckpt) and not is_dinolab_checkpoint({"teacher": {}})
    loaded = backbone_from_checkpoint(ckpt, with_head=True, path=dino_run)
    assert loaded.source == "dinolab" and loaded.recipe == "dino" and loaded.out_dim == 64
    assert loaded.args["global_crops_size"] == 32 and not loaded.head.training
    teacher = build_student(DINOConfig.from_args(ckpt["args"]))
    teacher.load_state_dict(ckpt["teacher"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.head(loaded.backbone(x)), teacher.eval()([x]),
                                   rtol=0, atol=0)
    assert backbone_from_checkpoint(ckpt).head is None  # only when asked for


def test_load_backbone_of_a_distill_run_is_its_student(dino_run, tmp_path):
    from dinolab.models import load_backbone
    from dinolab.train.checkpoint import load_checkpoint
    from dinolab.train.recipes.distill import DistillConfig, DistillStudent, train_distill

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_distill(DistillConfig.classic(
            output_dir=str(tmp_path), epochs=1, warmup_epochs=0, embed_dim=16, depth=1,
            num_heads=2, teacher_pretrained_weights=str(dino_run), linear_probe_epochs=0,
            batch_size_per_gpu=4, num_images=16, num_eval_images=8, local_crops_number=2,
            head_hidden_dim=32, head_bottleneck_dim=16, knn_k=5, progress=False, plots=False,
            device="cpu"))
    finally:
        torch.set_num_threads(previous)
    path = tmp_path / "checkpoint.pth"
    student = load_backbone(path, which="student")
    assert student.embed_dim == 16 and len(student.blocks) == 1
    saved = load_checkpoint(path)["student"]
    for k, v in student.state_dict().items():
        assert torch.equal(v, saved[f"backbone.{k}"]), k
    assert not isinstance(student, DistillStudent)
    with pytest.raises(ValueError, match="is a distill checkpoint: its teacher is the frozen"):
        load_backbone(path)


def test_load_backbone_of_a_dinolab_resnet_checkpoint(tmp_path):
    from dinolab.models import load_backbone
    from dinolab.train.checkpoint import save_checkpoint

    source = ResNetBackbone("resnet18", small_input=True).eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    save_checkpoint(tmp_path / "r.pth", {
        "teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()},
        "student": {}, "epoch": 1, "step": 4, "recipe": "dino",
        "args": {"arch": "resnet18", "global_crops_size": 32},
    })
    backbone = load_backbone(tmp_path / "r.pth")
    assert isinstance(backbone, ResNetBackbone) and backbone.small_input and not backbone.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(x), source(x))


def test_load_backbone_of_official_layouts(tmp_path, monkeypatch):
    from dinolab.models import backbone_from_checkpoint, load_backbone, read_checkpoint, vit_tiny

    # DINO v1's main_dino.py checkpoint (width 16: not an official size, so num_heads given).
    ckpt = dino_v1_training_checkpoint()
    torch.save(ckpt, tmp_path / "v1.pth")
    counter = CountingLoad()
    monkeypatch.setattr(torch, "load", counter)
    backbone = load_backbone(tmp_path / "v1.pth", num_heads=2)
    assert counter.calls == 1
    assert_backbone_equal(backbone, ckpt["teacher"], "backbone.")
    student = load_backbone(tmp_path / "v1.pth", which="student", num_heads=2)
    assert_backbone_equal(student, ckpt["student"], "module.backbone.")
    reference = vit()
    load_pretrained(reference, tmp_path / "v1.pth")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(backbone(x), reference.eval()(x))
    loaded = backbone_from_checkpoint(read_checkpoint(tmp_path / "v1.pth"), num_heads=2,
                                      with_head=True)
    assert loaded.source == "official" and loaded.out_dim == 10 and loaded.args == {}
    assert torch.equal(loaded.head.last_layer.weight_v, ckpt["teacher"]["head.last_layer.weight_v"])
    with pytest.raises(ValueError, match="width 16, none of the official sizes .* num_heads="):
        load_backbone(tmp_path / "v1.pth")

    # A DINOv2 teacher checkpoint: chunked blocks, LayerScale, pos_embed of a 6x6 grid kept.
    source = vit(img_size=24, init_values=1e-5)
    with torch.no_grad():
        for blk in source.blocks:
            blk.ls1.gamma.normal_()
    state = {f"backbone.{k}".replace(f"blocks.{k[7:8]}.", f"blocks.{k[7:8]}.{k[7:8]}.")
             if k.startswith("blocks.") else f"backbone.{k}": v
             for k, v in source.state_dict().items()}
    assert "backbone.blocks.1.1.ls1.gamma" in state
    torch.save({"teacher": state | head_state("dino_head.")}, tmp_path / "teacher_checkpoint.pth")
    counter.calls = 0
    backbone = load_backbone(tmp_path / "teacher_checkpoint.pth", num_heads=2)
    assert counter.calls == 1
    for k, v in source.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[k], v, rtol=0, atol=0, msg=k)

    # A released backbone of an official width: the architecture is the file's alone.
    tiny = vit_tiny(patch_size=16, img_size=32, num_register_tokens=2)
    torch.save({k: v for k, v in tiny.state_dict().items() if k != "mask_token"},
               tmp_path / "tiny.pth")
    backbone = load_backbone(tmp_path / "tiny.pth")
    assert backbone.embed_dim == 192 and backbone.num_heads == 3 and backbone.patch_size == 16
    assert backbone.num_register_tokens == 2 and backbone.img_size == 32
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(backbone(x), tiny.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="patch_size=8 contradicts .* 16-px patches"):
        load_backbone(tmp_path / "tiny.pth", patch_size=8)
    # Half its blocks missing: refused, instead of six random blocks.
    half = {k: v for k, v in tiny.state_dict().items()
            if not any(k.startswith(f"blocks.{i}.") for i in range(6, 12))}
    torch.save(half, tmp_path / "half.pth")
    with pytest.raises(ValueError, match=r"load_backbone: .* no tensor for \d+ .* random"):
        load_backbone(tmp_path / "half.pth")

    # A torchvision ResNet with its classifier: depth and block type read from the stages.
    r50 = ResNetBackbone("resnet50").eval()
    torch.save(r50.state_dict() | {"fc.weight": torch.randn(5, 2048), "fc.bias": torch.zeros(5)},
               tmp_path / "r50.pth")
    backbone = load_backbone(tmp_path / "r50.pth")
    assert isinstance(backbone, ResNetBackbone) and backbone.arch == "resnet50"
    assert not backbone.small_input
    with torch.no_grad():
        assert torch.equal(backbone(torch.ones(1, 3, 64, 64)), r50(torch.ones(1, 3, 64, 64)))


def test_load_backbone_refuses_checkpoints_without_a_backbone(tmp_path):
    from dinolab.models import load_backbone
    from dinolab.train.checkpoint import save_checkpoint

    # A dinolab checkpoint of the kd recipe: its student is a classifier CNN, no backbone.
    save_checkpoint(tmp_path / "kd.pth", {
        "student": {"features.0.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4)},
        "epoch": 1, "step": 1, "recipe": "kd", "args": {"arch": "student_net"},
    })
    with pytest.raises(ValueError, match="has no 'teacher' entry") as info:
        load_backbone(tmp_path / "kd.pth")
    assert "kd.pth" in str(info.value) and "'student'" in str(info.value)
    with pytest.raises(ValueError, match=r"has no backbone under 'student'") as info:
        load_backbone(tmp_path / "kd.pth", which="student")
    assert "kd.pth" in str(info.value) and "features.0.weight" in str(info.value)
    # Foreign and head-only files name the path and the keys found.
    torch.save({"encoder.layer.weight": torch.zeros(3), "decoder.bias": torch.zeros(2)},
               tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="foreign.pth.* has no backbone") as info:
        load_backbone(tmp_path / "foreign.pth")
    assert "encoder.layer.weight" in str(info.value)
    torch.save({"teacher": head_state("head.")}, tmp_path / "head_only.pth")
    with pytest.raises(ValueError, match="head_only.pth.* has no backbone.*head.mlp.0.weight"):
        load_backbone(tmp_path / "head_only.pth")
    with pytest.raises(FileNotFoundError, match="load_backbone: no checkpoint file"):
        load_backbone(tmp_path / "none.pth")
    with pytest.raises(ValueError, match="which=3 must name an entry"):
        load_backbone(tmp_path / "foreign.pth", which=3)


def test_dino_recipe_builds_register_tokens_and_load_backbone_rebuilds_them(tmp_path):
    from dinolab.models import load_backbone
    from dinolab.train.checkpoint import save_checkpoint
    from dinolab.train.recipes import DINOConfig
    from dinolab.train.recipes.dino import build_backbone_from

    cfg = DINOConfig(num_register_tokens=2)
    source = build_backbone_from(cfg).eval()
    assert source.num_register_tokens == 2
    with torch.no_grad():
        source.register_tokens.normal_()  # not the near-zero init: loading must carry them
    x = torch.randn(2, 3, 32, 32)
    # CLS + 2 registers + 8x8 patches attend to one another.
    assert source.get_last_selfattention(x).shape[-1] == 1 + 2 + 64
    save_checkpoint(tmp_path / "r.pth", {
        "teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()},
        "student": {}, "epoch": 1, "step": 4, "recipe": "dino",
        "args": {k: getattr(cfg, k) for k in ("arch", "patch_size", "global_crops_size")},
    })
    backbone = load_backbone(tmp_path / "r.pth")
    assert backbone.num_register_tokens == 2
    with torch.no_grad():
        assert torch.equal(backbone(x), source(x))
    with pytest.raises(ValueError, match="num_register_tokens"):
        build_backbone_from(DINOConfig(arch="resnet18", num_register_tokens=4))
    with pytest.raises(ValueError, match="num_register_tokens"):
        build_backbone_from(DINOConfig(num_register_tokens=-1))
