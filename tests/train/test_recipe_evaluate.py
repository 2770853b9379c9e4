"""``dinolab eval``: k-NN and linear probe of a checkpoint's frozen backbone."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from dinolab.train.recipes.dino import DINOConfig, train_dino
from dinolab.train.recipes.evaluate import EvalConfig, eval_knn, eval_linear, load_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dino")
    record = train_dino(
        DINOConfig(
            output_dir=str(out),
            epochs=1,
            warmup_epochs=0,
            batch_size_per_gpu=4,
            num_images=16,
            num_eval_images=8,
            local_crops_number=2,
            out_dim=64,
            head_hidden_dim=32,
            head_bottleneck_dim=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            knn_k=5,
            progress=False,
            plots=False,
            device="cpu",
        )
    )
    return out, record


def _cfg(run, **kw) -> EvalConfig:
    base = dict(
        pretrained_weights=str(run[0] / "checkpoint.pth"),
        num_images=16,
        num_eval_images=8,
        progress=False,
        device="cpu",
    )
    base.update(kw)
    return EvalConfig(**base)


def test_knn_of_a_checkpoint_equals_the_accuracy_logged_during_training(run, tmp_path):
    with pytest.warns(UserWarning, match="reported as k=16"):
        result = eval_knn(_cfg(run, nb_knn=(5, 200), output_dir=str(tmp_path)))
    # Same teacher backbone, same data, same k and T: the same number (exactly).
    assert result["knn_top1"]["5"] == run[1]["knn_top1"]
    assert result["train_images"] == 16 and result["test_images"] == 8
    assert 0.0 <= result["knn_top1"]["16"] <= 100.0  # k=200 capped at the 16 stored features
    assert json.loads((tmp_path / "eval_knn.json").read_text()) == result


def test_without_data_flags_the_checkpoints_own_data_is_scored(run):
    # The run trained on 16 dark shapes (dark_fixed) of data seed 0; no data flags: the same images.
    result = eval_knn(EvalConfig(pretrained_weights=str(run[0] / "checkpoint.pth"), nb_knn=(5,),
                                 progress=False, device="cpu"))
    assert result["knn_top1"]["5"] == run[1]["knn_top1"]
    assert result["data"].startswith("shapes (dark_fixed, seed 0, 16 + 8 images")
    # A flag given explicitly wins over the checkpoint's settings.
    grey = eval_knn(_cfg(run, nb_knn=(5,), shapes_style="grey"))
    assert grey["data"].startswith("shapes (grey, seed 0, 16 + 8 images")


def test_checkpoint_data_settings_fill_only_what_is_unset():
    from dinolab.train.recipes.evaluate import with_checkpoint_data

    saved = {"dataset": "shapes", "num_images": 5000, "num_eval_images": 1000, "num_classes": 6,
             "shapes_style": "dark", "seed": 0, "data_seed": 3}
    cfg = with_checkpoint_data(EvalConfig(num_images=100), saved)
    assert (cfg.num_images, cfg.num_eval_images, cfg.shapes_style, cfg.seed) == (
        100, 1000, "dark", 3)
    # Saved before styles existed: the grey shapes, its seed.
    old = with_checkpoint_data(EvalConfig(), {"dataset": "shapes", "seed": 2, "num_images": 64})
    assert (old.shapes_style, old.seed, old.num_images, old.num_eval_images) == (
        "grey", 2, 64, 1000)
    # Own images, or an official file: nothing to take.
    assert with_checkpoint_data(EvalConfig(), {"data_path": "x", "seed": 5}).seed == 0
    assert with_checkpoint_data(EvalConfig(), {}).shapes_style == "grey"


def test_linear_probe_and_backbone_loading(run):
    backbone, size = load_backbone(_cfg(run))
    assert size == 32 and backbone.embed_dim == 32 and len(backbone.blocks) == 2
    result = eval_linear(_cfg(run, epochs=2, n_last_blocks=2))
    assert result["feature_dim"] == 64  # CLS of the last 2 blocks, concatenated
    assert 0.0 <= result["linear_top1"] <= 100.0


def test_missing_and_foreign_weights_are_refused(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(_cfg(run, pretrained_weights=str(tmp_path / "x.pth")))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError):
        load_backbone(
            _cfg(
                run,
                pretrained_weights=str(tmp_path / "foreign.pth"),
                arch="vit_course",
                patch_size=8,
            )
        )
    with pytest.raises(ValueError, match="no 'ema' entry"):
        load_backbone(_cfg(run, checkpoint_key="ema"))


def test_a_folder_as_weights_is_named(tmp_path):
    with pytest.raises(ValueError, match="is a folder; give the checkpoint file in it"):
        load_backbone(EvalConfig(pretrained_weights=str(tmp_path)))


def test_the_evaluations_refuse_to_run_under_torchrun(monkeypatch, tmp_path):
    """Not distributed: under torchrun every rank would repeat the whole evaluation."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = EvalConfig(pretrained_weights=str(tmp_path / "none.pth"), device="cpu")
    for command, run_eval in (("knn", eval_knn), ("linear", eval_linear)):
        with pytest.raises(ValueError, match=rf"eval {command} runs in one process.*WORLD_SIZE=2"):
            run_eval(cfg)


