"""``dinolab train <recipe> --config FILE``: a run's config.json back as its settings."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch

from dinolab.cli import main
from dinolab.train.checkpoint import plain_config
from dinolab.train.config_file import read_config_file
from dinolab.train.recipes import RECIPES, DINOConfig, DistillConfig, KDConfig

TINY_DINO = [
    "--epochs", "1", "--warmup_epochs", "0", "--batch_size_per_gpu", "4", "--num_images", "16",
    "--num_eval_images", "8", "--local_crops_number", "2", "--out_dim", "64",
    "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--embed_dim", "32", "--depth",
    "2", "--num_heads", "2", "--knn_k", "5", "--progress", "false", "--plots", "false",
    "--device", "cpu", "--seed", "3",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def captured(monkeypatch):
    """Replace every recipe's train function by one that records the config it is given."""
    seen: list = []
    for name, (cls, _) in list(RECIPES.items()):
        monkeypatch.setitem(RECIPES, name, (cls, lambda cfg, callbacks=(): seen.append(cfg) or {}))
    return seen


def _write(path, values) -> str:
    path.write_text(json.dumps(values))
    return str(path)


def test_a_dino_run_repeated_from_its_config_json_is_the_same_run(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "dino", *TINY_DINO, "--output_dir", str(first)]) == 0
    config = first / "config.json"
    assert main(["train", "dino", "--config", str(config), "--output_dir", str(second)]) == 0
    capsys.readouterr()
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert a.pop("output_dir") == str(first) and b.pop("output_dir") == str(second)
    assert a == b and a["seed"] == 3 and a["embed_dim"] == 32  # not DINOConfig's defaults
    # The same settings train the same weights (the engine's runs are repeatable on a CPU).
    ckpts = [torch.load(d / "checkpoint.pth", weights_only=True) for d in (first, second)]
    for key, value in ckpts[0]["teacher"].items():
        assert torch.equal(value, ckpts[1]["teacher"][key]), key


@pytest.mark.parametrize(
    ("recipe", "cfg"),
    [
        ("dino", DINOConfig(epochs=3, lr=1e-3, global_crops_scale=(0.3, 1.0),
                            norm_last_layer=False, color_jitter=(0.1, 0.2, 0.3, 0.0),
                            data_seed=7, shapes_style="grey")),
        ("distill", replace(DistillConfig(), epochs=2, koleo_loss_weight=0.0, momentum_teacher=0.9,
                            teacher_pretrained_weights="t.pth")),
        ("kd", KDConfig(epochs=2, phases=("teacher", "student_kd"), kd_temperature=2.0,
                        teacher_nonlinear=False)),
    ],
)
def test_every_recipe_reads_back_every_setting(recipe, cfg, tmp_path, captured):
    path = _write(tmp_path / "config.json", plain_config(asdict(cfg)))
    assert main(["train", recipe, "--config", path]) == 0
    assert captured[-1] == cfg


def test_flags_on_the_command_line_override_the_file(tmp_path, captured):
    cfg = DINOConfig(epochs=3, lr=1e-3, plots=False, global_crops_scale=(0.3, 1.0))
    path = _write(tmp_path / "config.json", plain_config(asdict(cfg)))
    argv = ["train", "dino", "--epochs", "5", "--config", path, "--plots",
            "--global_crops_scale", "0.5", "1.0"]  # before or after --config: flags win
    assert main(argv) == 0
    assert captured[-1] == replace(cfg, epochs=5, plots=True, global_crops_scale=(0.5, 1.0))


def test_a_partial_file_leaves_the_rest_at_the_defaults(tmp_path, captured):
    assert main(["train", "dino", "--config", _write(tmp_path / "c.json", {"epochs": 4})]) == 0
    assert captured[-1] == DINOConfig(epochs=4)


def test_kd_writes_the_recipes_own_config_json(tmp_path, captured):
    # kd's engines write one config.json per phase folder; the command writes the recipe's.
    out = tmp_path / "kd"
    assert main(["train", "kd", "--epochs", "2", "--output_dir", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert KDConfig.from_args(saved) == captured[-1] == KDConfig(epochs=2, output_dir=str(out))


def test_a_config_json_saved_before_ibot_and_registers_repeats_that_run(tmp_path, captured):
    # A dino config.json written before --ibot_loss_weight and --num_register_tokens existed:
    # the run had neither, so --config gives neither (today's unset defaults would add both).
    old = {k: v for k, v in json.loads(json.dumps(plain_config(DINOConfig(epochs=2)))).items()
           if k not in ("ibot_loss_weight", "num_register_tokens")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert main(["train", "dino", "--config", str(tmp_path / "config.json")]) == 0
    assert (captured[-1].ibot_loss_weight, captured[-1].num_register_tokens) == (0.0, 0)
    assert captured[-1].epochs == 2
    # A file that names them keeps its values; flags on the command line still win.
    (tmp_path / "new.json").write_text(json.dumps(plain_config(DINOConfig(epochs=2))))
    assert main(["train", "dino", "--config", str(tmp_path / "new.json")]) == 0
    assert (captured[-1].ibot_loss_weight, captured[-1].num_register_tokens) == (1.0, 4)
    assert main(["train", "dino", "--config", str(tmp_path / "config.json"),
                 "--num_register_tokens", "2"]) == 0
    assert captured[-1].num_register_tokens == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": 2, "epoks": 3, "learning_rate": 0.1},
         "unknown key(s) 'epoks' (did you mean 'epochs'?), 'learning_rate'"),
        ({"kd_temperature": 4.0}, "unknown key(s) 'kd_temperature'"),  # another recipe's file
        ({"epochs": 0}, "epochs: must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, "epochs: expected an integer, got '2.5'"),
        ({"arch": "vit_huge"}, "arch: 'vit_huge' is not one of"),
        ({"global_crops_scale": [0.4]}, "global_crops_scale: expected 2 values, got [0.4]"),
        ({"lr": None}, "lr: null, but the setting needs a value"),
        ({"norm_last_layer": "maybe"}, "norm_last_layer: expected true or false, got 'maybe'"),
        ([1, 2], "holds a JSON list, not an object of settings"),
    ],
)
def test_bad_config_files_are_usage_errors_naming_the_key(values, message, tmp_path, capsys):
    path = _write(tmp_path / "config.json", values)
    with pytest.raises(SystemExit) as stop:
        main(["train", "dino", "--config", path])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and f"--config '{path}'" in err
    assert "usage: dinolab train dino" in err


def test_missing_and_unreadable_config_files(tmp_path, capsys):
    for path, message in ((tmp_path / "none.json", "does not exist"),
                          (tmp_path, "is a folder"),
                          (tmp_path / "bad.json", "is not a JSON file")):
        if path.name == "bad.json":
            path.write_text("{epochs: 3")
        with pytest.raises(SystemExit) as stop:
            main(["train", "dino", "--config", str(path)])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_read_config_file_checks_keys_against_the_dataclass(tmp_path):
    path = _write(tmp_path / "c.json", {"epochs": 3, "phases": ["teacher"]})
    assert read_config_file(path, KDConfig) == {"epochs": 3, "phases": ["teacher"]}
    with pytest.raises(ValueError, match="unknown key.*'phases'"):
        read_config_file(path, DINOConfig, "dinolab train dino")
