"""The engine's building blocks against official DINO's formulas, and the engine on a toy task."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dinolab.schedules import cosine_schedule
from dinolab.train.checkpoint import load_checkpoint
from dinolab.train.engine import (
    Engine,
    NonFiniteLossError,
    SeededTransform,
    StepContext,
    Task,
    TrainConfig,
    cancel_gradients_last_layer,
    clip_gradients,
    get_params_groups,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, 3, 4))  # 3-D: decayed, as official
        self.fc = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.last_layer = nn.Linear(8, 3, bias=False)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.norm(self.fc(x + self.pos_embed[0, 0])))


def test_params_groups_follow_official_dino():
    net = Net()
    regularized, not_regularized = get_params_groups(net)
    ids = {id(p) for p in regularized["params"]}
    assert ids == {id(net.pos_embed), id(net.fc.weight), id(net.last_layer.weight)}
    assert {id(p) for p in not_regularized["params"]} == {
        id(net.fc.bias),
        id(net.norm.weight),
        id(net.norm.bias),
    }
    assert not_regularized["weight_decay"] == 0.0  # frozen params are in neither group


def test_clip_gradients_matches_the_official_per_parameter_loop():
    torch.manual_seed(0)
    net = Net()
    net(torch.randn(5, 4)).pow(2).sum().backward()
    # A bound between the smallest and largest gradient norm, so both branches run.
    clip = float(np.median([float(p.grad.norm()) for p in net.parameters() if p.grad is not None]))
    reference = {}
    for name, p in net.named_parameters():  # official DINO's utils.clip_gradients, written out
        if p.grad is None:
            continue
        g = p.grad.clone()
        norm = g.norm(2)
        coef = clip / (norm + 1e-6)
        reference[name] = g * coef if coef < 1 else g
    norms = clip_gradients(net, clip)
    assert len(norms) == len(reference)
    assert max(norms) > clip > min(norms)  # both branches are exercised
    for name, p in net.named_parameters():
        if p.grad is not None:
            # 1e-6: one float32 rounding of the product (small gradients are untouched exactly).
            torch.testing.assert_close(p.grad, reference[name], rtol=1e-6, atol=1e-7)
            assert float(p.grad.norm()) <= clip * (1 + 1e-5)


def test_last_layer_gradients_are_dropped_only_while_frozen():
    net = Net()
    net(torch.randn(2, 4)).sum().backward()
    cancel_gradients_last_layer(epoch=1, model=net, freeze_last_layer=1)
    assert net.last_layer.weight.grad is not None
    cancel_gradients_last_layer(epoch=0, model=net, freeze_last_layer=1)
    assert net.last_layer.weight.grad is None and net.fc.weight.grad is not None


def test_seeded_transform_depends_only_on_seed_epoch_and_index():
    images = TensorDataset(torch.zeros(6, 2), torch.arange(6))
    noise = SeededTransform(images, lambda x: x + torch.rand(2), seed=3)
    first = [noise[i][0] for i in range(6)]
    torch.manual_seed(123)  # the global generator must not matter, and must not move
    state = torch.get_rng_state()
    again = [noise[i][0] for i in reversed(range(6))][::-1]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    noise.set_epoch(1)
    assert not torch.equal(noise[0][0], first[0])


def test_seeded_transform_seeds_python_and_numpy_unless_the_transform_is_torch_only():
    import random

    from dinolab.data import BatchedMultiCrop

    images = TensorDataset(torch.zeros(4, 2), torch.arange(4))
    mixed = SeededTransform(images, lambda x: (random.random(), float(np.random.rand())), seed=5)
    random.seed(7)
    np.random.seed(7)
    py_state, np_state = random.getstate(), np.random.get_state()
    first = [mixed[i][0] for i in range(4)]
    assert [mixed[i][0] for i in range(4)] == first and len(set(first)) == 4
    assert random.getstate() == py_state and np.array_equal(np.random.get_state()[1], np_state[1])
    # dinolab's multi-crop draws from torch only: its draw is that of torch.manual_seed(s1).
    aug = BatchedMultiCrop(global_crops_size=8, local_crops_size=4, local_crops_number=1)
    assert aug.torch_rng_only
    image = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    crops = SeededTransform(TensorDataset(image[None], torch.zeros(1)), aug, seed=5)
    s1 = int(np.random.SeedSequence([5, 0, 0]).generate_state(3)[0])
    torch.manual_seed(s1)
    assert torch.equal(crops[0][0].params, aug(image).params)
    assert random.getstate() == py_state


class Toy(Task):
    """Linear regression on a fixed target; loss becomes NaN from ``nan_at`` on."""

    name = "toy"
    scale_lr = False

    def __init__(self, nan_at: int | None = None) -> None:
        torch.manual_seed(0)  # a recipe seeds before building its models
        self.student = Net()
        self.nan_at = nan_at

    def training_step(self, batch, ctx: StepContext):
        x, y = batch
        loss = F.cross_entropy(ctx.student(x), y)
        if self.nan_at is not None and ctx.it >= self.nan_at:
            loss = loss * float("nan")
        return loss, {"double": 2.0 * float(loss.detach())}

    def evaluate(self, epoch: int):
        return {"val_acc": 10.0 * epoch}


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(24, 4, generator=g), torch.randint(0, 3, (24,), generator=g))


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path),
        epochs=3,
        batch_size_per_gpu=8,
        lr=0.05,
        min_lr=0.001,
        warmup_epochs=1,
        weight_decay=0.04,
        weight_decay_end=0.4,
        progress=False,
        plots=False,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


class Recording(Toy):
    """Toy that keeps every batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def training_step(self, batch, ctx: StepContext):
        self.batches.append(batch[0].clone())
        return super().training_step(batch, ctx)


