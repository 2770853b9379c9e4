"""Checkpoint round trip, RNG capture, atomic writes and refusal of bad or foreign files."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from dinolab.train.checkpoint import (
    get_rng_state,
    load_checkpoint,
    plain_config,
    save_checkpoint,
    set_rng_state,
)


def _state(net: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {
        "student": net.state_dict(),
        "teacher": net.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "step": 30,
        "rng": [get_rng_state()],
        "args": plain_config({"lr": 0.1, "output_dir": "x", "scale": (0.4, 1.0)}),
    }


def _trained_net() -> tuple[nn.Module, torch.optim.Optimizer]:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    return net, opt


def test_round_trip_restores_weights_optimizer_and_config(tmp_path):
    net, opt = _trained_net()
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, _state(net, opt))
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 30
    assert ckpt["args"] == {"lr": 0.1, "output_dir": "x", "scale": (0.4, 1.0)}
    fresh, fresh_opt = _trained_net()
    fresh.load_state_dict(ckpt["student"])
    fresh_opt.load_state_dict(ckpt["optimizer"])
    for a, b in zip(net.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # exact: a file round trip must not change a bit
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], exp_avg)
    # Nothing but the destination is left in the directory (the temp file was renamed).
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    path = tmp_path / "c.pth"
    save_checkpoint(path, {"epoch": 0, "step": 0, "rng": [get_rng_state()]})
    expected = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(path)["rng"][0])
    got = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])


def test_cuda_rng_state_is_this_process_gpu_only(monkeypatch):
    """Under torchrun every process sees every GPU; it must save and restore its own only.

    No GPU here, so torch.cuda is replaced by a fake with 4 devices, current device 2.
    """
    states = {i: torch.full((4,), i, dtype=torch.uint8) for i in range(4)}
    restored: list[torch.Tensor] = []

    def every_gpu(*args, **kwargs):
        raise AssertionError("touched every GPU")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[2])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(s))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert get_rng_state()["cuda"] == []  # a process that never used CUDA opens no context
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    state = get_rng_state()
    assert len(state["cuda"]) == 1 and torch.equal(state["cuda"][0], states[2])
    set_rng_state(state)
    set_rng_state({**state, "cuda": [states[i] for i in range(4)]})  # older, one per GPU
    set_rng_state({**state, "cuda": [states[0], states[1]]})  # another machine: skipped
    assert [int(s[0]) for s in restored] == [2, 2]


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize("keep", [0, 10, 0.5])
def test_truncated_file_is_a_value_error_naming_the_path(tmp_path, keep):
    net, opt = _trained_net()
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, _state(net, opt))
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_foreign_files_are_refused(tmp_path):
    net, _ = _trained_net()
    official_like = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save({"teacher": net.state_dict(), "epoch": 100}, official_like)
    with pytest.raises(ValueError, match="not a dinolab checkpoint"):
        load_checkpoint(official_like)
    bare = tmp_path / "list.pth"
    torch.save([1, 2, 3], bare)
    with pytest.raises(ValueError, match="not a dinolab checkpoint dict"):
        load_checkpoint(bare)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(text)


def test_a_pickled_object_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"format": "dinolab-checkpoint", "epoch": 0, "step": 0, "x": Evil()}, path)
    with pytest.raises(ValueError, match="truncated or corrupt"):  # weights_only refuses it
        load_checkpoint(path)


def test_non_finite_weights_never_replace_a_good_checkpoint(tmp_path):
    net, opt = _trained_net()
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, _state(net, opt))
    good = path.read_bytes()
    bad = _state(net, opt)
    bad["student"] = {k: v.clone() for k, v in bad["student"].items()}
    bad["student"]["0.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_checkpoint(path, bad)
    with pytest.raises(ValueError, match="'epoch'"):
        save_checkpoint(path, {"student": net.state_dict()})
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]


def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    net, opt = _trained_net()
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, _state(net, opt))
    good = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, _state(net, opt))
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]


def test_plain_config_converts_paths_and_unknown_objects(tmp_path):
    cfg = plain_config({"p": tmp_path, "t": (1, 2), "n": None, "o": object, "np": np.float32(2.5)})
    assert cfg["p"] == str(tmp_path) and cfg["t"] == (1, 2) and cfg["n"] is None
    assert cfg["np"] == 2.5 and isinstance(cfg["o"], str)
