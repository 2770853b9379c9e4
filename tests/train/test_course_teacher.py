"""The committed course teacher: its file loads, and its recorded figures are its own."""

from __future__ import annotations

import json

import pytest
import torch

from dinolab.train.course_teacher import (
    COURSE_TEACHER_PATH,
    course_teacher_record,
    load_course_teacher,
    measure_attention_shares,
    measure_teacher,
    slim_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-epoch `dinolab train dino` run with the recipe's defaults, shrunk to seconds."""
    from dinolab.train.recipes.dino import DINOConfig, train_dino

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("teacher")
    try:
        train_dino(DINOConfig(output_dir=str(out), epochs=1, batch_size_per_gpu=8, num_images=32,
                              num_eval_images=16, local_crops_number=1, embed_dim=24,
                              num_heads=2, depth=1, knn_k=5, progress=False, plots=False,
                              device="cpu"))
    finally:
        torch.set_num_threads(previous)
    return out


def test_a_slim_checkpoint_keeps_the_teacher_and_drops_the_rest(tiny_run, tmp_path):
    from dinolab.models import load_backbone
    from dinolab.train.checkpoint import load_checkpoint

    slim = slim_checkpoint(tiny_run / "checkpoint.pth", tmp_path / "slim.pth", note="test")
    full, kept = load_checkpoint(tiny_run / "checkpoint.pth"), load_checkpoint(slim)
    assert {"student", "optimizer"} <= set(full) and not {"student", "optimizer"} & set(kept)
    assert kept["note"] == "test" and kept["args"] == full["args"]
    assert slim.stat().st_size < (tiny_run / "checkpoint.pth").stat().st_size / 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_backbone(slim)(x), load_backbone(tiny_run / "checkpoint.pth")(x))


def test_slimming_a_checkpoint_without_a_teacher_is_refused(tiny_run, tmp_path):
    from dinolab.train.checkpoint import load_checkpoint, save_checkpoint

    state = {k: v for k, v in load_checkpoint(tiny_run / "checkpoint.pth").items()
             if k not in ("teacher", "format", "version")}
    save_checkpoint(tmp_path / "student_only.pth", state)
    with pytest.raises(ValueError, match="no 'teacher' entry"):
        slim_checkpoint(tmp_path / "student_only.pth", tmp_path / "out.pth")


def test_measure_teacher_reads_everything_from_the_file(tiny_run):
    figures = measure_teacher(tiny_run / "checkpoint.pth", attention_images=8)
    record = json.loads((tiny_run / "log_epochs.jsonl").read_text().splitlines()[-1])
    # The same k-NN the run logged after its last epoch: same data, same teacher.
    assert figures["knn_top1"] == pytest.approx(record["knn_top1"], abs=1e-6)
    assert 0 <= figures["pixels_knn_top1"] <= 100 and 0 <= figures["random_knn_top1"] <= 100
    assert len(figures["jaccard_per_head"]) == 2
    for key in ("jaccard_mean_map", "random_jaccard_mean_map", "centre_prior_jaccard"):
        assert 0.0 <= figures[key] <= 1.0


def test_attention_shares_of_a_run_and_of_the_course_teacher(tiny_run):
    from dinolab.train.checkpoint import load_checkpoint
    from dinolab.train.recipes.common import build_ssl_data
    from dinolab.train.recipes.dino import DINOConfig

    shares = measure_attention_shares(tiny_run / "checkpoint.pth", attention_images=8)
    args = load_checkpoint(tiny_run / "checkpoint.pth")["args"]
    data = build_ssl_data(DINOConfig.from_args(args))
    masks = data.knn_test.dataset.masks[:8]
    assert shares["images"] == 8
    assert shares["uniform_object_mass"] == pytest.approx(float(masks.mean()), abs=1e-12)
    for key in ("object_mass", "object_mass_best_head", "random_object_mass",
                "centre_prior_object_mass"):
        assert 0.0 <= shares[key] <= 1.0
    # The area ratio, rebuilt from its parts: the head-averaged map's 60%-mass set, in pixels,
    # over the object's pixels, median over the 8 images.
    from dinolab.eval import cls_attention, threshold_attention
    from dinolab.models import load_backbone

    teacher = load_backbone(tiny_run / "checkpoint.pth")
    images = torch.stack([data.knn_test[i][0] for i in range(8)])
    kept = threshold_attention(cls_attention(teacher, images).mean(1), 0.6).sum((-2, -1))
    kept = kept * teacher.patch_size**2
    ratios = sorted(float(k) / float(m.sum()) for k, m in zip(kept, masks, strict=True))
    assert shares["kept_area_over_object"] == pytest.approx((ratios[3] + ratios[4]) / 2)
    assert measure_attention_shares(tiny_run / "checkpoint.pth", attention_images=0) == {}
    # The committed teacher puts several times a uniform map's share on the object, and more
    # than the centre prior does (what the showcase and lesson 4.3 claim).
    teacher = measure_attention_shares(COURSE_TEACHER_PATH, attention_images=200)
    assert teacher["object_mass"] > 3 * teacher["uniform_object_mass"]
    assert teacher["object_mass"] > teacher["centre_prior_object_mass"] + 0.1
    assert teacher["random_object_mass"] < 2 * teacher["uniform_object_mass"]


def test_the_committed_course_teacher_scores_its_recorded_knn():
    if not COURSE_TEACHER_PATH.is_file():
        pytest.fail(f"{COURSE_TEACHER_PATH} is not committed; `make experiments` makes it")
    record = course_teacher_record()
    assert record["command"].startswith("dinolab train dino --output_dir ")
    assert COURSE_TEACHER_PATH.stat().st_size <= 10 * 2**20
    figures = measure_teacher(COURSE_TEACHER_PATH, attention_images=0)
    # Recomputed from the file on this machine: equal to the record up to float rounding in
    # the features, which can move at most a vote or two (0.1 point each of 1000 queries).
    assert figures["knn_top1"] == pytest.approx(record["knn_top1"], abs=0.25)
    assert figures["pixels_knn_top1"] == pytest.approx(record["pixels_knn_top1"], abs=0.25)
    backbone = load_course_teacher()
    assert not backbone.training and backbone.embed_dim == 96
    model = load_course_teacher("model")
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, record.get("out_dim", 256))
    with pytest.raises(ValueError, match="which='head'"):
        load_course_teacher("head")