def test_loader_workers_see_each_epochs_augmentations(tmp_path):
    """With a worker process, epoch 2 is augmented as epoch 2, not again as epoch 1.

    Workers hold copies of the data set: persistent workers would keep the copy from the
    first epoch, whose ``set_epoch`` the engine cannot reach, and repeat its augmentations.
    """
    data = SeededTransform(_data(), lambda x: x + torch.rand(4), seed=1)
    task = Recording()
    Engine(task, data, _cfg(tmp_path, epochs=2, batch_size_per_gpu=24, num_workers=1)).fit()
    for epoch, batch in enumerate(task.batches):  # one batch of all 24 images per epoch
        data.set_epoch(epoch)
        expected = sorted(tuple(data[i][0].tolist()) for i in range(24))
        assert sorted(tuple(row.tolist()) for row in batch) == expected, f"epoch {epoch + 1}"


def test_engine_applies_official_schedules_and_logs_every_step(tmp_path):
    engine = Engine(Toy(), _data(), _cfg(tmp_path))
    record = engine.fit()
    steps = [json.loads(line) for line in (tmp_path / "log_steps.jsonl").read_text().splitlines()]
    assert [s["it"] for s in steps] == list(range(9))  # 24 images / 8 = 3 steps x 3 epochs
    lr = cosine_schedule(0.05, 0.001, 3, 3, warmup_epochs=1)
    wd = cosine_schedule(0.04, 0.4, 3, 3)
    for s in steps:
        # Warm-up linspace(0, 0.05, 3), then 0.001 + 0.5 (0.05 - 0.001)(1 + cos(pi i / 6)).
        i = s["it"] - 3
        expected = (
            0.025 * s["it"]
            if s["it"] < 3
            else 0.001 + 0.5 * 0.049 * (1 + math.cos(math.pi * i / 6))
        )
        assert s["lr"] == pytest.approx(expected, rel=1e-12) == pytest.approx(lr[s["it"]])
        assert s["wd"] == pytest.approx(wd[s["it"]], rel=1e-12)
        assert s["double"] == pytest.approx(2 * s["loss"], rel=1e-6)
    # The optimiser saw the schedule: weight decay on group 0 only.
    groups = engine.optimizer.param_groups
    assert groups[0]["weight_decay"] == pytest.approx(wd[8]) and groups[1]["weight_decay"] == 0.0
    epochs = [json.loads(line) for line in (tmp_path / "log_epochs.jsonl").read_text().splitlines()]
    assert [e["val_acc"] for e in epochs] == [0.0, 10.0, 20.0]
    for e in epochs:  # wall and CPU time of each epoch's training and of its evaluation
        for key in ("epoch_time_s", "epoch_cpu_time_s", "eval_time_s", "eval_cpu_time_s"):
            assert math.isfinite(e[key]) and e[key] >= 0.0, (key, e)
    assert record["train_loss"] == pytest.approx(np.mean([s["loss"] for s in steps[6:]]))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    assert ckpt["epoch"] == 3 and ckpt["step"] == 9 and ckpt["recipe"] == "toy"
    assert ckpt["args"]["lr"] == 0.05


def test_frozen_last_layer_does_not_move_in_the_first_epoch(tmp_path):
    task = Toy()
    before = task.student.last_layer.weight.detach().clone()
    seen = []

    def watch(engine, record):
        seen.append(torch.equal(task.student.last_layer.weight, before))

    Engine(task, _data(), _cfg(tmp_path, epochs=2, freeze_last_layer=1), callbacks=[watch]).fit()
    assert seen == [True] * 3 + [False] * 3


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    good = {}

    def remember(engine, record):
        if record["it"] == 3:  # first step of epoch 2: the checkpoint of epoch 1 exists
            good["bytes"] = (tmp_path / "checkpoint.pth").read_bytes()

    engine = Engine(Toy(nan_at=4), _data(), _cfg(tmp_path), callbacks=[remember])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4 \(epoch 2/3, batch 2/3\)"):
        engine.fit()
    assert (tmp_path / "checkpoint.pth").read_bytes() == good["bytes"]
    assert load_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 1


