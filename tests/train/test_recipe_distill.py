"""The ``distill`` recipe: a frozen teacher from a dino run or an official-layout file."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dinolab.train.checkpoint import load_checkpoint
from dinolab.train.recipes.dino import DINOConfig, train_dino
from dinolab.train.recipes.distill import DistillConfig, train_distill

SMALL = dict(
    batch_size_per_gpu=4,
    num_images=16,
    num_eval_images=8,
    local_crops_number=2,
    head_hidden_dim=32,
    head_bottleneck_dim=16,
    knn_k=5,
    progress=False,
    plots=False,
    device="cpu",
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dino_checkpoint(tmp_path_factory):
    """A 1-epoch teacher: ViT of width 48, 2 blocks, K=64."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dino")
    train_dino(
        DINOConfig(
            output_dir=str(out),
            epochs=1,
            warmup_epochs=0,
            out_dim=64,
            embed_dim=48,
            depth=2,
            num_heads=2,
            **SMALL,
        )
    )
    return out / "checkpoint.pth"


def test_distill_from_a_dino_checkpoint_trains_all_five_losses(tmp_path, dino_checkpoint):
    cfg = DistillConfig(
        output_dir=str(tmp_path),
        epochs=2,
        warmup_epochs=0,
        embed_dim=16,
        depth=2,
        num_heads=2,
        teacher_pretrained_weights=str(dino_checkpoint),
        linear_probe_epochs=3,
        **SMALL,
    )
    record = train_distill(cfg)
    steps = [json.loads(x) for x in (tmp_path / "log_steps.jsonl").read_text().splitlines()]
    assert len(steps) == 8
    for s in steps:
        parts = [s[f"{k}_loss"] for k in ("dino", "ibot", "koleo", "cls", "spd")]
        assert all(math.isfinite(p) for p in parts)
        # The logged total is the weighted sum of the logged parts (weights 1, 1, .1, 1, .1).
        weighted = parts[0] + parts[1] + 0.1 * parts[2] + parts[3] + 0.1 * parts[4]
        assert s["loss"] == pytest.approx(weighted, rel=1e-5)
    assert record["student_parameters"] < record["teacher_parameters"]
    for key in (
        "student_knn_top1",
        "teacher_knn_top1",
        "student_linear_top1",
        "teacher_linear_top1",
    ):
        assert 0.0 <= record[key] <= 100.0
    # The teacher was frozen: its weights in the distill checkpoint are the dino teacher's.
    teacher = load_checkpoint(dino_checkpoint)["teacher"]
    kept = load_checkpoint(tmp_path / "checkpoint.pth")["teacher"]
    assert all(torch.equal(teacher[k], kept[k]) for k in teacher)
    assert json.loads((tmp_path / "linear_probe.json").read_text())["student_parameters"] > 0


def _from_file(path, **kw) -> DistillConfig:
    """One epoch, no linear probe, a 1-block student of width 16, teacher from ``path``."""
    return DistillConfig(
        output_dir=str(path.parent / "run"),
        epochs=1,
        warmup_epochs=0,
        embed_dim=16,
        depth=1,
        num_heads=2,
        teacher_pretrained_weights=str(path),
        linear_probe_epochs=0,
        **SMALL,
        **kw,
    )


def test_distill_from_an_official_backbone_file(tmp_path):
    from dinolab.models import vit_course

    official = vit_course(patch_size=8, img_size=32)
    state = {k: v for k, v in official.state_dict().items() if k != "mask_token"}  # DINO v1
    torch.save(state, tmp_path / "dino_vit_pretrain.pth")
    cfg = _from_file(
        tmp_path / "dino_vit_pretrain.pth",
        out_dim=32,
        teacher_arch="vit_course",
        teacher_patch_size=8,
        patch_size=8,  # iBOT compares the teacher's 8-px patches with the student's
    )
    with pytest.warns(UserWarning, match="fixed random projection"):
        record = train_distill(cfg)
    assert math.isfinite(record["train_loss"])
    kept = load_checkpoint(tmp_path / "run" / "checkpoint.pth")["teacher"]
    assert torch.equal(kept["backbone.pos_embed"], state["pos_embed"])


def test_distill_refuses_missing_teachers_and_impossible_settings(tmp_path, dino_checkpoint):
    base = dict(output_dir=str(tmp_path), epochs=1, embed_dim=16, depth=1, num_heads=2, **SMALL)
    with pytest.raises(FileNotFoundError, match="train a teacher first"):
        train_distill(DistillConfig(teacher_pretrained_weights=str(tmp_path / "none.pth"), **base))
    with pytest.raises(ValueError, match="iBOT compares patches"):
        train_distill(
            DistillConfig(teacher_pretrained_weights=str(dino_checkpoint), patch_size=16, **base)
        )
    zero = {f"{k}_loss_weight": 0.0 for k in ("dino", "ibot", "koleo", "cls", "spd")}
    with pytest.raises(ValueError, match="every loss weight is 0"):
        train_distill(
            DistillConfig(teacher_pretrained_weights=str(dino_checkpoint), **zero, **base)
        )


def test_distill_from_an_official_training_checkpoint_uses_its_head(tmp_path):
    """DINO v1's main_dino.py layout: the teacher's backbone AND head come from the file.

    Nothing but the file says the teacher is a ViT-Ti/16 (width 192) with a 10-prototype head.
    """
    import warnings

    from dinolab.models import DINOHead, MultiCropWrapper, vit_tiny

    teacher = MultiCropWrapper(vit_tiny(patch_size=16), DINOHead(192, 10, hidden_dim=8,
                                                                   bottleneck_dim=4))
    state = {k: v for k, v in teacher.state_dict().items() if k != "backbone.mask_token"}
    torch.save({"teacher": state, "epoch": 100}, tmp_path / "full_checkpoint.pth")
    cfg = _from_file(
        tmp_path / "full_checkpoint.pth", patch_size=16, global_crops_size=32, local_crops_size=16
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fixed random projection" warning
        record = train_distill(cfg)
    assert math.isfinite(record["train_loss"])
    kept = load_checkpoint(tmp_path / "run" / "checkpoint.pth")["teacher"]
    for key in ("head.mlp.0.weight", "head.last_layer.weight_v", "backbone.blocks.11.mlp.fc2.bias"):
        assert torch.equal(kept[key], state[key]), key
    assert kept["head.last_layer.weight_v"].shape == (10, 4)


def test_the_teacher_file_is_read_once(tmp_path, dino_checkpoint, monkeypatch):
    from dinolab.train.recipes.distill import load_teacher

    real_load, calls = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    backbone, head, out_dim = load_teacher(_from_file(dino_checkpoint))
    assert len(calls) == 1 and out_dim == 64 and backbone.embed_dim == 48
    assert not backbone.training and not any(p.requires_grad for p in head.parameters())
    teacher = load_checkpoint(dino_checkpoint)["teacher"]
    for k, v in head.state_dict().items():
        assert torch.equal(v, teacher[f"head.{k}"]), k
