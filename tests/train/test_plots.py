"""Plots drawn from a run's JSON-lines logs."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest

from dinolab.train.plots import plot_comparison, plot_run, read_log


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")


def test_plot_run_draws_what_was_logged(tmp_path):
    _write(
        tmp_path / "log_steps.jsonl",
        [
            {
                "it": i,
                "loss": 5.0 - i,
                "lr": 1e-3,
                "wd": 0.04,
                "momentum": 0.99,
                "teacher_entropy": 1.0,
                "kl_teacher_student": 0.5,
                "kl_to_uniform": 2.0,
            }
            for i in range(4)
        ],
    )
    _write(
        tmp_path / "log_epochs.jsonl",
        [
            {"it": 2, "knn_top1": 40.0, "train_loss": 4.5},
            {"it": 4, "knn_top1": 55.0, "train_loss": 2.5},
        ],
    )
    assert len(read_log(tmp_path / "log_steps.jsonl")) == 4  # the broken line is skipped
    names = sorted(p.name for p in plot_run(tmp_path, title="dino"))
    assert names == [
        "kl.png",
        "knn_accuracy.png",
        "loss.png",
        "lr.png",
        "momentum.png",
        "teacher_entropy.png",
    ]
    assert mpimg.imread(tmp_path / "loss.png").shape[2] in (3, 4)


def test_plot_comparison_overlays_runs_and_refuses_a_missing_metric(tmp_path):
    for name, h in (("both", 1.0), ("none", 0.0)):
        (tmp_path / name).mkdir()
        _write(
            tmp_path / name / "log_steps.jsonl", [{"it": i, "teacher_entropy": h} for i in range(3)]
        )
    runs = {"centering + sharpening": tmp_path / "both", "neither": tmp_path / "none"}
    path = plot_comparison(runs, "teacher_entropy", tmp_path / "h.png", "Teacher entropy", "nats")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="logged 'knn_top1'"):
        plot_comparison(runs, "knn_top1", tmp_path / "k.png", "k-NN", "%", log="epoch")
