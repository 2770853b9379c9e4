"""The ``kd`` recipe: four phases on a slice of the bundled digits, EMA and train/eval modes."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from dinolab.train.engine import StepContext
from dinolab.train.recipes.kd import (
    PHASES,
    KDConfig,
    KDTask,
    SupervisedTask,
    load_kd_data,
    random_shift,
    train_kd,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(tmp_path, **kw) -> KDConfig:
    base = dict(
        output_dir=str(tmp_path),
        epochs=2,
        batch_size_per_gpu=32,
        num_images=192,
        img_size=16,
        teacher_width=8,
        student_width=4,
        progress=False,
        plots=False,
        device="cpu",
    )
    base.update(kw)
    return KDConfig(**base)


def test_kd_data_is_a_stratified_standardised_split(tmp_path):
    train, val, classes, channels = load_kd_data(tiny(tmp_path, num_images=3000))
    assert (classes, channels) == (10, 1)
    assert len(train) + len(val) == 1797
    assert train.tensors[0].shape[1:] == (1, 16, 16)
    counts = torch.bincount(val.tensors[1], minlength=10).float()
    assert float(counts.min()) >= 0.2 * 170 and float(counts.max()) <= 0.3 * 185  # ~25% each
    x = train.tensors[0]
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(x.std()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="img_size=24 must be a positive multiple of 16"):
        load_kd_data(tiny(tmp_path, img_size=24))


def test_all_four_phases_run_and_write_the_results_table(tmp_path):
    modes = []

    def watch(engine, record):
        task = engine.task
        modes.append(
            (
                task.name,
                task.student.training,
                getattr(task, "teacher", nn.Module()).training if task.name != "teacher" else None,
            )
        )

    results = train_kd(tiny(tmp_path), callbacks=[watch])
    assert list(results) == list(PHASES)
    for name, r in results.items():
        assert 0.0 <= r["val_acc"] <= 100.0
        assert (r["ema_val_acc"] is None) == (name == "teacher")
    assert results["teacher"]["parameters"] > 5 * results["student_kd"]["parameters"]
    assert len({r["parameters"] for n, r in results.items() if n != "teacher"}) == 1
    # Students train in train mode after every evaluation; the KD teacher stays in eval mode.
    assert all(student_training for _, student_training, _ in modes)
    assert all(t is False for name, _, t in modes if name in ("student_kd", "student_kd_ce"))
    table = (tmp_path / "results.md").read_text()
    assert "| student_kd_ce |" in table and "EMA" in table
    assert json.loads((tmp_path / "results.json").read_text()) == results
    # --resume after the end re-evaluates each finished phase and changes nothing.
    assert train_kd(tiny(tmp_path, resume=True)) == results


def test_kd_teacher_runs_without_autograd_and_the_loss_mixes_ce():
    torch.manual_seed(0)
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    val = TensorDataset(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    task = KDTask(
        "student_kd_ce", student, teacher, val, temperature=4.0, alpha=0.9, ema_momentum=None
    )
    loss = task.loss(student(x), x, y)
    loss.backward()
    assert teacher.weight.grad is None and not teacher.weight.requires_grad
    # Hinton's mix written out: 0.9 * T^2 * KL(p_t || p_s) at T=4 + 0.1 * CE.
    with torch.no_grad():
        pt = torch.softmax(teacher(x) / 4, dim=1)
        log_ps = torch.log_softmax(student(x) / 4, dim=1)
        kl = (pt * (pt.log() - log_ps)).sum(dim=1).mean() * 16
        ce = nn.functional.cross_entropy(student(x), y)
    assert float(loss.detach()) == pytest.approx(float(0.9 * kl + 0.1 * ce), rel=1e-5)


def test_student_ema_averages_its_own_weights_and_copies_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    task = SupervisedTask("s", model, TensorDataset(torch.zeros(1, 3), torch.zeros(1)), 0.9)
    before = copy.deepcopy(task.ema.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(8, 3))  # moves the running statistics
    ctx = StepContext(0, 0, 0, 1, 1, model, torch.device("cpu"), 0.1, 0.0)
    assert task.after_optimizer_step(ctx) == {"momentum": 0.9}
    for name, p in model.named_parameters():
        torch.testing.assert_close(
            task.ema.state_dict()[name], 0.9 * before[name] + 0.1 * p, rtol=1e-6, atol=1e-7
        )  # one float32 rounding
    assert torch.equal(
        task.ema.state_dict()["1.running_mean"], model.state_dict()["1.running_mean"]
    )


def _shift_reference(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[:, i, j] = img[:, clamp(i + dy), clamp(j + dx)], written as loops."""
    c, h, w = img.shape
    out = torch.empty_like(img)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = img[:, min(max(i + dy, 0), h - 1), min(max(j + dx, 0), w - 1)]
    return out


