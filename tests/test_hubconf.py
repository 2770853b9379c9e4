"""``hubconf.py``: torch.hub.load(<this checkout>, ..., source="local") with local files only."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import torch

from dinolab.tools.export import ExportConfig, export_backbone
from dinolab.train.course_teacher import COURSE_TEACHER_PATH, load_course_teacher

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Every test here fails if anything tries to download."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"hubconf tried to download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _hub(name: str, **kwargs):
    return torch.hub.load(REPO, name, source="local", **kwargs)


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_course_teacher_entry_is_the_bundled_teacher():
    x = _x()
    with torch.no_grad():
        want = load_course_teacher()(x)
        assert torch.equal(_hub("course_teacher")(x), want)
        random = _hub("course_teacher", pretrained=False)
        assert random(x).shape == want.shape and not torch.allclose(random(x), want)
        # The same architecture: its register tokens included (4 since session 12).
        assert random.num_register_tokens == load_course_teacher().num_register_tokens


def test_architecture_entries_load_local_pth_and_safetensors(tmp_path):
    exported = export_backbone(ExportConfig(pretrained_weights=str(COURSE_TEACHER_PATH),
                                            output_dir=str(tmp_path)))
    timm_layout = export_backbone(ExportConfig(pretrained_weights=str(COURSE_TEACHER_PATH),
                                               output_dir=str(tmp_path), layout="timm"))
    x = _x()
    with torch.no_grad():
        want = load_course_teacher()(x)
        for weights in (COURSE_TEACHER_PATH, exported["pth"], exported["safetensors"],
                        timm_layout["safetensors"]):
            model = _hub("vit_micro", weights=str(weights))
            assert not model.training
            assert torch.equal(model(x), want), weights
    assert _hub("vit_tiny").embed_dim == 192 and _hub("vit_tiny", patch_size=8).patch_size == 8


def test_weights_of_another_architecture_are_refused(tmp_path):
    with pytest.raises(ValueError, match="have another shape"):
        _hub("vit_course", weights=str(COURSE_TEACHER_PATH))
    exported = export_backbone(ExportConfig(pretrained_weights=str(COURSE_TEACHER_PATH),
                                            output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="does not fit the model"):
        _hub("vit_course", weights=exported["safetensors"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        _hub("vit_micro", weights=str(tmp_path / "missing.pth"))


def test_official_names_need_a_local_file_and_never_download():
    with pytest.raises(ValueError, match=r"dino_vits16\(pretrained=True\).*pass weights="):
        _hub("dino_vits16")
    model = _hub("dino_vits8", pretrained=False)
    assert model.embed_dim == 384 and model.patch_size == 8
