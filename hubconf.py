"""torch.hub entry points of dinolab, loading local files only (nothing is downloaded).

``torch.hub.load`` with ``source="local"`` imports this file from a dinolab checkout::

    import torch
    teacher = torch.hub.load("path/to/dinolab", "course_teacher", source="local")
    vit = torch.hub.load("path/to/dinolab", "vit_micro", source="local",
                         weights="export/teacher_backbone.safetensors")
    dino = torch.hub.load("path/to/dinolab", "dino_vits16", source="local",
                          weights="dino_deitsmall16_pretrain.pth")

Every entry returns a backbone in eval mode, ``[B, 3, H, W] -> [B, D]`` CLS features:

* ``course_teacher()``: the DINO teacher that ships with dinolab (vit_micro, 32-px images);
* ``vit_micro``, ``vit_course``, ``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``:
  the architecture, randomly initialised, or filled from ``weights=`` (a local ``.pth``:
  dinolab or official DINO / DINOv2 checkpoints, plain state dicts; or a ``.safetensors`` file
  of ``dinolab export``), which must set every weight;
* ``dino_vits16``, ``dino_vits8``, ``dino_vitb16``, ``dino_vitb8``, ``dino_resnet50``: official
  DINO's hub names. Official DINO downloads their weights; here ``pretrained=True`` needs
  ``weights=`` the local file (the official file names are in each docstring).
"""

from __future__ import annotations

from typing import Any

dependencies = ["torch"]


def _build(arch: str, weights: str | None, checkpoint_key: str, **kwargs: Any) -> Any:
    from dinolab.models import build_backbone
    from dinolab.tools.export import load_weights_into, registers_in_file

    if weights is not None and kwargs.get("num_register_tokens") is None and arch.startswith("vit"):
        kwargs["num_register_tokens"] = registers_in_file(weights, checkpoint_key)
    model = build_backbone(arch, **kwargs)
    if weights is None:
        return model.eval()
    return load_weights_into(model, weights, checkpoint_key)


def course_teacher(pretrained: bool = True) -> Any:
    """The course teacher's backbone (vit_micro: D=96, 4 blocks, 3 heads, 4-px patches, 32 px).

    ``pretrained=False`` gives the same architecture at its random initialisation (the
    baseline the course compares the teacher with).
    """
    from dinolab.tools.export import registers_in_file
    from dinolab.train.course_teacher import COURSE_TEACHER_PATH, load_course_teacher

    if not pretrained:
        registers = registers_in_file(COURSE_TEACHER_PATH)
        return _build("vit_micro", None, "teacher", num_register_tokens=registers)
    return load_course_teacher()


def _vit_entry(arch: str, doc: str) -> Any:
    def entry(
        weights: str | None = None,
        checkpoint_key: str = "teacher",
        patch_size: int | None = None,
        img_size: int | None = None,
        **kwargs: Any,
    ) -> Any:
        return _build(arch, weights, checkpoint_key, patch_size=patch_size, img_size=img_size,
                      **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (
        f"{doc}\n\n    weights: a local .pth or .safetensors file that sets every weight (None: "
        "random init); checkpoint_key: the entry of a training checkpoint; patch_size, "
        "img_size, **kwargs: as dinolab.models.build_backbone."
    )
    return entry


vit_micro = _vit_entry("vit_micro", "The course teacher's ViT: D=96, 4 blocks, 3 heads, MLP 2.")
vit_course = _vit_entry("vit_course", "The course ViT: D=128, 4 blocks, 4 heads, 8-px patches.")
vit_tiny = _vit_entry("vit_tiny", "ViT-Ti: D=192, 12 blocks, 3 heads.")
vit_small = _vit_entry("vit_small", "ViT-S: D=384, 12 blocks, 6 heads (DINO's default).")
vit_base = _vit_entry("vit_base", "ViT-B: D=768, 12 blocks, 12 heads.")
vit_large = _vit_entry("vit_large", "ViT-L: D=1024, 24 blocks, 16 heads (DINOv2).")


def _official_entry(name: str, arch: str, file: str, **fixed: Any) -> Any:
    def entry(pretrained: bool = True, weights: str | None = None, **kwargs: Any) -> Any:
        if pretrained and weights is None:
            raise ValueError(
                f"{name}(pretrained=True): dinolab downloads nothing; pass weights= the local "
                f"file (official DINO's {file}), or pretrained=False for a random init"
            )
        return _build(arch, weights if pretrained else None, "teacher", **fixed, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"Official DINO's {name}: {arch} {fixed}. pretrained=True needs weights= a local copy "
        f"of {file}; pretrained=False: random init."
    )
    return entry


dino_vits16 = _official_entry("dino_vits16", "vit_small", "dino_deitsmall16_pretrain.pth",
                              patch_size=16)
dino_vits8 = _official_entry("dino_vits8", "vit_small", "dino_deitsmall8_pretrain.pth",
                             patch_size=8)
dino_vitb16 = _official_entry("dino_vitb16", "vit_base", "dino_vitbase16_pretrain.pth",
                              patch_size=16)
dino_vitb8 = _official_entry("dino_vitb8", "vit_base", "dino_vitbase8_pretrain.pth",
                             patch_size=8)
dino_resnet50 = _official_entry("dino_resnet50", "resnet50", "dino_resnet50_pretrain.pth")