def test_random_shift_translates_each_image_within_the_range():
    torch.manual_seed(0)
    x = torch.rand(6, 2, 5, 7)
    assert random_shift(x, 0) is x
    out = random_shift(x, 2)
    seen = set()
    for b in range(6):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[b], _shift_reference(x[b], dy, dx))
        ]
        assert matches, f"image {b} is not a clamped shift of at most 2 pixels"
        seen.add(matches[0])
    assert len(seen) > 1  # shifts are drawn per image, not once per batch
    with pytest.raises(ValueError, match="max_shift=-1"):
        random_shift(x, -1)


def test_augment_shift_trains_every_phase_and_is_checked(tmp_path):
    results = train_kd(tiny(tmp_path, epochs=1, augment_shift=1))
    assert set(results) == set(PHASES)
    with pytest.raises(ValueError, match="augment_shift=-2"):
        train_kd(tiny(tmp_path / "bad", epochs=1, augment_shift=-2))


def test_the_students_start_from_the_same_weights_and_batches(tmp_path):
    # After the first step (lr 0 during warm-up's first step) every student phase holds the
    # same weights and BatchNorm statistics: same initialisation, same first batch.
    first: dict[str, dict[str, torch.Tensor]] = {}

    def watch(engine, record):
        task = engine.task
        if task.name != "teacher" and task.name not in first:
            assert record["lr"] == 0.0
            first[task.name] = copy.deepcopy(task.student.state_dict())

    train_kd(tiny(tmp_path, epochs=1), callbacks=[watch])
    assert sorted(first) == sorted(PHASES[1:])
    ref = first["student_labels"]
    for name in ("student_kd", "student_kd_ce"):
        for key, value in ref.items():
            torch.testing.assert_close(first[name][key], value, rtol=0, atol=0, msg=key)


def test_split_labelled_keeps_a_stratified_share_and_masks_the_rest():
    from dinolab.train.recipes.kd import split_labelled

    y = torch.arange(40) % 4  # 10 images per class
    x = torch.arange(40, dtype=torch.float32).view(40, 1)
    labelled, transfer = split_labelled(TensorDataset(x, y), 0.3, seed=0)
    lx, ly = labelled.tensors
    tx, ty = transfer.tensors
    assert len(labelled) == len(transfer) == 40  # same number of steps per epoch
    kept = ty >= 0
    assert torch.bincount(ty[kept], minlength=4).tolist() == [3, 3, 3, 3]
    assert torch.equal(tx, x) and torch.equal(ty[kept], y[kept])
    assert set(lx.flatten().tolist()) == set(x[kept].flatten().tolist())  # only labelled images
    assert torch.equal(ly, y[lx.flatten().long()])  # with their own labels
    same, same_t = split_labelled(TensorDataset(x, y), 1.0, seed=0)
    assert same.tensors[1] is y and same_t.tensors[1] is y
    with pytest.raises(ValueError, match=r"labelled_fraction=0.0 must be in \(0, 1\]"):
        split_labelled(TensorDataset(x, y), 0.0, seed=0)


def test_kd_ce_uses_only_labelled_rows_and_the_transfer_set_runs(tmp_path):
    torch.manual_seed(0)
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    val = TensorDataset(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    task = KDTask("student_kd_ce", student, teacher, val, temperature=2.0, alpha=0.5,
                  ema_momentum=None)
    x, y = torch.randn(6, 5), torch.tensor([0, -1, 2, -1, 1, -1])
    with torch.no_grad():
        kd = task.distill(student(x), teacher(x))
        ce = nn.functional.cross_entropy(student(x)[y >= 0], y[y >= 0])
        assert float(task.loss(student(x), x, y)) == pytest.approx(float(0.5 * kd + 0.5 * ce))
        none = torch.full((6,), -1)
        assert float(task.loss(student(x), x, none)) == pytest.approx(float(0.5 * kd))
    unlabelled: dict[str, int] = {}

    def watch(engine, record):
        unlabelled[engine.task.name] = int((engine.train_set.tensors[1] < 0).sum())

    results = train_kd(tiny(tmp_path, labelled_fraction=0.25), callbacks=[watch])
    assert all(0.0 <= r["val_acc"] <= 100.0 for r in results.values())
    # The teacher and the label-only student never see an unlabelled image; the KD students
    # see all of them (about 3/4 of the 144 training images here).
    assert unlabelled["teacher"] == unlabelled["student_labels"] == 0
    assert unlabelled["student_kd"] == unlabelled["student_kd_ce"] > 100
    # The counts it reports: 144 training images, the rest after the unlabelled ones.
    n_labelled = 144 - unlabelled["student_kd"]
    assert {(r["train_images"], r["labelled_images"]) for r in results.values()} == {
        (n_labelled, n_labelled),
        (144, n_labelled),
    }
    assert results["student_labels"]["train_images"] == n_labelled
