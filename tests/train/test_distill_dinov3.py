"""``dinolab train distill`` with a frozen DINOv3 teacher (seed 002's), from a file in the official
DINOv3 layout that the test writes with small random weights (width 48, 2 blocks, heads of
width 16), distilled into a student of another width (16)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dinolab.cli import main
from dinolab.models import DINOv3ViT
from dinolab.train.checkpoint import load_checkpoint
from dinolab.train.recipes.distill import DistillConfig, resize_patch_tokens, train_distill

FLAGS = [
    "--warmup_epochs", "0", "--embed_dim", "16", "--depth", "1", "--num_heads", "2",
    "--batch_size_per_gpu", "8", "--num_images", "32", "--num_eval_images", "8",
    "--local_crops_number", "2", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
    "--out_dim", "64", "--knn_k", "5", "--linear_probe_epochs", "0", "--no-progress",
    "--no-plots", "--device", "cpu",
    # Lesson 6's SPD weight: at the default 0.1 the SPD term (~700 on 8x8 patches) would be
    # most of the logged total, whose batch-to-batch noise would then hide the other terms.
    "--spd_loss_weight", "0.01",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def dinov3_teacher_file(path, patch_size: int = 4) -> dict[str, torch.Tensor]:
    """A DINOv3 ViT (official keys) of width 48, every tensor moved off its initial value."""
    torch.manual_seed(0)
    teacher = DINOv3ViT(patch_size=patch_size, embed_dim=48, depth=2, num_heads=3)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = teacher.state_dict()
    torch.save(state, path)
    return state


def losses(run) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "log_steps.jsonl").read_text().splitlines()]


def test_distill_from_a_dinov3_teacher_file_on_the_command_line(tmp_path, capsys):
    state = dinov3_teacher_file(tmp_path / "dinov3_teacher.pth")
    runs = {}
    for lr in ("0.005", "0"):  # the same run, learning and not learning
        out = tmp_path / f"run_lr{lr}"
        argv = ["train", "distill", "--teacher_pretrained_weights",
                str(tmp_path / "dinov3_teacher.pth"), "--output_dir", str(out), "--epochs", "4",
                "--lr", lr, "--min_lr", "0", *FLAGS]
        with pytest.warns(UserWarning, match="fixed random projection"):  # no DINO head saved
            assert main(argv) == 0
        capsys.readouterr()
        runs[lr] = losses(out)
    steps = runs["0.005"]
    assert len(steps) == 16
    for s in steps:
        parts = [s[f"{k}_loss"] for k in ("dino", "ibot", "koleo", "cls", "spd")]
        assert all(math.isfinite(p) for p in parts)
        weighted = parts[0] + parts[1] + 0.1 * parts[2] + parts[3] + 0.01 * parts[4]
        assert s["loss"] == pytest.approx(weighted, rel=1e-5)
    learning = [s["loss"] for s in steps]
    frozen = [s["loss"] for s in runs["0"]]
    late = slice(8, None)
    # The loss falls: well below its first value, and below the same run without learning
    # (whose DINO centre still moves), over the second half of the run.
    assert sum(learning[late]) / 8 < 0.85 * learning[0]
    assert sum(learning[late]) / 8 < 0.85 * sum(frozen[late]) / 8
    # The DINOv3 teacher stayed frozen and whole in the distill checkpoint.
    kept = load_checkpoint(tmp_path / "run_lr0.005" / "checkpoint.pth")["teacher"]
    for key, value in state.items():
        assert torch.equal(kept["backbone." + key], value), key


def test_a_patch_16_style_teacher_runs_at_its_own_resolution(tmp_path):
    dinov3_teacher_file(tmp_path / "t8.pth", patch_size=8)
    base = dict(
        output_dir=str(tmp_path / "run"), epochs=1, warmup_epochs=0, embed_dim=16, depth=1,
        num_heads=2, teacher_pretrained_weights=str(tmp_path / "t8.pth"), linear_probe_epochs=0,
        batch_size_per_gpu=4, num_images=8, num_eval_images=8, local_crops_number=2,
        head_hidden_dim=32, head_bottleneck_dim=16, out_dim=32, knn_k=5, progress=False,
        plots=False, device="cpu",
    )
    # 8-px teacher patches against the student's 4-px ones: refused as they are ...
    with (pytest.raises(ValueError, match="iBOT compares patches.*--teacher_crops_size, e.g. 64"),
          pytest.warns(UserWarning, match="fixed random projection")):
        train_distill(DistillConfig(**base))
    # ... and run with the teacher at 48 px: a 6x6 grid, its tokens resized to the student's 8x8.
    with pytest.warns(UserWarning, match="fixed random projection"):
        record = train_distill(DistillConfig(teacher_crops_size=48, **base))
    assert math.isfinite(record["train_loss"])
    for s in losses(tmp_path / "run"):
        assert math.isfinite(s["ibot_loss"]) and math.isfinite(s["spd_loss"])
    with (pytest.raises(ValueError, match="--teacher_crops_size 44 must be a positive multiple "
                                          "of the teacher's patch size 8"),
          pytest.warns(UserWarning, match="fixed random projection")):
        train_distill(DistillConfig(**{**base, "output_dir": str(tmp_path / "r2")},
                                    teacher_crops_size=44))


def test_resize_patch_tokens_keeps_smooth_maps_and_counts():
    # A map linear in x survives bicubic resizing inside (up to the border's clamping).
    h = w = 6
    ramp = torch.arange(w, dtype=torch.float32).repeat(h, 1).reshape(1, h * w, 1)
    same = resize_patch_tokens(ramp, (h, w), (h, w))
    torch.testing.assert_close(same, ramp)
    up = resize_patch_tokens(torch.ones(2, 9, 5), (3, 3), (8, 8))
    assert up.shape == (2, 64, 5)
    torch.testing.assert_close(up, torch.ones(2, 64, 5))
    with pytest.raises(ValueError, match="10 tokens do not form the 3x3 grid"):
        resize_patch_tokens(torch.ones(1, 10, 5), (3, 3), (8, 8))
