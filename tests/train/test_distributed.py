"""torch.distributed helpers, and 2 CPU processes under torchrun against 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from dinolab.train import distributed as du
from dinolab.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_single_process_defaults(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = du.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    du.barrier()  # a no-op, must not hang
    assert du.all_reduce_mean(torch.tensor(2.5)) == 2.5
    sampler = du.make_sampler(TensorDataset(torch.arange(10)), shuffle=True, seed=3)
    sampler.set_epoch(1)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()
    assert list(sampler) == expected  # the permutation of seed + epoch


def test_bad_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"RANK=3 is not in \[0, WORLD_SIZE=2\)"):
        du.init_distributed("cpu")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero' is not an integer"):
        du.init_distributed("cpu")


def test_a_single_process_on_a_named_gpu_makes_it_the_current_one(monkeypatch):
    """``--device cuda:3``: GPU 3 becomes current, so checkpoints save its CUDA RNG state.

    torch.cuda is faked (4 GPUs, GPU 0 current); the test fails if GPU 3 is not selected.
    """
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    current = [0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.__setitem__(0, int(d)))
    info = du.init_distributed("cuda:3")
    assert (info.device, current[0], info.distributed) == (torch.device("cuda", 3), 3, False)
    # Plain "cuda" keeps the current GPU (the caller's choice) instead of jumping to GPU 0.
    assert du.init_distributed("cuda").device == torch.device("cuda", 3)
    with pytest.raises(ValueError, match=r"'cuda:4' was requested but only 4 GPUs are visible"):
        du.init_distributed("cuda:4")


FLAGS = [
    "--device",
    "cpu",
    "--epochs",
    "2",
    "--num_images",
    "16",
    "--num_eval_images",
    "8",
    "--local_crops_number",
    "2",
    "--out_dim",
    "64",
    "--head_hidden_dim",
    "32",
    "--head_bottleneck_dim",
    "16",
    "--embed_dim",
    "32",
    "--depth",
    "2",
    "--num_heads",
    "2",
    "--knn_k",
    "5",
    "--warmup_epochs",
    "0",
    "--progress",
    "false",
    "--plots",
    "false",
    # SGD keeps a weight update linear in the gradient, so float rounding in the all-reduce
    # stays at rounding size (Adam divides by sqrt(v) and can amplify it for tiny gradients).
    # No drop-path: each rank draws its own masks, which one process cannot reproduce. No
    # KoLeo: each rank finds nearest neighbours within its own batch (as DINOv2), so its value
    # depends on how the batch is split. No iBOT: each rank draws its own patch masks.
    "--koleo_loss_weight",
    "0",
    "--ibot_loss_weight",
    "0",
    "--optimizer",
    "sgd",
    "--lr",
    "2.0",
    "--drop_path_rate",
    "0",
]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def _single(recipe: str, flags: list[str], cwd: Path) -> None:
    """``python -m dinolab train <recipe> <flags>`` in one process."""
    _run([sys.executable, "-m", "dinolab", "train", recipe, *flags], cwd)


def _torchrun(recipe: str, flags: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "dinolab",
            "train",
            recipe,
            *flags,
        ],
        cwd,
    )


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _single("dino", [*FLAGS, "--batch_size_per_gpu", "8", "--output_dir", str(one)], tmp_path)
    _torchrun("dino", [*FLAGS, "--batch_size_per_gpu", "4", "--output_dir", str(two)], tmp_path)

    steps = [
        [json.loads(x) for x in (d / "log_steps.jsonl").read_text().splitlines()]
        for d in (one, two)
    ]
    assert len(steps[0]) == len(steps[1]) == 4  # 16 images / global batch 8, 2 epochs
    for s1, s2 in zip(*steps, strict=True):
        # The 2-process loss is the mean of the ranks' losses over 4 images each: equal to
        # the 1-process loss over the same 8 images up to float32 rounding (rtol 1e-5).
        assert s2["loss"] == pytest.approx(s1["loss"], rel=1e-5)
        assert s2["lr"] == pytest.approx(s1["lr"], rel=1e-12)  # lr * (4 * 2) / 256 in both
    epochs = [json.loads(x) for x in (two / "log_epochs.jsonl").read_text().splitlines()]
    assert all(e["rank_weight_spread"] == 0.0 for e in epochs)  # identical on both ranks

    a, b = load_checkpoint(one / "checkpoint.pth"), load_checkpoint(two / "checkpoint.pth")
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    moved = 0.0
    for part in ("student", "teacher", "dino_loss"):
        for key, value in a[part].items():
            if not value.is_floating_point():
                continue
            # Tolerance 1e-5 absolute: gradients are averaged in another order (all-reduce
            # of two half-batch means vs one mean); the weights move by ~1e-2, so a wrong
            # gradient, center or teacher update would show far above it.
            torch.testing.assert_close(b[part][key], value, rtol=0, atol=1e-5, msg=f"{part}.{key}")
    # The teacher is an EMA that trails the student: their gap shows how far training moved
    # the weights (teacher and student start equal).
    for key, value in a["student"].items():
        if key.startswith("backbone.blocks") and value.is_floating_point():
            moved = max(moved, float((value - a["teacher"][key]).abs().max()))
    assert moved > 1e-3, "the student barely moved: the comparison would prove nothing"


COMMON = ["--device", "cpu", "--progress", "false", "--plots", "false"]


def test_kd_and_distill_run_on_two_gloo_processes_with_identical_ranks(tmp_path):
    """The other two recipes under torchrun: they finish, and DDP keeps the ranks equal."""
    kd = tmp_path / "kd"
    done = _torchrun(
        "kd",
        [
            *COMMON,
            "--epochs",
            "1",
            "--num_images",
            "192",
            "--batch_size_per_gpu",
            "16",
            "--teacher_width",
            "8",
            "--student_width",
            "4",
            "--phases",
            "teacher",
            "student_kd",
            "--output_dir",
            str(kd),
        ],
        tmp_path,
    )
    results = json.loads((kd / "results.json").read_text())
    assert set(results) == {"teacher", "student_kd"}
    # The conv nets have BatchNorm, and CPU processes cannot sync it: rank 0 says so.
    assert "BatchNorm under torchrun without SyncBatchNorm (CPU processes)" in done.stderr
    for phase in results:
        epochs = [json.loads(x) for x in (kd / phase / "log_epochs.jsonl").read_text().splitlines()]
        # DDP all-reduces the gradients, so both ranks apply the same update; BatchNorm's
        # running statistics are each rank's own (no SyncBatchNorm), which the spread ignores.
        assert all(e["rank_weight_spread"] == 0.0 for e in epochs), phase
        assert load_checkpoint(kd / phase / "checkpoint.pth")["world_size"] == 2

    teacher = tmp_path / "teacher"
    small = ["--num_images", "16", "--num_eval_images", "8", "--local_crops_number", "2"]
    small += ["--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--knn_k", "5"]
    small += ["--warmup_epochs", "0"]
    _single(
        "dino",
        [
            *COMMON,
            *small,
            "--epochs",
            "1",
            "--batch_size_per_gpu",
            "4",
            "--out_dim",
            "64",
            "--embed_dim",
            "32",
            "--depth",
            "2",
            "--num_heads",
            "2",
            "--output_dir",
            str(teacher),
        ],
        tmp_path,
    )
    distill = tmp_path / "distill"
    _torchrun(
        "distill",
        [
            *COMMON,
            *small,
            "--epochs",
            "1",
            "--batch_size_per_gpu",
            "4",
            "--embed_dim",
            "16",
            "--depth",
            "2",
            "--num_heads",
            "2",
            "--linear_probe_epochs",
            "0",
            "--teacher_pretrained_weights",
            str(teacher / "checkpoint.pth"),
            "--output_dir",
            str(distill),
        ],
        tmp_path,
    )
    steps = [json.loads(x) for x in (distill / "log_steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2  # 16 images / (4 per process x 2 processes)
    epochs = [json.loads(x) for x in (distill / "log_epochs.jsonl").read_text().splitlines()]
    assert all(e["rank_weight_spread"] == 0.0 for e in epochs)
    assert load_checkpoint(distill / "checkpoint.pth")["world_size"] == 2

    # Without the DINO and iBOT terms nothing would give a DINO head a gradient, and DDP fails
    # on the second step ("Expected to have finished reduction"): the student has no head.
    no_head = tmp_path / "no_head"
    flags = [*COMMON, *small, "--epochs", "1", "--batch_size_per_gpu", "4", "--embed_dim", "16"]
    flags += ["--depth", "2", "--num_heads", "2", "--linear_probe_epochs", "0"]
    flags += ["--dino_loss_weight", "0", "--ibot_loss_weight", "0"]
    _torchrun(
        "distill",
        [*flags, "--teacher_pretrained_weights", str(teacher / "checkpoint.pth"),
         "--output_dir", str(no_head)],
        tmp_path,
    )
    steps = [json.loads(x) for x in (no_head / "log_steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and {"cls_loss", "koleo_loss", "spd_loss"} <= set(steps[-1])
    assert "dino_loss" not in steps[-1] and "ibot_loss" not in steps[-1]
    student = load_checkpoint(no_head / "checkpoint.pth")["student"]
    assert not any(k.startswith("head.") for k in student)


def _info(device: str, world_size: int) -> du.DistInfo:
    backend = None if world_size == 1 else ("nccl" if device == "cuda" else "gloo")
    return du.DistInfo(0, world_size, 0, torch.device(device), backend)


def test_sync_batchnorm_only_on_several_gpu_processes():
    from dinolab.train.engine import TrainConfig, wants_sync_batchnorm

    on, off = TrainConfig(), TrainConfig(sync_bn=False)
    assert wants_sync_batchnorm(on, _info("cuda", 2))
    assert not wants_sync_batchnorm(off, _info("cuda", 2))
    assert not wants_sync_batchnorm(on, _info("cuda", 1))  # one process: nothing to sync
    assert not wants_sync_batchnorm(on, _info("cpu", 2))  # PyTorch has no CPU SyncBatchNorm


def test_sync_batchnorm_conversion_keeps_tensors_keys_and_the_frozen_teacher(tmp_path):
    """What the engine does on GPU ranks, checked on the CPU: the conversion itself."""
    import torch.nn as nn

    from dinolab.ema import ema_update
    from dinolab.train.engine import convert_sync_batchnorm_in_place
    from dinolab.train.recipes.dino import DINOConfig, DINOTask, build_student
    from dinolab.train.recipes.kd import KDTask

    def batchnorms(module: nn.Module) -> tuple[int, int]:
        sync = sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
        plain = sum(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in module.modules())
        return sync, plain

    cfg = DINOConfig(output_dir=str(tmp_path), arch="resnet18", out_dim=16,
                     head_hidden_dim=8, head_bottleneck_dim=4, device="cpu")
    task = DINOTask(cfg, build_student(cfg), None)
    tensors = {k: v.data_ptr() for k, v in task.pair.state_dict().items()}
    n_bn = batchnorms(task.student)[1]
    assert n_bn > 0
    task.convert_sync_batchnorm()
    # Student and teacher alike (the DINO teacher normalises with batch statistics too) ...
    assert batchnorms(task.student) == batchnorms(task.teacher) == (n_bn, 0)
    # ... and the same tensors under the same names: optimiser groups, EMA pairs and
    # checkpoints are unaffected.
    assert {k: v.data_ptr() for k, v in task.pair.state_dict().items()} == tensors
    ema_update(task.teacher, task.student, 0.5)

    student, teacher = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
    )
    kd = KDTask("student_kd", student, teacher, TensorDataset(torch.zeros(1)), 2.0, None, None)
    kd.convert_sync_batchnorm()
    assert batchnorms(kd.student) == (1, 0)
    assert batchnorms(teacher) == (0, 1)  # frozen, in eval mode: its running statistics
    with pytest.raises(TypeError, match="BatchNorm2d is itself a BatchNorm layer"):
        convert_sync_batchnorm_in_place(nn.BatchNorm2d(3))


NAN_ON_RANK_1 = '''
import sys

import torch

from dinolab.data import CropParams
from dinolab.train import distributed as du
from dinolab.train.engine import NonFiniteLossError, SeededTransform
from dinolab.train.recipes.common import build_ssl_data
from dinolab.train.recipes.dino import DINOConfig, train_dino


class NaNOnRank1(SeededTransform):
    """From the second epoch on, every image that rank 1 reads is NaN; rank 0's are fine."""

    def __getitem__(self, index):
        crops, label = super().__getitem__(index)
        if self.epoch >= 1 and du.get_rank() == 1:
            if isinstance(crops, CropParams):
                crops = CropParams(torch.full(crops.image.shape, float("nan")), crops.params)
            else:
                crops = [torch.full_like(c, float("nan")) for c in crops]
        return crops, label


