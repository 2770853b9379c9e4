"""The ``dinolab`` command line: help texts, bad flags (exit 2), a tiny run and its evaluation."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinolab.cli import bool_flag, main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--epochs",
    "1",
    "--warmup_epochs",
    "0",
    "--batch_size_per_gpu",
    "4",
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
    "--progress",
    "false",
    "--plots",
    "false",
    "--device",
    "cpu",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _exit_code(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


@pytest.mark.parametrize("argv", [[], ["train"], ["eval"], ["visualize"]])
def test_missing_subcommand_is_a_usage_error(argv, capsys):
    code, _, err = _exit_code(argv, capsys)
    assert code == 2 and "required" in err


def test_help_texts_name_every_flag_with_its_default(capsys):
    code, out, _ = _exit_code(["--help"], capsys)
    assert code == 0 and "train" in out and "eval" in out
    code, out, _ = _exit_code(["train", "dino", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())  # argparse wraps lines
    for flag, default in [
        ("--arch", "vit_micro"),
        ("--patch_size", "4"),
        ("--epochs", "30"),
        ("--batch_size_per_gpu", "64"),
        ("--lr", "0.004"),
        ("--local_crops_number", "4"),
        ("--teacher_temp", "0.03"),
        ("--warmup_teacher_temp_epochs", "0"),
        ("--momentum_teacher", "0.99"),
        ("--output_dir", "runs/dino"),
        ("--global_crops_scale", "0.35 1.0"),
        ("--shapes_style", "dark_fixed"),
        ("--resume", "False"),
        ("--seed", "0"),
        ("--data_path", "None"),
    ]:
        assert flag in text, flag
        start = text.index(flag + " ", text.index("options:"))
        assert f"(default: {default})" in text[start : start + 700], flag
    code, out, _ = _exit_code(["train", "distill", "--help"], capsys)
    for flag in (
        "--dino_loss_weight",
        "--ibot_loss_weight",
        "--koleo_loss_weight",
        "--spd_loss_weight",
        "--cls_loss_weight",
        "--teacher_pretrained_weights",
    ):
        assert flag in out
    assert "--momentum_teacher" not in out  # a frozen teacher has no momentum
    code, out, _ = _exit_code(["train", "kd", "--help"], capsys)
    assert "--kd_temperature" in out and "--ema_momentum" in out
    code, out, _ = _exit_code(["eval", "knn", "--help"], capsys)
    assert "--nb_knn" in out and "--pretrained_weights" in out and "--dump_features" in out
    code, out, _ = _exit_code(["eval", "linear", "--help"], capsys)
    assert "--dump_features" not in out  # official DINO dumps from eval_knn.py only
    for recipe in ("dino", "kd", "distill"):  # the command line's own train flags
        code, out, _ = _exit_code(["train", recipe, "--help"], capsys)
        assert "--config FILE" in out and "--tensorboard" in out
    for argv, flags in (
        (["export"], ("--pretrained_weights", "--checkpoint_key", "--layout", "--output_dir")),
        (["visualize", "attention"], ("--image_path", "--image_size", "--threshold")),
        (["visualize", "pca"], ("--image_path", "--image_size", "--fg_threshold")),
    ):
        code, out, _ = _exit_code([*argv, "--help"], capsys)
        assert code == 0 and all(flag in out for flag in flags), argv
    code, out, _ = _exit_code(["visualize", "attention", "--help"], capsys)
    assert "(default: 0.6)" in " ".join(out.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "dino", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
        (["train", "dino", "--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
        (["train", "dino", "--lr", "nan"], "argument --lr: must be a finite number >= 0"),
        (["train", "dino", "--norm_last_layer", "maybe"], "expected true or false, got 'maybe'"),
        (["train", "dino", "--teacher_centering", "mean"], "invalid choice: 'mean'"),
        (["train", "dino", "--arch", "vit_huge"], "invalid choice: 'vit_huge'"),
        (["train", "dino", "--global_crops_scale", "0.4"], "expected 2 arguments"),
        (["train", "dino", "--momentum-teacher", "0.9"], "unrecognized arguments"),
        (["train", "sinkhorn"], "invalid choice: 'sinkhorn'"),
        (["export", "--layout", "onnx"], "argument --layout: invalid choice: 'onnx'"),
        (["visualize", "heatmap"], "invalid choice: 'heatmap'"),
        (["visualize", "attention", "--threshold", "x"], "--threshold: expected a number"),
        (["eval", "linear", "--dump_features", "f"], "unrecognized arguments: --dump_features"),
        (["train", "dino", "--tensorboard", "maybe"], "expected true or false, got 'maybe'"),
    ],
)
def test_bad_flags_exit_with_code_2_and_a_clear_message(argv, message, capsys):
    code, _, err = _exit_code(argv, capsys)
    assert code == 2
    assert message in err


def test_bool_flag_accepts_official_spellings():
    assert bool_flag("True") and bool_flag("1") and not bool_flag("false")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], True),
        (["--progress"], True),
        (["--progress", "false"], False),
        (["--no-progress"], False),
        (["--no-progress", "--progress"], True),  # the last one wins, as in argparse
    ],
)
def test_boolean_flags_also_take_a_no_prefix(argv, expected):
    from dinolab.cli import build_parser

    # The help text of --progress promises --no-progress: every boolean has a --no- form.
    args = build_parser().parse_args(["train", "kd", *argv])
    assert args.progress is expected


def test_no_teacher_nonlinear_gives_the_drafts_linear_teacher():
    from dinolab.cli import build_parser

    # The kd recipe's docstring names --no-teacher_nonlinear for seed 004's linear teacher.
    linear = build_parser().parse_args(["train", "kd", "--no-teacher_nonlinear"])
    assert linear.teacher_nonlinear is False


def test_train_then_evaluate_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "dino", *TINY, "--output_dir", str(out)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert 0.0 <= record["knn_top1"] <= 100.0 and (out / "checkpoint.pth").is_file()
    # A second run into the same directory must not overwrite it without --resume.
    assert main(["train", "dino", *TINY, "--output_dir", str(out)]) == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert main(["train", "dino", *TINY, "--output_dir", str(out), "--resume"]) == 0
    capsys.readouterr()
    args = [
        "--pretrained_weights",
        str(out / "checkpoint.pth"),
        "--num_images",
        "16",
        "--num_eval_images",
        "8",
        "--progress",
        "false",
        "--device",
        "cpu",
    ]
    assert main(["eval", "knn", *args, "--nb_knn", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["knn_top1"]["5"] == pytest.approx(record["knn_top1"])
    assert main(["eval", "linear", *args, "--epochs", "2"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["linear_top1"] <= 100.0
    assert main(["eval", "knn", "--pretrained_weights", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err

    # Resuming with another width: a message naming the setting, not load_state_dict's dump.
    wider = [*TINY, "--output_dir", str(out), "--resume", "--embed_dim", "48"]
    assert main(["train", "dino", *wider]) == 2
    err = capsys.readouterr().err
    assert "--resume: the checkpoint" in err and "--embed_dim 32 then, 48 now" in err
    assert "Traceback" not in err
    # Output folders that are files: refused before any work, with the path.
    (tmp_path / "afile").write_text("")
    assert main(["train", "dino", *TINY, "--output_dir", str(tmp_path / "afile")]) == 2
    assert f"--output_dir '{tmp_path / 'afile'}' is a file" in capsys.readouterr().err
    assert main(["eval", "knn", *args, "--output_dir", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    # Other OS errors (a folder inside a file) are one line too, exit code 1.
    assert main(["eval", "knn", *args, "--output_dir", str(tmp_path / "afile" / "x")]) == 1
    assert capsys.readouterr().err.startswith("dinolab: error: [Errno 20] Not a directory")


def test_python_dash_m_dinolab():
    # One subprocess (imports cost seconds): the module entry point parses and reports errors
    # exactly as the console script does.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    bad = subprocess.run(
        [sys.executable, "-m", "dinolab", "train", "kd", "--epochs", "-3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--epochs: must be an integer >= 1" in bad.stderr
    assert "usage: dinolab train kd" in bad.stderr


def _documented_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for every ``dinolab train|eval|export|visualize ...`` line in the docs
    and lessons."""
    files = [
        REPO / "README.md",
        REPO / "course" / "README.md",
        *sorted((REPO / "benchmarks").glob("**/*.md")),
        *sorted((REPO / "course").glob("*.ipynb")),
    ]
    found = []
    for path in files:
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
        # Up to the end of the command: a newline, closing backtick or quote, comment, && or |.
        for match in re.finditer(r"dinolab (?:train|eval|export|visualize) [^`\n#&|\"']*",
                                 text):
            found.append((str(path.relative_to(REPO)), match.group(0).strip()))
    return found


def test_every_command_shown_in_the_docs_parses():
    # README.md, course/README.md, the experiment reports and the lessons show command lines
    # written by hand or generated from configurations; each must be accepted as written (a
    # renamed or removed flag would otherwise only surface when a learner pastes it).
    from dinolab.cli import build_parser

    commands = _documented_commands()
    assert len(commands) >= 20, commands  # the README alone shows 5
    bad = []
    for path, cmd in commands:
        try:
            build_parser().parse_args(shlex.split(cmd)[1:])
        except SystemExit as exc:  # --help exits 0; a bad flag exits 2
            if exc.code != 0:
                bad.append(f"{path}: {cmd}")
    assert not bad, "\n".join(bad)


def test_gpu_runs_use_cudnn_benchmark_and_tf32_as_the_official_scripts(monkeypatch):
    """torch.cuda is faked; the flags are process-wide, so they are restored afterwards."""
    from dinolab.cli import use_fast_gpu_kernels

    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = False
        assert not use_fast_gpu_kernels("auto")  # this machine: no GPU, nothing changes
        assert not torch.backends.cudnn.benchmark
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert not use_fast_gpu_kernels("cpu")
        assert use_fast_gpu_kernels("auto") and use_fast_gpu_kernels("cuda:1")
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = flags
