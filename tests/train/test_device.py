"""``--device``: cpu, cuda, mps and auto, on machines with and without each backend.

No Apple GPU is needed: the MPS tests fake PyTorch's answer to "is MPS built / available?",
so they check dinolab's decisions, not that MPS kernels run (nothing here has run on a Mac).
"""

from __future__ import annotations

import pytest
import torch

from dinolab.train import distributed as du
from dinolab.train.engine import resolve_device


def _fake_backends(
    monkeypatch: pytest.MonkeyPatch, *, cuda: bool, mps: bool, mps_built: bool = True
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: mps_built)


@pytest.mark.parametrize("name", ["mps", "mps:0"])
def test_mps_is_used_where_pytorch_has_it(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _fake_backends(monkeypatch, cuda=False, mps=True)
    dev = resolve_device(name)
    assert dev.type == "mps" and dev == torch.device(name)


def test_mps_on_a_machine_without_it_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_backends(monkeypatch, cuda=False, mps=False, mps_built=True)
    with pytest.raises(ValueError, match=r"'mps' was requested but this machine has no MPS"):
        resolve_device("mps")


def test_mps_with_a_pytorch_built_without_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_backends(monkeypatch, cuda=False, mps=False, mps_built=False)
    with pytest.raises(ValueError, match=r"this PyTorch \(.+\) was built without MPS"):
        resolve_device("mps")


def test_mps_on_this_machine_matches_what_pytorch_reports() -> None:
    # No faking: on Linux CI this is the refusal; on an Apple-silicon Mac, the MPS device.
    if torch.backends.mps.is_available():
        assert resolve_device("mps").type == "mps"
    else:
        with pytest.raises(ValueError, match="use --device cpu"):
            resolve_device("mps")


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "cpu"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_and_never_picks_mps(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    _fake_backends(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto").type == expected


def test_cuda_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_backends(monkeypatch, cuda=False, mps=True)
    with pytest.raises(ValueError, match=r"'cuda:1' was requested but CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["tpu", "gpu", "meta", "xpu", ""])
def test_unknown_devices_are_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=rf"device must be cpu, cuda, mps or auto, got '{name}'"):
        resolve_device(name)


def test_cpu_is_always_there() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_training_keeps_the_mps_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the training engine does with --device: init_distributed(resolve_device(...)).
    _fake_backends(monkeypatch, cuda=False, mps=True)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = du.init_distributed(resolve_device("mps"))
    assert info.device.type == "mps" and (info.rank, info.world_size) == (0, 1)


def test_mps_under_torchrun_with_several_processes_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_backends(monkeypatch, cuda=False, mps=True)
    for var, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=r"'mps' with WORLD_SIZE=2: an Apple GPU runs one"):
        du.init_distributed(resolve_device("mps"))
