"""``dinolab visualize attention|pca``: the PNGs exist, have the right sizes and show the maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinolab.cli import main
from dinolab.eval.attention import cls_attention, patch_features, pca_colors
from dinolab.tools.visualize import load_image
from dinolab.train.course_teacher import load_course_teacher

# The course teacher: 32-px training resolution, 4-px patches, 3 heads.
SIZE, PATCH, HEADS = 32, 4, 3
PANEL_PX = 240  # one figure panel: 2.4 in at 100 dpi


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def images(tmp_path):
    """A folder with a 48x40 PNG, a 30x60 JPEG in a sub-folder and a text file (skipped)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    picture = np.zeros((40, 48, 3), np.uint8)
    picture[10:30, 12:36] = 220  # a bright object on a dark background
    picture += rng.integers(0, 20, picture.shape, dtype=np.uint8)
    Image.fromarray(picture).save(root / "object.png")
    Image.fromarray(rng.integers(0, 255, (60, 30, 3), dtype=np.uint8)).save(root / "sub" / "n.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def _size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size  # (width, height)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["visualize", *argv, "--no-progress", "--device", "cpu"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_attention_pngs_have_the_image_size_and_show_each_heads_map(images, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "attention", "--image_path", str(images), "--output_dir", str(out))
    assert code == 0, err
    # 48x40 -> shorter side 32 -> 38x32 -> cropped to whole 4-px patches: 36x32.
    # 30x60 -> 32x64, already whole patches.
    for name, (w, h) in (("object", (36, 32)), ("sub/n", (32, 64))):
        folder = out / name
        assert _size(folder / "img.png") == (w, h)
        for j in range(HEADS):
            assert _size(folder / f"attn-head{j}.png") == (w, h)
        # image + one column per head, two rows
        assert _size(folder / "attention_figure.png") == ((HEADS + 1) * PANEL_PX, 2 * PANEL_PX)
    assert not (out / "notes").exists()

    # Each head's PNG is its map: the brightest patch of the colour-mapped PNG (viridis grows
    # in lightness) is the patch the head attends to most.
    x, _ = load_image(images / "object.png", SIZE, PATCH)
    attn = cls_attention(load_course_teacher(), x[None])[0]  # [heads, 8, 9]
    for j in range(HEADS):
        png = np.asarray(Image.open(out / "object" / f"attn-head{j}.png").convert("L"), float)
        per_patch = png.reshape(8, PATCH, 9, PATCH).mean((1, 3))
        assert np.unravel_index(per_patch.argmax(), per_patch.shape) == np.unravel_index(
            int(attn[j].argmax()), attn[j].shape
        )


def test_pca_pngs_hold_one_joint_pca_of_all_images(images, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "pca", "--image_path", str(images), "--output_dir", str(out))
    assert code == 0, err
    assert _size(out / "object" / "pca.png") == (36, 32)
    assert _size(out / "sub" / "n" / "pca.png") == (32, 64)
    assert _size(out / "object" / "pca_figure.png") == (3 * PANEL_PX, PANEL_PX)

    # The colours are pca_colors of both images' patches together.
    teacher = load_course_teacher()
    feats = [patch_features(teacher, load_image(p, SIZE, PATCH)[0][None])[0]
             for p in (images / "object.png", images / "sub" / "n.jpg")]
    joint = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])[None, None]
    colors = pca_colors(joint)[0][0, 0]
    first = colors[: 8 * 9].reshape(8, 9, 3).numpy()
    png = np.asarray(Image.open(out / "object" / "pca.png").convert("RGB"), float) / 255
    np.testing.assert_allclose(png[::PATCH, ::PATCH], first, atol=1 / 255 + 1e-6)


def test_a_single_image_file(images, tmp_path, capsys):
    code, out, err = _run(capsys, "attention", "--image_path", str(images / "object.png"),
                          "--output_dir", str(tmp_path / "one"), "--image_size", "16")
    assert code == 0, err
    assert '"images": 1' in out and '"pngs": 5' in out
    assert _size(tmp_path / "one" / "object" / "attn-head0.png") == (16, 16)  # 19x16 -> 16x16


def test_images_that_differ_only_by_their_ending_get_their_own_folders(images, tmp_path, capsys):
    Image.open(images / "object.png").save(images / "object.jpg")
    out = tmp_path / "out"
    code, _, err = _run(capsys, "pca", "--image_path", str(images), "--output_dir", str(out))
    assert code == 0, err
    assert (out / "object_jpg" / "pca.png").is_file() and (out / "object_png" / "pca.png").is_file()
    assert not (out / "object").exists()


