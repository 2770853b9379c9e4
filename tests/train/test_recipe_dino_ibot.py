"""DINOv2's iBOT masked-patch loss in the ``dino`` recipe (``--ibot_loss_weight``)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinolab.data.masking import sample_ibot_masks
from dinolab.models import DINOHead, MultiCropWrapper, VisionTransformer, build_backbone
from dinolab.train.checkpoint import load_checkpoint
from dinolab.train.recipes.dino import DINOTask, build_student, train_dino
from dinolab.train.task import StepContext
from tests.train.test_recipe_dino import tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _wrapper(seed: int = 0) -> MultiCropWrapper:
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    torch.nn.init.normal_(vit.mask_token)  # not zeros, so masking visibly changes the tokens
    return MultiCropWrapper(vit, DINOHead(32, 16, hidden_dim=32, bottleneck_dim=8))


def test_masked_wrapper_outputs_equal_the_backbone_and_head_called_by_hand():
    model = _wrapper().eval()
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(3, 3, 16, 16, generator=g) for _ in range(2)]
    crops += [torch.randn(3, 3, 8, 8, generator=g) for _ in range(2)]
    masks = torch.rand(6, 16, generator=g) < 0.3
    masks[0] = False  # a crop with no mask
    out = model(crops, masks=masks)
    with torch.no_grad():
        feats = model.backbone.forward_features(torch.cat(crops[:2]), masks=masks)
        local = model.backbone(torch.cat(crops[2:]))
        cls_logits = model.head(torch.cat([feats["x_norm_clstoken"], local]))
        patch_logits = model.head(feats["x_norm_patchtokens"][masks])
    assert out["logits"].shape == (12, 16)
    assert out["patch_logits_masked"].shape == (int(masks.sum()), 16)
    # The wrapper runs the head once on CLS and patch rows together; a row's result does not
    # depend on the others, up to float32 rounding of the batched matmul (atol 1e-6).
    torch.testing.assert_close(out["logits"], cls_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["patch_logits_masked"], patch_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["features"][6:], local, rtol=0, atol=1e-6)
    # Masking changes what the student sees: the masked crops' CLS outputs move.
    plain = model(crops)
    assert not torch.allclose(out["logits"][1:6], plain[1:6], atol=1e-4)
    # With nothing masked the outputs are the plain forward's.
    none = model(crops, masks=torch.zeros(6, 16, dtype=torch.bool))
    torch.testing.assert_close(none["logits"], plain, rtol=0, atol=1e-6)
    assert none["patch_logits_masked"].shape == (0, 16)


def test_masks_that_do_not_fit_are_refused_with_the_shape_expected():
    model = _wrapper()
    crops = [torch.randn(2, 3, 16, 16)] * 2
    with pytest.raises(ValueError, match=r"B=4 .*got torch.bool \(2, 16\)"):
        model(crops, masks=torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        model(crops, masks=torch.zeros(4, 16))
    resnet = MultiCropWrapper(build_backbone("resnet18", small_input=True), DINOHead(512, 8))
    with pytest.raises(ValueError, match="VisionTransformer.*ResNet"):
        resnet([torch.randn(2, 3, 16, 16)], masks=torch.zeros(2, 16, dtype=torch.bool))


def _reference_ibot(
    student: torch.Tensor,
    teacher: torch.Tensor,
    masks: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """iBOT as DINOv2 writes it, loop form: per crop, the mean over its masked patches of
    ``-sum q log p``; crops without a mask add 0; the sum over crops divided by their number."""
    q = F.softmax((teacher - center.reshape(1, -1)) / teacher_temp, dim=-1)
    per_patch = -(q * F.log_softmax(student / student_temp, dim=-1)).sum(-1)
    total, row = torch.zeros(()), 0
    for m in masks:
        k = int(m.sum())
        if k:
            total = total + per_patch[row : row + k].mean()
        row += k
    return total / masks.shape[0]


def test_one_step_adds_the_ibot_term_computed_by_hand(tmp_path):
    cfg = tiny(tmp_path, ibot_loss_weight=0.5, koleo_loss_weight=0.0, seed=3)
    task = DINOTask(cfg, build_student(cfg), None)
    task.train_mode()
    g = torch.Generator().manual_seed(0)
    b = 4
    crops = [torch.rand(b, 3, cfg.global_crops_size, cfg.global_crops_size, generator=g)
             for _ in range(2)]
    crops += [torch.rand(b, 3, cfg.local_crops_size, cfg.local_crops_size, generator=g)
              for _ in range(cfg.local_crops_number)]
    it = 5
    ctx = StepContext(epoch=1, it=it, batch_index=1, niter_per_ep=4, epochs=2,
                      student=task.student, device=torch.device("cpu"), lr=0.0, wd=0.0)
    dino_before = copy.deepcopy(task.dino_loss)
    center = task.ibot_loss.center.clone()
    loss, metrics = task.training_step((crops, None), ctx)

    grid = cfg.global_crops_size // cfg.patch_size
    seed = int(np.random.SeedSequence([cfg.seed, it, 0]).generate_state(1)[0])
    masks = sample_ibot_masks(2 * b, grid, mask_ratio=cfg.mask_ratio,
                              mask_probability=cfg.mask_probability, generator=seed)
    assert masks.any() and not masks.all()
    with torch.no_grad():
        t = task.teacher.backbone.forward_features(torch.cat(crops[:2]))
        t_cls = task.teacher.head(t["x_norm_clstoken"])
        t_patch = task.teacher.head(t["x_norm_patchtokens"][masks])
        s = task.student.backbone.forward_features(torch.cat(crops[:2]), masks=masks)
        s_local = task.student.backbone(torch.cat(crops[2:]))
        s_cls = task.student.head(torch.cat([s["x_norm_clstoken"], s_local]))
        s_patch = task.student.head(s["x_norm_patchtokens"][masks])
        temp = dino_before.teacher_temp_at(1)
        ibot = _reference_ibot(s_patch, t_patch, masks, center, temp)
        dino = dino_before(s_cls, t_cls, 1)
    # rtol 1e-5: float32, the same products summed in other orders.
    assert metrics["ibot_loss"] == pytest.approx(float(ibot), rel=1e-5)
    assert metrics["dino_loss"] == pytest.approx(float(dino), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(dino) + 0.5 * float(ibot), rel=1e-5)
    # The patch center moved towards the teacher's masked-patch logits (momentum 0.9).
    expected = 0.9 * center.reshape(-1) + 0.1 * t_patch.mean(0)
    torch.testing.assert_close(task.ibot_loss.center.reshape(-1), expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert task.student.backbone.mask_token.grad is not None
    assert task.student.backbone.mask_token.grad.abs().sum() > 0
    assert task.teacher.backbone.mask_token.grad is None


def test_a_run_with_ibot_logs_it_saves_its_center_and_resumes_exactly(tmp_path):
    train_dino(tiny(tmp_path / "full", ibot_loss_weight=1.0))
    log = (tmp_path / "full" / "log_steps.jsonl").read_text()
    steps = [json.loads(line) for line in log.splitlines()]
    cfg = tiny(tmp_path)
    for s in steps:
        assert math.isfinite(s["ibot_loss"]) and s["ibot_loss"] > 0
        assert s["loss"] == pytest.approx(
            s["dino_loss"] + cfg.koleo_loss_weight * s["koleo_loss"] + s["ibot_loss"], rel=1e-5
        )
    ckpt = load_checkpoint(tmp_path / "full" / "checkpoint.pth")
    assert ckpt["ibot_loss"]["center"].shape == (1, 1, cfg.out_dim)
    assert float(ckpt["ibot_loss"]["center"].abs().sum()) > 0
    assert float(ckpt["student"]["backbone.mask_token"].abs().sum()) > 0  # it was trained

    def interrupt(engine, record):
        if record["it"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dino(tiny(tmp_path / "cut", ibot_loss_weight=1.0), callbacks=[interrupt])
    train_dino(tiny(tmp_path / "cut", ibot_loss_weight=1.0, resume=True))
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pth")
    for part in ("student", "teacher", "ibot_loss"):
        for key, value in ckpt[part].items():
            # Tolerance 0: the masks are drawn from (seed, iteration, rank), replayed exactly.
            assert torch.equal(value, cut[part][key]), f"{part}.{key}"
    # Resuming it without iBOT is refused rather than silently dropping the center's state.
    with pytest.raises(ValueError, match="has no iBOT center"):
        train_dino(tiny(tmp_path / "plain", epochs=1, ibot_loss_weight=0.0))
        train_dino(tiny(tmp_path / "plain", ibot_loss_weight=1.0, resume=True))


def test_ibot_needs_a_vit_and_a_non_negative_weight(tmp_path):
    with pytest.raises(ValueError, match="needs a ViT backbone, not --arch resnet18"):
        train_dino(tiny(tmp_path / "r", arch="resnet18", embed_dim=None, depth=None,
                        num_heads=None, ibot_loss_weight=1.0))
    with pytest.raises(ValueError, match="ibot_loss_weight=-1"):
        train_dino(tiny(tmp_path / "n", ibot_loss_weight=-1.0))