du.init_distributed("cpu", timeout_s=60)
rank = du.get_rank()
mine = torch.tensor([float("nan") if rank == 1 else 1.0])
print(f"rank {rank} helper: {du.finite_on_every_rank(torch.ones(3), mine)}", flush=True)
cfg = DINOConfig(
    output_dir=sys.argv[1], epochs=2, batch_size_per_gpu=4, num_images=16, num_eval_images=8,
    local_crops_number=2, out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16,
    embed_dim=32, depth=2, num_heads=2, warmup_epochs=0, knn_k=5, progress=False,
    plots=False, device="cpu",
)
data = build_ssl_data(cfg)
t = data.train_set
data.train_set = NaNOnRank1(t.dataset, t.transform, t.seed)
try:
    train_dino(cfg, data=data)
    print(f"rank {rank} finished", flush=True)
except NonFiniteLossError as e:
    print(f"rank {rank} stopped: {e}", flush=True)
finally:
    du.cleanup()
'''


def test_a_nan_on_one_rank_stops_every_rank_instead_of_hanging(tmp_path):
    """Non-finite outputs on rank 1 only: both ranks stop with the step named.

    Before the decision was all-reduced, rank 1 returned before the DINO loss and so skipped
    the center's all-reduce that rank 0 entered: the collectives no longer matched (a hang
    until the timeout under NCCL, a size mismatch or hang under gloo).
    """
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = _run([*cmd, str(script), str(tmp_path / "run")], tmp_path)
    for rank in (0, 1):
        # The helper: rank 1's NaN makes both ranks answer False.
        assert f"rank {rank} helper: False" in done.stdout
        # 16 images / (4 per process x 2) = 2 steps per epoch: epoch 2 begins at step 2.
        assert (
            f"rank {rank} stopped: training stopped: the loss is nan at step 2 "
            "(epoch 2/2, batch 1/2)" in done.stdout
        ), done.stdout[-2000:] + done.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pth")  # epoch 1's, intact
    assert ckpt["epoch"] == 1
