"""``distill --gram_loss_weight``: DINOv3's Gram anchoring as a distill term, the frozen teacher
as the Gram teacher. The teacher is a tiny DINOv3 ViT (official keys: CLS, 4 storage tokens,
patches), so the term must see its patch tokens without the storage tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dinolab.cli import main
from dinolab.losses import GramLoss
from dinolab.models import DINOHead, DINOv3ViT
from dinolab.train.engine import StepContext
from dinolab.train.recipes.distill import DistillConfig, DistillTask

B = 2  # images per step


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def dinov3_teacher(patch_size: int = 4) -> DINOv3ViT:
    """Width 32, 1 block, 2 heads of width 16; every tensor moved off its initial value."""
    torch.manual_seed(0)
    teacher = DINOv3ViT(patch_size=patch_size, embed_dim=32, depth=1, num_heads=2)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return teacher.eval().requires_grad_(False)


def _task(**kw) -> tuple[DistillTask, DINOv3ViT]:
    """A DistillTask (no data) with a width-16, 1-block student and the DINOv3 teacher."""
    teacher = dinov3_teacher()
    head = DINOHead(32, 32, hidden_dim=32, bottleneck_dim=16).eval().requires_grad_(False)
    base = dict(embed_dim=16, depth=1, num_heads=2, out_dim=32, head_hidden_dim=32,
                head_bottleneck_dim=16, local_crops_number=2, device="cpu",
                # no masks: the student's tokens can then be recomputed outside the step
                ibot_loss_weight=0.0)
    return DistillTask(DistillConfig(**{**base, **kw}), teacher, head, 32, None), teacher


def _step(task: DistillTask) -> tuple[torch.Tensor, dict[str, float], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)]
    crops += [torch.randn(B, 3, 16, 16, generator=g) for _ in range(2)]
    task.student.eval()  # deterministic: the reference below runs the same student
    ctx = StepContext(epoch=0, it=0, batch_index=0, niter_per_ep=1, epochs=1,
                      student=task.student, device=torch.device("cpu"), lr=0.0, wd=0.0)
    loss, metrics = task.training_step((crops, torch.zeros(B)), ctx)
    return loss, metrics, crops


def test_the_gram_term_is_gram_loss_on_the_students_and_teachers_patch_tokens():
    task, teacher = _task(gram_loss_weight=0.5)
    loss, metrics, crops = _step(task)
    with torch.no_grad():
        globals_ = torch.cat(crops[:2])
        student = task.student.backbone.forward_features(globals_)["x_norm_patchtokens"]
        t_out = teacher.forward_features(globals_)
        t_tokens = teacher.get_intermediate_layers(globals_, n=1)[0]
    # The teacher's patch tokens: 8x8 patches, its 1 CLS + 4 storage tokens left out.
    assert student.shape == (2 * B, 64, 16) and t_out["x_norm_patchtokens"].shape == (2 * B, 64, 32)
    torch.testing.assert_close(t_out["x_norm_patchtokens"], t_tokens)
    expected = float(GramLoss()(student, t_tokens))
    assert metrics["gram_loss"] == pytest.approx(expected, rel=1e-5)
    # remove_neg, per image: not the score of the other options on the same tokens.
    for other in (GramLoss(remove_neg=False), GramLoss(img_level=False)):
        assert float(other(student, t_tokens)) != pytest.approx(expected, rel=1e-3)
    # It enters the total with its weight, beside the other terms.
    weights = {"dino": 1.0, "koleo": 0.1, "cls": 1.0, "spd": 0.1, "gram": 0.5}
    assert set(metrics) == {f"{k}_loss" for k in weights}
    total = sum(w * metrics[f"{k}_loss"] for k, w in weights.items())
    assert float(loss.detach()) == pytest.approx(total, rel=1e-5)
    # The gradient reaches the student through the Gram term alone.
    only, _ = _task(gram_loss_weight=1.0, dino_loss_weight=0.0, koleo_loss_weight=0.0,
                    cls_loss_weight=0.0, spd_loss_weight=0.0)
    loss, metrics, _ = _step(only)
    assert set(metrics) == {"gram_loss"}
    loss.backward()
    grad = only.student.backbone.patch_embed.proj.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_without_a_weight_there_is_no_gram_term():
    task, _ = _task()  # default: 0
    assert DistillConfig().gram_loss_weight == 0.0
    loss, metrics, _ = _step(task)
    assert "gram_loss" not in metrics
    weights = {"dino": 1.0, "koleo": 0.1, "cls": 1.0, "spd": 0.1}
    total = sum(w * metrics[f"{k}_loss"] for k, w in weights.items())
    assert float(loss.detach()) == pytest.approx(total, rel=1e-5)


def test_bad_gram_weights_and_patch_grids_are_refused():
    with pytest.raises(ValueError, match=r"--gram_loss_weight must be a finite number >= 0, "
                                         r"got -1\.0"):
        _task(gram_loss_weight=-1.0)
    with pytest.raises(ValueError, match="--gram_loss_weight must be a finite number >= 0, "
                                         "got nan"):
        _task(gram_loss_weight=float("nan"))
    # The Gram term alone is a valid objective (no other weight).
    _task(gram_loss_weight=1.0, dino_loss_weight=0.0, koleo_loss_weight=0.0, cls_loss_weight=0.0,
          spd_loss_weight=0.0)
    # A student grid that is not the teacher's, and no --teacher_crops_size: refused by name.
    with pytest.raises(ValueError, match=r"the Gram loss compares patch grids.*"
                                         r"\(or --gram_loss_weight 0\)"):
        _task(gram_loss_weight=1.0, spd_loss_weight=0.0, patch_size=8)


def _logged(run) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "log_steps.jsonl").read_text().splitlines()]


def test_the_command_line_logs_gram_loss_only_when_it_is_weighted(tmp_path, capsys):
    torch.save(dinov3_teacher().state_dict(), tmp_path / "dinov3_teacher.pth")
    with pytest.raises(SystemExit):
        main(["train", "distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # whatever width argparse wraps at
    assert "--gram_loss_weight" in text and "DINOv3's Gram anchoring" in text
    teacher_file = str(tmp_path / "dinov3_teacher.pth")
    flags = ["train", "distill", "--teacher_pretrained_weights", teacher_file,
             "--epochs", "1", "--warmup_epochs", "0", "--embed_dim", "16", "--depth", "1",
             "--num_heads", "2", "--batch_size_per_gpu", "4", "--num_images", "8",
             "--num_eval_images", "8", "--local_crops_number", "2", "--head_hidden_dim", "32",
             "--head_bottleneck_dim", "16", "--out_dim", "32", "--knn_k", "5",
             "--linear_probe_epochs", "0", "--no-progress", "--no-plots", "--device", "cpu"]
    for weight in ("0.5", None):
        out = tmp_path / f"run_{weight}"
        argv = [*flags, "--output_dir", str(out)]
        if weight is not None:
            argv += ["--gram_loss_weight", weight]
        with pytest.warns(UserWarning, match="fixed random projection"):  # no DINO head saved
            assert main(argv) == 0
        capsys.readouterr()
        steps = _logged(out)
        assert len(steps) == 2
        for s in steps:
            if weight is None:
                assert "gram_loss" not in s
                continue
            assert math.isfinite(s["gram_loss"]) and 0.0 <= s["gram_loss"] <= 1.0
            parts = {k: s[f"{k}_loss"] for k in ("dino", "ibot", "koleo", "cls", "spd", "gram")}
            weighted = (parts["dino"] + parts["ibot"] + 0.1 * parts["koleo"] + parts["cls"]
                        + 0.1 * parts["spd"] + 0.5 * parts["gram"])
            assert s["loss"] == pytest.approx(weighted, rel=1e-5)
