"""``dinolab export``: round trips dinolab -> .pth / safetensors -> dinolab (and -> timm)."""

from __future__ import annotations

import pytest
import torch

from dinolab.cli import main
from dinolab.models import load_backbone, read_checkpoint
from dinolab.tools.export import load_exported
from dinolab.train.course_teacher import COURSE_TEACHER_PATH, load_course_teacher

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _images() -> torch.Tensor:
    """Four images at the course teacher's training resolution, [4, 3, 32, 32]."""
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _export(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["export", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _run_load_line(out: str) -> dict:
    """Execute the Python line the command printed after 'load it: ' and return its names."""
    line = next(x for x in out.splitlines() if x.startswith("load it: "))[len("load it: "):]
    names: dict = {}
    exec(line, names)  # the printed line must work exactly as printed
    return names


def test_export_round_trip_through_safetensors_and_the_plain_state_dict(tmp_path, capsys):
    teacher = load_course_teacher()
    x = _images()
    code, out, err = _export(capsys, "--pretrained_weights", str(COURSE_TEACHER_PATH),
                             "--output_dir", str(tmp_path))
    assert code == 0, err
    pth, st = tmp_path / "teacher_backbone.pth", tmp_path / "teacher_backbone.safetensors"
    assert pth.is_file() and st.is_file()
    assert str(pth) in out and str(st) in out

    # The .pth is a plain state dict: tensors only, readable with weights_only=True.
    plain = torch.load(pth, weights_only=True)
    assert isinstance(plain, dict) and all(isinstance(v, torch.Tensor) for v in plain.values())
    assert set(plain) == set(teacher.state_dict())

    with torch.no_grad():
        want = teacher(x)
        assert torch.equal(load_exported(st)(x), want)
        assert torch.equal(load_backbone(pth, num_heads=3)(x), want)
        printed = _run_load_line(out)["backbone"]
        assert torch.equal(printed(x), want)


def test_export_the_student_of_a_checkpoint_that_has_one(tmp_path, capsys):
    # A checkpoint with a student that differs from its teacher: export must pick the student.
    ckpt = read_checkpoint(COURSE_TEACHER_PATH)
    ckpt["student"] = {k: v + 0.01 if v.is_floating_point() else v
                       for k, v in ckpt["teacher"].items()}
    path = tmp_path / "both.pth"
    torch.save(ckpt, path)
    code, _, err = _export(capsys, "--pretrained_weights", str(path), "--checkpoint_key",
                           "student", "--output_dir", str(tmp_path / "out"))
    assert code == 0, err
    exported = load_exported(tmp_path / "out" / "student_backbone.safetensors")
    x = _images()
    with torch.no_grad():
        assert torch.equal(exported(x), load_backbone(path, "student")(x))
        assert not torch.allclose(exported(x), load_course_teacher()(x))


def test_export_in_timm_layout_loads_into_timm_with_equal_outputs(tmp_path, capsys):
    pytest.importorskip("timm")
    code, out, err = _export(capsys, "--pretrained_weights", str(COURSE_TEACHER_PATH),
                             "--output_dir", str(tmp_path), "--layout", "timm")
    assert code == 0, err
    assert (tmp_path / "teacher_backbone_timm.safetensors").is_file()
    model = _run_load_line(out)["model"]  # a timm VisionTransformer, strict load_state_dict
    assert type(model).__module__.startswith("timm.")
    model.eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_course_teacher()(x), rtol=0, atol=1e-6)
        # ... and the timm-layout file still comes back into dinolab.
        again = load_exported(tmp_path / "teacher_backbone_timm.safetensors")
        assert torch.equal(again(x), load_course_teacher()(x))


def test_export_of_a_missing_model_names_it_and_exits_2(tmp_path, capsys):
    # The course teacher keeps its teacher only.
    code, _, err = _export(capsys, "--pretrained_weights", str(COURSE_TEACHER_PATH),
                           "--checkpoint_key", "student", "--output_dir", str(tmp_path))
    assert code == 2
    assert "has no 'student' entry" in err and str(COURSE_TEACHER_PATH) in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())

    code, _, err = _export(capsys, "--pretrained_weights", str(tmp_path / "nope.pth"))
    assert code == 2 and "does not exist" in err and "nope.pth" in err
    (tmp_path / "afile").write_text("")
    code, _, err = _export(capsys, "--pretrained_weights", str(COURSE_TEACHER_PATH),
                           "--output_dir", str(tmp_path / "afile"))
    assert code == 2 and "is a file, not a folder" in err


def test_load_exported_refuses_files_it_did_not_write(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_text("not a safetensors file")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        load_exported(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no 'dinolab_backbone' metadata"):
        load_exported(tmp_path / "other.safetensors")


@pytest.mark.parametrize("registers", [0, 2])
def test_timm_layout_of_a_vit_with_or_without_registers_gives_the_same_outputs(registers):
    # timm's layout for DINOv2 models with registers (no_embed_class=True): reg_token, the CLS
    # position embedding folded into cls_token, pos_embed of the patches only.
    timm = pytest.importorskip("timm")
    from dinolab.models.vit import VisionTransformer
    from dinolab.tools.export import backbone_spec, from_timm_layout, to_layout

    torch.manual_seed(0)
    ours = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                             num_register_tokens=registers).eval()
    with torch.no_grad():  # random, non-zero tokens so that a lost one would show
        for p in (ours.cls_token, ours.pos_embed, getattr(ours, "register_tokens", None)):
            if p is not None:
                p.normal_()
    spec = backbone_spec(ours)
    state = to_layout(ours.state_dict(), spec, "timm")
    assert ("reg_token" in state) == bool(registers) and "mask_token" not in state
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
        **({"reg_tokens": registers, "no_embed_class": True} if registers else {}),
    ).eval()
    theirs.load_state_dict(state)  # strict: every key in place
    x = _images()
    with torch.no_grad():
        # Same arithmetic in another order of additions: float32 rounding, atol 1e-5.
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=1e-5)
        back = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 num_register_tokens=registers).eval()
        missing = back.load_state_dict(from_timm_layout(state), strict=False).missing_keys
        assert missing == ["mask_token"]
        torch.testing.assert_close(back(x), ours(x), rtol=0, atol=1e-6)
