"""The ``dino`` recipe end to end on tiny synthetic data: a run, plots, resume, NaN stop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dinolab.data import CropParams
from dinolab.schedules import cosine_schedule
from dinolab.train.checkpoint import load_checkpoint
from dinolab.train.engine import NonFiniteLossError, SeededTransform
from dinolab.train.recipes.common import build_ssl_data
from dinolab.train.recipes.dino import DINOConfig, train_dino

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(tmp_path, **kw) -> DINOConfig:
    """16 images of 32 px, batch 4 (4 steps per epoch), a 2-block ViT of width 32."""
    base = dict(
        output_dir=str(tmp_path),
        epochs=2,
        batch_size_per_gpu=4,
        num_images=16,
        num_eval_images=8,
        local_crops_number=2,
        out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        warmup_epochs=1,
        knn_k=5,
        progress=False,
        plots=False,
        device="cpu",
    )
    base.update(kw)
    return DINOConfig(**base)


def _steps(path) -> list[dict]:
    return [json.loads(line) for line in (path / "log_steps.jsonl").read_text().splitlines()]


def test_a_short_dino_run_logs_monitors_knn_and_writes_everything(tmp_path):
    cfg = tiny(tmp_path, plots=True)
    record = train_dino(cfg)
    steps = _steps(tmp_path)
    assert len(steps) == 8
    momentum = cosine_schedule(cfg.momentum_teacher, 1.0, 2, 4)
    for s in steps:
        assert math.isfinite(s["loss"])
        # The monitors see exactly the loss's targets: h(P_t) + KL(P_t || P_s) = the DINO loss,
        # and the total adds the KoLeo term (weight 0.1 by default) and the iBOT term (1.0).
        assert s["cross_entropy"] == pytest.approx(s["dino_loss"], rel=1e-5)
        assert s["teacher_entropy"] + s["kl_teacher_student"] == pytest.approx(
            s["dino_loss"], rel=1e-5
        )
        total = (s["dino_loss"] + cfg.koleo_loss_weight * s["koleo_loss"]
                 + cfg.ibot_loss_weight * s["ibot_loss"])
        assert total == pytest.approx(s["loss"], rel=1e-5)
        assert 0.0 <= s["teacher_entropy"] <= math.log(64) + 1e-6
        assert s["momentum"] == pytest.approx(momentum[s["it"]])
    assert 0.0 <= record["knn_top1"] <= 100.0
    assert record["teacher_student_divergence"] > 0  # the EMA teacher trails the student
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    assert {"student", "teacher", "optimizer", "dino_loss", "rng", "args"} <= set(ckpt)
    assert ckpt["dino_loss"]["center"].shape == (1, 64)
    assert float(ckpt["dino_loss"]["center"].abs().sum()) > 0  # the center was updated
    assert ckpt["args"]["arch"] == "vit_micro" and ckpt["epoch"] == 2
    # The teacher key layout is official DINO's, so official tools read it.
    assert any(k.startswith("backbone.blocks.0.attn.qkv") for k in ckpt["teacher"])
    assert any(k.startswith("head.last_layer.weight_v") for k in ckpt["teacher"])
    for name in ("loss", "knn_accuracy", "teacher_entropy", "kl", "momentum", "lr"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name


def test_dino_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    train_dino(tiny(tmp_path / "full"))

    def interrupt(engine, record):
        if record["it"] == 5:  # in the middle of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dino(tiny(tmp_path / "cut"), callbacks=[interrupt])
    train_dino(tiny(tmp_path / "cut", resume=True))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pth")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pth")
    for part in ("student", "teacher", "dino_loss"):
        for key, value in a[part].items():
            # Tolerance 0: same process and kernels, and every random draw (sample order,
            # augmentations, drop-path) is replayed exactly.
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    la, lb = _steps(tmp_path / "full"), _steps(tmp_path / "cut")
    assert [s["loss"] for s in la] == [s["loss"] for s in lb]


def test_training_keeps_both_models_in_flat_buffers_with_unchanged_checkpoint_keys(tmp_path):
    # The EMA update lays teacher and student out as views into one buffer each
    # (dinolab.flat_params), so the resume test above and the 2-process run in
    # test_distributed.py exercise the flat layout; the checkpoint looks as before.
    from dinolab.flat_params import flat_view, floating_parameters
    from dinolab.train.recipes.dino import build_student

    seen = []

    def check(engine, record):
        models = (engine.task.teacher, engine.task.student)
        seen.append(all(flat_view(floating_parameters(m)) is not None for m in models))

    train_dino(tiny(tmp_path, epochs=1), callbacks=[check])
    assert seen == [True] * 4
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    keys = list(build_student(tiny(tmp_path)).state_dict())
    assert list(ckpt["student"]) == keys and list(ckpt["teacher"]) == keys


class PoisonedAfterEpoch1(SeededTransform):
    """Image ``bad_index`` turns into NaNs from the second epoch on."""

    bad_index = 0

    def __getitem__(self, index):
        crops, label = super().__getitem__(index)
        if self.epoch >= 1 and index == self.bad_index:
            if isinstance(crops, CropParams):  # batched augmentation: poison the image itself
                crops = CropParams(torch.full(crops.image.shape, float("nan")), crops.params)
            else:
                crops = [torch.full_like(c, float("nan")) for c in crops]
        return crops, label


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    cfg = tiny(tmp_path)
    data = build_ssl_data(cfg)
    t = data.train_set
    data.train_set = PoisonedAfterEpoch1(t.dataset, t.transform, t.seed)
    # Poison the image that epoch 2 visits last (DistributedSampler shuffles with seed + epoch):
    # step 7 = the last of 4 batches of epoch 2, after the epoch-1 checkpoint was written.
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(cfg.seed + 1)).tolist()
    data.train_set.bad_index = perm[-1]
    saved = {}

    def keep(engine, record):
        if record["it"] == 4:
            saved["bytes"] = (tmp_path / "checkpoint.pth").read_bytes()

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 7 \(epoch 2/2, batch 4/4\)"):
        train_dino(cfg, data=data, callbacks=[keep])
    assert (tmp_path / "checkpoint.pth").read_bytes() == saved["bytes"]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    assert ckpt["epoch"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["student"].values())


def test_teacher_gets_no_gradient_and_crop_sizes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="local_crops_size=10 must be a positive multiple"):
        build_ssl_data(tiny(tmp_path, local_crops_size=10))
    from dinolab.train.recipes.dino import DINOTask, build_student

    task = DINOTask(tiny(tmp_path), build_student(tiny(tmp_path)), None)
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert all(np.isfinite(float(p.detach().sum())) for p in task.student.parameters())


def test_dino_trains_on_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    cfg = tiny(tmp_path / "run", epochs=1, warmup_epochs=0, batch_size_per_gpu=2,
               data_path=str(tmp_path / "images"))
    data = build_ssl_data(cfg)
    assert len(data.train_set) == 10 and data.num_classes == 2
    assert len(data.knn_test) == 2 and len(data.knn_train) == 8  # every 5th image held out
    assert data.knn_test[0][0].shape == (3, 32, 32)
    record = train_dino(cfg, data=data)
    assert math.isfinite(record["train_loss"]) and 0 <= record["knn_top1"] <= 100
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        build_ssl_data(tiny(tmp_path, data_path=str(tmp_path / "nowhere")))
    # A query folder with only dogs: labelled 1 as in the training folder, not 0 as its own.
    (tmp_path / "queries" / "dogs").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "queries" / "dogs" / "0.png")
    data = build_ssl_data(tiny(tmp_path, data_path=str(tmp_path / "images"),
                               val_data_path=str(tmp_path / "queries")))
    assert data.num_classes == 2 and [y for _, y in data.knn_test] == [1]
    with pytest.raises(ValueError, match="--dataset digits is bundled and reads no --data_path"):
        build_ssl_data(tiny(tmp_path, dataset="digits", data_path=str(tmp_path / "images")))
    with pytest.warns(UserWarning, match="1 class: every k-NN vote is right"):
        build_ssl_data(tiny(tmp_path, data_path=str(tmp_path / "queries")))
    # tiny() sets 16 images and 8 test images: flags of the synthetic shapes, unused here.
    with pytest.warns(UserWarning, match="--num_images 16, --num_eval_images 8: the synthetic"):
        build_ssl_data(tiny(tmp_path, data_path=str(tmp_path / "images")))


def test_koleo_term_is_added_to_the_dino_loss_with_its_weight(tmp_path):
    cfg = tiny(tmp_path, epochs=1, koleo_loss_weight=0.5, ibot_loss_weight=0.0)
    train_dino(cfg)
    steps = _steps(tmp_path)
    assert len(steps) == 4
    for s in steps:
        # The logged loss is the sum the optimiser saw; rtol 1e-5 covers float32 rounding.
        assert math.isfinite(s["koleo_loss"]) and math.isfinite(s["dino_loss"])
        assert s["loss"] == pytest.approx(s["dino_loss"] + 0.5 * s["koleo_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="koleo_loss_weight=-1"):
        train_dino(tiny(tmp_path / "bad", koleo_loss_weight=-1.0))


def test_batched_and_per_crop_augmentation_both_train(tmp_path):
    from dinolab.data import BatchedMultiCrop
    from dinolab.data.multicrop import multicrop_collate

    batched = build_ssl_data(tiny(tmp_path))
    assert isinstance(batched.train_set.transform, BatchedMultiCrop)
    views, _ = batched.collate_fn([batched.train_set[i] for i in range(4)])
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    per_crop = build_ssl_data(tiny(tmp_path, batched_augmentation=False))
    assert per_crop.collate_fn is multicrop_collate
    record = train_dino(tiny(tmp_path / "per_crop", epochs=1, batched_augmentation=False))
    assert math.isfinite(record["train_loss"])


@pytest.mark.parametrize("batched", [True, False])
def test_rotation_flag_reaches_the_augmentation(tmp_path, batched):
    data = build_ssl_data(tiny(tmp_path, rotation_degrees=45.0, batched_augmentation=batched))
    assert data.train_set.transform.rotation_degrees == 45.0
    sample, _ = data.train_set[0]
    if batched:  # the angles are drawn with the other crop parameters
        angles = sample.params[:, 18]
        assert (angles.abs() <= 45.0).all() and (angles != 0).all()
    else:
        assert len(sample) == data.train_set.transform.num_crops
    # The dino recipe rotates by default (the shapes have no up); 0 turns it off.
    assert build_ssl_data(tiny(tmp_path)).train_set.transform.rotation_degrees == 180.0
    off = build_ssl_data(tiny(tmp_path, rotation_degrees=0.0))
    assert off.train_set.transform.rotation_degrees == 0.0


def test_knn_every_evaluates_every_n_epochs_and_after_the_last(tmp_path):
    from dinolab.train.recipes.common import knn_due

    assert [e for e in range(7) if knn_due(3, e, 7)] == [2, 5, 6]  # epochs 3, 6 and the last
    assert not any(knn_due(0, e, 7) for e in range(7))
    train_dino(tiny(tmp_path / "two", epochs=3, warmup_epochs=0, knn_every=2, plots=True))
    log = (tmp_path / "two" / "log_epochs.jsonl").read_text()
    epochs = [json.loads(x) for x in log.splitlines()]
    assert ["knn_top1" in e for e in epochs] == [False, True, True]
    assert (tmp_path / "two" / "knn_accuracy.png").is_file()  # plotted from the epochs it has
    record = train_dino(tiny(tmp_path / "never", epochs=1, warmup_epochs=0, knn_every=0))
    assert "knn_top1" not in record and math.isfinite(record["train_loss"])
    with pytest.raises(ValueError, match="--knn_every must be >= 0, got -1"):
        build_ssl_data(tiny(tmp_path, knn_every=-1))


def test_data_seed_draws_other_images_and_defaults_to_the_seed(tmp_path):
    from dinolab.data import Shapes

    def first_images(**kw):
        data = build_ssl_data(tiny(tmp_path, **kw))
        return data.knn_train[0][0], data.knn_test[0][0]

    default, default_test = first_images()
    same, _ = first_images(data_seed=0)
    other, other_test = first_images(data_seed=7)
    assert torch.equal(default, same) and not torch.equal(default, other)
    assert not torch.equal(default_test, other_test)
    # The dino recipe trains on the dark shapes of the data seed, one background level for all.
    expected = Shapes(n=16, seed=7, style="dark_fixed", as_tensor=True)[0][0]
    data = build_ssl_data(tiny(tmp_path, data_seed=7))
    assert torch.equal(data.train_set.dataset[0][0], expected)


def test_classic_settings_are_the_earlier_defaults_and_overrides_win(tmp_path):
    from dataclasses import fields

    from dinolab.train.recipes.dino import CLASSIC_SETTINGS

    names = {f.name for f in fields(DINOConfig)}
    assert set(CLASSIC_SETTINGS) <= names
    classic, new = DINOConfig.classic(), DINOConfig()
    differ = {n for n in names if getattr(classic, n) != getattr(new, n)}
    assert differ == set(CLASSIC_SETTINGS)  # each classic setting is one the new recipe changed
    # The earlier defaults, as `dinolab train dino` had them before the course-teacher recipe.
    assert (classic.arch, classic.patch_size, classic.shapes_style) == ("vit_course", 8, "grey")
    assert (classic.lr, classic.teacher_temp, classic.koleo_loss_weight) == (5e-4, 0.04, 0.0)
    assert DINOConfig.classic(arch="vit_micro", epochs=3).arch == "vit_micro"


def test_unset_augmentation_suits_the_data_dark_shapes_or_official(tmp_path):
    from dinolab.train.recipes.common import (
        DARK_SHAPES_AUGMENTATION,
        OFFICIAL_AUGMENTATION,
        resolved_augmentation,
    )

    assert resolved_augmentation(tiny(tmp_path)) == DARK_SHAPES_AUGMENTATION
    # Real images (--data_path), digits and the grey shapes get official DINO's augmentation.
    for kw in ({"data_path": str(tmp_path)}, {"dataset": "digits"}, {"shapes_style": "grey"}):
        assert resolved_augmentation(tiny(tmp_path, **kw)) == OFFICIAL_AUGMENTATION, kw
    # A setting given explicitly is kept whatever the data.
    mine = resolved_augmentation(tiny(tmp_path, data_path=str(tmp_path), rotation_degrees=30.0))
    assert mine["rotation_degrees"] == 30.0 and mine["solarization_prob"] == 0.2
    aug = build_ssl_data(tiny(tmp_path, shapes_style="grey")).train_set.transform
    assert aug.rotation_degrees == 0.0 and aug.probs["global2_solarize_prob"] == 0.2


def test_settings_saved_before_the_new_defaults_load_as_they_ran():
    from dinolab.train.recipes.distill import DistillConfig

    # A config.json of a run made with the earlier defaults: no shapes_style, blur_prob,
    # solarization_prob or data_seed keys.
    old = {k: v for k, v in vars(DINOConfig.classic(epochs=3)).items()
           if k not in ("shapes_style", "blur_prob", "solarization_prob", "data_seed")}
    loaded = DINOConfig.from_args(old)
    assert loaded == DINOConfig.classic(epochs=3)
    assert (loaded.shapes_style, loaded.solarization_prob) == ("grey", 0.2)
    # New settings load as they are.
    assert DINOConfig.from_args(vars(DINOConfig(epochs=3))) == DINOConfig(epochs=3)
    # The distill recipe's classic settings keep its own choices (as its earlier defaults).
    classic = DistillConfig.classic()
    assert (classic.freeze_last_layer, classic.koleo_loss_weight) == (0, 0.1)
    assert (classic.arch, classic.patch_size, classic.shapes_style) == ("vit_course", 8, "grey")


def test_ibot_and_registers_are_on_for_vits_and_off_for_resnets_unless_set():
    # Unset, they follow the backbone: DINOv2's iBOT loss and 4 registers for a ViT (the
    # course teacher's recipe since session 12), neither for a ResNet (no patches to mask).
    vit, resnet = DINOConfig(), DINOConfig(arch="resnet18")
    assert (vit.ibot_loss_weight, vit.num_register_tokens) == (1.0, 4)
    assert (resnet.ibot_loss_weight, resnet.num_register_tokens) == (0.0, 0)
    # Given explicitly, they are kept (official DINO is one flag away).
    plain = DINOConfig(ibot_loss_weight=0.0, num_register_tokens=0)
    assert (plain.ibot_loss_weight, plain.num_register_tokens) == (0.0, 0)
    assert DINOConfig(arch="resnet18", num_register_tokens=2).num_register_tokens == 2
    # A run saved before either setting existed (no keys) reloads as it ran: without them.
    before = {k: v for k, v in vars(DINOConfig()).items()
              if k not in ("ibot_loss_weight", "num_register_tokens")}
    loaded = DINOConfig.from_args(before)
    assert (loaded.ibot_loss_weight, loaded.num_register_tokens) == (0.0, 0)
    # The distill recipe's student keeps no registers by default, whatever its teacher has,
    # and its iBOT weight (1, its first default) holds in its classic settings and old files.
    from dinolab.train.recipes.distill import DistillConfig

    assert DistillConfig().num_register_tokens == 0
    assert DistillConfig.classic().ibot_loss_weight == 1.0
    old = {k: v for k, v in vars(DistillConfig()).items() if k != "ibot_loss_weight"}
    assert DistillConfig.from_args(old).ibot_loss_weight == 1.0
    # --teacher_centering none removes the center from the iBOT loss too (the collapse study).
    from dinolab.train.recipes.dino import ibot_centering

    assert ibot_centering("none") == "none"
    assert ibot_centering("centering") == ibot_centering("sinkhorn_knopp") == "centering"