@pytest.mark.parametrize("kind", ["attention", "pca"])
def test_bad_input_is_named_and_exits_2(images, tmp_path, capsys, kind):
    out = str(tmp_path / "out")
    code, _, err = _run(capsys, kind, "--image_path", str(images / "notes.txt"),
                        "--output_dir", out)
    assert code == 2
    assert f"'{images / 'notes.txt'}' is not an image" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, kind, "--image_path", str(empty), "--output_dir", out)
    assert code == 2 and f"'{empty}' is a folder with no images" in err
    code, _, err = _run(capsys, kind, "--output_dir", out)
    assert code == 2 and "--image_path is required" in err
    code, _, err = _run(capsys, kind, "--image_path", str(tmp_path / "missing.png"))
    assert code == 2 and "does not exist" in err


def test_threshold_outside_zero_one_is_refused(images, tmp_path, capsys):
    code, _, err = _run(capsys, "attention", "--image_path", str(images), "--threshold", "1.5",
                        "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "--threshold 1.5 must be in (0, 1]" in err


@pytest.fixture
def dinov3_file(tmp_path):
    """A DINOv3 ViT file (official keys: CLS, 4 storage tokens, RoPE periods, masked key bias),
    4-px patches, width 32, 2 heads, every tensor moved off its initial value."""
    from dinolab.models import DINOv3ViT

    torch.manual_seed(0)
    model = DINOv3ViT(patch_size=PATCH, embed_dim=32, depth=2, num_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "dinov3_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def test_attention_and_pca_of_a_dinov3_file(images, dinov3_file, tmp_path, capsys):
    """Storage tokens are left out: the maps cover exactly the patch grid, and are the ones
    cls_attention / patch_features give on the loaded model."""
    from dinolab.models import DINOv3ViT, load_backbone

    model = load_backbone(dinov3_file)
    assert isinstance(model, DINOv3ViT) and model.num_register_tokens == 4
    out = tmp_path / "out"
    weights = ["--pretrained_weights", str(dinov3_file), "--image_size", str(SIZE)]
    code, text, err = _run(capsys, "attention", "--image_path", str(images),
                           "--output_dir", str(out), *weights)
    assert code == 0, err
    assert '"heads": 2' in text
    for name, (w, h) in (("object", (36, 32)), ("sub/n", (32, 64))):
        assert _size(out / name / "img.png") == (w, h)
        for j in range(2):
            assert _size(out / name / f"attn-head{j}.png") == (w, h)
        assert not (out / name / "attn-head2.png").exists()
        assert _size(out / name / "attention_figure.png") == (3 * PANEL_PX, 2 * PANEL_PX)
    x, _ = load_image(images / "object.png", SIZE, PATCH)
    attn = cls_attention(model, x[None])[0]  # [2, 8, 9]: CLS to the 72 patches only
    assert attn.shape == (2, 8, 9)
    for j in range(2):
        png = np.asarray(Image.open(out / "object" / f"attn-head{j}.png").convert("L"), float)
        per_patch = png.reshape(8, PATCH, 9, PATCH).mean((1, 3))
        assert np.unravel_index(per_patch.argmax(), per_patch.shape) == np.unravel_index(
            int(attn[j].argmax()), attn[j].shape
        )

    code, _, err = _run(capsys, "pca", "--image_path", str(images), "--output_dir", str(out),
                        *weights)
    assert code == 0, err
    assert _size(out / "object" / "pca.png") == (36, 32)
    assert _size(out / "sub" / "n" / "pca.png") == (32, 64)
    assert _size(out / "object" / "pca_figure.png") == (3 * PANEL_PX, PANEL_PX)
    feats = [patch_features(model, load_image(p, SIZE, PATCH)[0][None])[0]
             for p in (images / "object.png", images / "sub" / "n.jpg")]
    assert feats[0].shape == (8, 9, 32)
    joint = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])[None, None]
    first = pca_colors(joint)[0][0, 0][: 8 * 9].reshape(8, 9, 3).numpy()
    png = np.asarray(Image.open(out / "object" / "pca.png").convert("RGB"), float) / 255
    np.testing.assert_allclose(png[::PATCH, ::PATCH], first, atol=1 / 255 + 1e-6)