def test_resume_after_an_interruption_ends_with_the_same_weights(tmp_path):
    Engine(Toy(), _data(), _cfg(tmp_path / "a")).fit()

    def interrupt(engine, record):
        if record["it"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Engine(Toy(), _data(), _cfg(tmp_path / "b"), callbacks=[interrupt]).fit()
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        Engine(Toy(), _data(), _cfg(tmp_path / "b")).fit()
    Engine(Toy(), _data(), _cfg(tmp_path / "b", resume=True)).fit()
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pth")
    for k in a["student"]:
        # Same process, same kernels: bit-for-bit equal (tolerance 0).
        assert torch.equal(a["student"][k], b["student"][k]), k
    log_a = (tmp_path / "a" / "log_steps.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "log_steps.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k != "step_time_s"} for r in log_a]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "step_time_s"} for r in log_b]


def test_resume_without_a_checkpoint_and_bad_settings_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Engine(Toy(), _data(), _cfg(tmp_path, resume=True)).fit()
    with pytest.raises(ValueError, match="warmup_epochs must be in"):
        Engine(Toy(), _data(), _cfg(tmp_path, warmup_epochs=5))
    with pytest.raises(ValueError, match="fewer than one batch"):
        Engine(Toy(), _data(), _cfg(tmp_path, batch_size_per_gpu=64))
    with pytest.raises(ValueError, match="precision 'fp16' needs CUDA"):
        Engine(Toy(), _data(), _cfg(tmp_path, precision="fp16"))
    with pytest.raises(ValueError, match="lr must be a finite number"):
        Engine(Toy(), _data(), _cfg(tmp_path, lr=float("nan")))


def test_min_lr_above_the_peak_lr_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"min_lr=0.1 is above the peak learning rate 0.05"):
        Engine(Toy(), _data(), _cfg(tmp_path, min_lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Engine(Toy(), _data(), _cfg(tmp_path / "ok"))


def test_bf16_autocast_runs_on_cpu(tmp_path):
    record = Engine(Toy(), _data(), _cfg(tmp_path, epochs=1, precision="bf16")).fit()
    assert math.isfinite(record["train_loss"])


def test_bf16_on_a_gpu_that_only_emulates_it_is_refused(monkeypatch):
    """torch.cuda is faked: a V100/T4 answers True only when emulation counts."""
    from dinolab.train.engine import autocast_context

    asked = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    with pytest.raises(ValueError, match="no native bfloat16"):
        autocast_context("bf16", torch.device("cuda"))
    assert asked == [False]


def test_config_from_checkpoint_args_drops_unknown_keys_and_restores_tuples(tmp_path):
    from dinolab.train.recipes.dino import DINOConfig

    cfg = DINOConfig(output_dir=str(tmp_path), epochs=3, global_crops_scale=(0.5, 1.0))
    args = json.loads(json.dumps(vars(cfg)))  # as a checkpoint or config.json stores it
    assert isinstance(args["global_crops_scale"], list)
    args["from_a_newer_version"] = 1
    assert DINOConfig.from_args(args) == cfg
    assert TrainConfig.from_args({"epochs": 4}).epochs == 4


def test_epoch_means_average_a_metric_over_the_steps_that_report_it(tmp_path):
    class Sometimes(Toy):
        def training_step(self, batch, ctx: StepContext):
            loss, metrics = super().training_step(batch, ctx)
            if ctx.it % 3 == 1:  # steps 1, 4, 7 of 3 x 3
                metrics["rare"] = float(ctx.it)
            return loss, metrics

    Engine(Sometimes(), _data(), _cfg(tmp_path)).fit()
    epochs = [json.loads(line) for line in (tmp_path / "log_epochs.jsonl").read_text().splitlines()]
    assert [e["train_rare"] for e in epochs] == [1.0, 4.0, 7.0]  # not 1/3, 4/3, 7/3


def test_every_engine_name_is_still_importable_from_dinolab_train_engine():
    # engine.py was split by idea (config, device, optim, task, seeded); the old import path
    # must keep giving the very same objects.
    import dinolab.train.config as config
    import dinolab.train.device as device
    import dinolab.train.engine as engine
    import dinolab.train.optim as optim
    import dinolab.train.seeded as seeded
    import dinolab.train.task as task

    homes = (config, device, optim, seeded, task)
    for name in engine.__all__:
        obj = getattr(engine, name)
        if name != "Engine":
            assert any(getattr(home, name, None) is obj for home in homes), name
