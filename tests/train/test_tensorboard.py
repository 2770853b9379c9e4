"""``--tensorboard``: the JSON-lines logs' numbers, also as TensorBoard scalars."""

from __future__ import annotations

import json
import sys

import pytest

from dinolab.cli import main
from dinolab.train.tensorboard import TensorBoardLogger

TINY_DINO = [
    "--warmup_epochs", "0", "--batch_size_per_gpu", "4", "--num_images", "16",
    "--num_eval_images", "8", "--local_crops_number", "2", "--out_dim", "64",
    "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--embed_dim", "32", "--depth",
    "2", "--num_heads", "2", "--knn_k", "5", "--progress", "false", "--plots", "false",
    "--device", "cpu",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files of ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tensorboard_scalars_equal_the_json_lines_logs(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    argv = ["train", "dino", *TINY_DINO, "--epochs", "2", "--output_dir", str(out)]
    assert main([*argv, "--tensorboard"]) == 0
    capsys.readouterr()
    steps, epochs = _jsonl(out / "log_steps.jsonl"), _jsonl(out / "log_epochs.jsonl")
    assert len(steps) == 8 and len(epochs) == 2  # 16 images / batch 4 x 2 epochs
    scalars = _scalars(out / "tensorboard")
    for key in ("loss", "lr", "teacher_entropy"):
        expected = [(r["it"], r[key]) for r in steps]
        got = scalars[f"train/{key}"]
        assert [s for s, _ in got] == [s for s, _ in expected], key
        # TensorBoard stores float32
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), key
    for key in ("knn_top1", "train_loss"):
        got = scalars[f"epoch/{key}"]
        assert got == [(r["it"], pytest.approx(r[key], rel=1e-6)) for r in epochs], key
    assert "train/epoch" not in scalars and "train/it" not in scalars


def test_a_resumed_run_does_not_write_its_earlier_epochs_again(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    base = ["train", "dino", *TINY_DINO, "--output_dir", str(out), "--tensorboard"]
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    capsys.readouterr()
    knn = _scalars(out / "tensorboard")["epoch/knn_top1"]
    assert [step for step, _ in knn] == [4, 8]  # one value per epoch, none twice


def test_without_tensorboard_installed_the_message_says_what_to_install(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'dinolab\[tensorboard\]'"):
        TensorBoardLogger()
    argv = ["train", "dino", *TINY_DINO, "--epochs", "1", "--output_dir", str(tmp_path / "r")]
    assert main([*argv, "--tensorboard"]) == 1
    assert not (tmp_path / "r").exists()  # refused before the run started
    assert "--tensorboard needs the tensorboard package" in capsys.readouterr().err