def test_an_official_dinov2_file_is_built_from_its_own_tensors(tmp_path):
    """No --arch / --patch_size: width 384, patch 14, LayerScale and 4 registers from the file."""
    from dinolab.models import vit_small

    source = vit_small(patch_size=14, img_size=518, init_values=1e-5, num_register_tokens=4)
    with torch.no_grad():
        source.blocks[3].ls2.gamma.normal_()
        source.register_tokens.normal_()
    torch.save(source.state_dict(), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    backbone, image_size = load_backbone(
        EvalConfig(pretrained_weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"))
    )
    assert image_size == 28  # the bundled 32-px shapes, in whole 14-px patches
    assert backbone.patch_size == 14
    assert torch.equal(backbone.blocks[3].ls2.gamma, source.blocks[3].ls2.gamma)
    assert torch.equal(backbone.register_tokens, source.register_tokens)
    # Outside data: DINO's 224-px evaluation crop.
    cfg = EvalConfig(pretrained_weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"),
                     dataset="cifar10")
    assert load_backbone(cfg)[1] == 224
    # Half the blocks missing: refused, instead of evaluating six random blocks.
    half = {k: v for k, v in source.state_dict().items()
            if not any(k.startswith(f"blocks.{i}.") for i in range(6, 12))}
    torch.save(half, tmp_path / "half.pth")
    with pytest.raises(ValueError, match=r"no tensor for \d+ of the model's .* random"):
        load_backbone(EvalConfig(pretrained_weights=str(tmp_path / "half.pth")))


def test_overriding_a_dinolab_checkpoints_architecture_is_a_clear_error(run):
    with pytest.raises(ValueError, match="drop --arch / --patch_size"):
        load_backbone(EvalConfig(pretrained_weights=str(run[0] / "checkpoint.pth"), patch_size=8))


def test_a_checkpoint_of_own_images_evaluated_on_the_bundled_shapes_warns(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = tmp_path / "run"
    train_dino(DINOConfig(output_dir=str(out), data_path=str(tmp_path / "imgs"), epochs=1,
                          warmup_epochs=0, batch_size_per_gpu=4, local_crops_number=2,
                          out_dim=32, head_hidden_dim=16, head_bottleneck_dim=8, embed_dim=16,
                          depth=1, num_heads=2, knn_k=3, progress=False, plots=False,
                          device="cpu"))
    cfg = EvalConfig(pretrained_weights=str(out / "checkpoint.pth"), num_images=16,
                     num_eval_images=8, nb_knn=(5, 100), progress=False, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = eval_knn(cfg)
    said = " | ".join(str(w.message) for w in caught)
    assert "was trained on --data_path" in said
    assert result["data"].startswith("shapes (grey, seed 0, 16 + 8 images")
    # k=100 > 16 images in the memory bank: reported as what was computed, k=16.
    assert set(result["knn_top1"]) == {"5", "16"} and "larger k are reported as k=16" in said
    cfg.data_path, cfg.nb_knn = str(tmp_path / "imgs"), (5,)
    assert eval_knn(cfg)["data"] == f"imagefolder {tmp_path / 'imgs'}"


def test_the_checkpoint_is_read_once(run, tmp_path, monkeypatch):
    """dinolab eval builds the backbone from the file it read (dinolab.models.load_backbone's
    path), for a dinolab checkpoint and an official file alike."""
    from dinolab.models import vit_tiny

    torch.save({k: v for k, v in vit_tiny(patch_size=16, img_size=32).state_dict().items()
                if k != "mask_token"}, tmp_path / "dino_vitt16.pth")
    real_load, calls = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    backbone, size = load_backbone(_cfg(run))
    assert len(calls) == 1 and size == 32 and not backbone.training
    backbone, size = load_backbone(EvalConfig(pretrained_weights=str(tmp_path / "dino_vitt16.pth")))
    assert len(calls) == 2 and backbone.embed_dim == 192 and size == 32


def test_linear_probe_of_a_dinov3_file_concatenates_its_cls_tokens(tmp_path, capsys):
    """A DINOv3 file (official keys: CLS, 4 storage tokens, patches; 5 blocks) with the default
    --n_last_blocks 4: the probe reads the final-normed CLS token of each of the last 4 blocks,
    as official DINOv3 (get_intermediate_layers(x, n=4, return_class_token=True))."""
    from dinolab.cli import main
    from dinolab.models import DINOv3ViT
    from dinolab.train.recipes.evaluate import _LastBlocksCLS

    torch.manual_seed(0)
    source = DINOv3ViT(patch_size=4, embed_dim=32, depth=5, num_heads=2)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(source.state_dict(), tmp_path / "dinov3_tiny.pth")
    code = main(["eval", "linear", "--pretrained_weights", str(tmp_path / "dinov3_tiny.pth"),
                 "--num_images", "16", "--num_eval_images", "8", "--epochs", "2",
                 "--no-progress", "--device", "cpu", "--output_dir", str(tmp_path / "out")])
    capsys.readouterr()
    assert code == 0
    result = json.loads((tmp_path / "out" / "eval_linear.json").read_text())
    assert result["feature_dim"] == 4 * 32
    assert 0.0 <= result["linear_top1"] <= 100.0

    # The features, block by block, against the blocks' own outputs put through the final norm.
    backbone, size = load_backbone(EvalConfig(pretrained_weights=str(tmp_path / "dinov3_tiny.pth")))
    assert isinstance(backbone, DINOv3ViT) and size == 32
    outputs: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outputs.append(o))
             for blk in backbone.blocks]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = _LastBlocksCLS(backbone, 4)(x)
        for h in hooks:
            h.remove()
        last_cls = backbone(x)
    assert feats.shape == (3, 4 * 32) and len(outputs) == 5
    expected = torch.cat([backbone.norm(o)[:, 0] for o in outputs[1:]], dim=-1)
    torch.testing.assert_close(feats, expected)
    torch.testing.assert_close(feats[:, -32:], last_cls)  # the last block's: forward's CLS
    assert not torch.allclose(feats[:, :32], feats[:, -32:], atol=1e-3)  # four different blocks
