"""``dinolab export``: a checkpoint's backbone as a plain state dict and as safetensors.

A training checkpoint holds far more than a backbone (the student, the teacher, their heads,
the optimiser, the generator states). Outside code wants the backbone alone:

* ``<key>_backbone.pth``: a plain state dict ``{name: tensor}`` (what official DINO released as
  ``dino_deitsmall16_pretrain.pth``), for ``torch.load(..., weights_only=True)`` and
  :func:`dinolab.models.load_backbone`;
* ``<key>_backbone.safetensors``: the same tensors in the safetensors format (no pickle at all),
  with the architecture in its metadata, so :func:`load_exported` rebuilds the backbone from
  the file alone.

``--layout timm`` writes the keys timm's ``VisionTransformer`` expects (``_timm`` in the file
names): dinolab's ViT already uses official DINO's names, which timm shares, so this only
leaves out the iBOT ``mask_token`` that timm has no place for. A ViT with DINOv2 register tokens
is written as timm converts DINOv2's ``_reg`` models (``no_embed_class=True``): ``reg_token``,
the CLS position embedding folded into ``cls_token``, ``pos_embed`` for the patches only; the
same outputs, and :func:`load_exported` turns it back.

The training checkpoint is read with ``weights_only=True``; nothing is downloaded.

Examples:
    >>> result = export_backbone(ExportConfig(pretrained_weights="runs/dino/checkpoint.pth",
    ...                                       output_dir="export"))  # doctest: +SKIP
    >>> backbone = load_exported(result["safetensors"])              # doctest: +SKIP
    >>> backbone(torch.zeros(1, 3, 32, 32)).shape                    # doctest: +SKIP
    torch.Size([1, 96])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dinolab.tools.loading import read_backbone

__all__ = [
    "ExportConfig",
    "LAYOUTS",
    "export_backbone",
    "load_exported",
    "load_weights_into",
    "backbone_spec",
    "from_timm_layout",
    "registers_in_file",
    "to_layout",
]

#: Key layouts ``dinolab export --layout`` writes.
LAYOUTS = ("dinolab", "timm")
# Metadata keys of an exported safetensors file (safetensors metadata is str -> str).
_META_LAYOUT = "dinolab_layout"
_META_SPEC = "dinolab_backbone"
_META_SOURCE = "dinolab_source"


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class ExportConfig:
    """Settings of ``dinolab export``."""

    pretrained_weights: str = field(
        default="runs/dino/checkpoint.pth",
        metadata=_help(
            "Checkpoint to export from: a dinolab training checkpoint or an official DINO / "
            "DINOv2 file."
        ),
    )
    checkpoint_key: str = field(
        default="teacher",
        metadata=_help(
            "Which network of a training checkpoint to export: teacher (official DINO's "
            "choice for evaluation) or student."
        ),
    )
    arch: str | None = field(
        default=None,
        metadata=_help(
            "Backbone architecture; default: read from a dinolab checkpoint, or from an "
            "official file's width (384: vit_small...)."
        ),
    )
    patch_size: int | None = field(
        default=None,
        metadata=_help("ViT patch size; default: from the checkpoint (must agree when given)."),
    )
    num_heads: int | None = field(
        default=None,
        metadata=_help(
            "Attention heads, for an official-layout file of a width that is no official size "
            "(a state dict does not show them); dinolab checkpoints record them."
        ),
    )
    layout: str = field(
        default="dinolab",
        metadata=_help(
            "Key layout of the exported tensors: dinolab (loads with dinolab.models."
            "load_backbone and official DINO code) or timm (loads strictly into timm's "
            "VisionTransformer; ViTs only).",
            choices=LAYOUTS,
        ),
    )
    output_dir: str = field(
        default=".",
        metadata=_help(
            "Folder to write <checkpoint_key>_backbone.pth and .safetensors into (_timm added "
            "to the names with --layout timm); created if missing."
        ),
    )


def backbone_spec(backbone: nn.Module) -> dict[str, Any]:
    """What rebuilds ``backbone`` with the same tensor shapes: ``{"type": ..., **kwargs}``.

    A :class:`~dinolab.models.VisionTransformer` gives its constructor's arguments read from
    the module itself (width, depth, heads, MLP ratio, patch and image size, qkv bias,
    LayerScale, registers), a :class:`~dinolab.models.ResNetBackbone` its ``arch`` and
    ``small_input``.

    Raises:
        ValueError: another kind of module.
    """
    from dinolab.models.resnet import ResNetBackbone
    from dinolab.models.vit import LayerScale, VisionTransformer

    if isinstance(backbone, VisionTransformer):
        block = backbone.blocks[0]
        return {
            "type": "vit",
            "img_size": int(backbone.img_size),
            "patch_size": int(backbone.patch_size),
            "embed_dim": int(backbone.embed_dim),
            "depth": len(backbone.blocks),
            "num_heads": int(backbone.num_heads),
            "mlp_ratio": block.mlp.fc1.out_features / backbone.embed_dim,
            "qkv_bias": block.attn.qkv.bias is not None,
            # The value is a placeholder: loading overwrites the gammas.
            "init_values": 1.0 if isinstance(block.ls1, LayerScale) else None,
            "num_register_tokens": int(backbone.num_register_tokens),
        }
    if isinstance(backbone, ResNetBackbone):
        return {"type": "resnet", "arch": backbone.arch, "small_input": bool(backbone.small_input)}
    raise ValueError(
        f"backbone_spec: a {type(backbone).__name__} is neither a dinolab VisionTransformer "
        "nor a ResNetBackbone"
    )


def _build(spec: dict[str, Any]) -> nn.Module:
    from dinolab.models.resnet import ResNetBackbone
    from dinolab.models.vit import VisionTransformer

    kwargs = {k: v for k, v in spec.items() if k != "type"}
    if spec.get("type") == "vit":
        return VisionTransformer(**kwargs)
    if spec.get("type") == "resnet":
        return ResNetBackbone(**kwargs)
    raise ValueError(f"load_exported: unknown backbone type {spec.get('type')!r} in {spec}")


def to_layout(state: dict[str, torch.Tensor], spec: dict[str, Any], layout: str) -> dict[
    str, torch.Tensor
]:
    """A backbone state dict in ``layout``'s key names (see the module docstring).

    Args:
        state: dinolab backbone keys -> tensors.
        spec: :func:`backbone_spec` of the backbone.
        layout: ``"dinolab"`` (unchanged) or ``"timm"`` (no ``mask_token``).

    Raises:
        ValueError: an unknown layout, or ``timm`` for a ResNet.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}; expected one of {list(LAYOUTS)}")
    if layout == "dinolab":
        return dict(state)
    if spec["type"] != "vit":
        raise ValueError(
            f"--layout timm: the backbone is a {spec.get('arch', spec['type'])}; the timm layout "
            "is written for ViTs only (export it with --layout dinolab)"
        )
    out = {k: v for k, v in state.items() if k != "mask_token"}
    if spec["num_register_tokens"]:
        # timm's DINOv2-with-registers layout (its _convert_dinov2): no position embedding
        # for CLS or registers, so the CLS token's constant one is folded into the token.
        out["reg_token"] = out.pop("register_tokens")
        pos = out.pop("pos_embed")
        out["cls_token"] = (out["cls_token"] + pos[:, :1]).contiguous()
        out["pos_embed"] = pos[:, 1:].contiguous()
    return out


def from_timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_layout`'s ``timm`` conversion of register tokens: a state dict
    with ``reg_token`` ``[1, R, D]`` and patch-only ``pos_embed`` ``[1, N, D]`` becomes
    dinolab's ``register_tokens`` and ``pos_embed`` ``[1, 1 + N, D]`` (a zero CLS entry: the
    CLS token already holds it). Other state dicts are returned unchanged."""
    if "reg_token" not in state:
        return dict(state)
    out = dict(state)
    out["register_tokens"] = out.pop("reg_token")
    pos = out.pop("pos_embed")
    out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    return out


def registers_in_file(path: str | os.PathLike[str], checkpoint_key: str = "teacher") -> int:
    """``R``, the register tokens of the ViT in a local weights file (0 when it has none).

    Reads ``register_tokens`` (dinolab, DINOv2) or ``reg_token`` (timm) in a ``.safetensors``
    file, or in a ``.pth`` file's ``checkpoint_key`` entry (or the file itself), without
    building a model.
    """
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get(checkpoint_key), dict):
            state = state[checkpoint_key]
        shapes = {k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    for key, shape in shapes.items():
        if key.rsplit(".", 1)[-1] in ("register_tokens", "reg_token") and len(shape) == 3:
            return int(shape[1])
    return 0


def _timm_constructor(spec: dict[str, Any]) -> str:
    extra = f", init_values={spec['init_values']}" if spec["init_values"] is not None else ""
    if spec["num_register_tokens"]:
        extra += f", reg_tokens={spec['num_register_tokens']}, no_embed_class=True"
    return (
        "timm.models.vision_transformer.VisionTransformer("
        f"img_size={spec['img_size']}, patch_size={spec['patch_size']}, "
        f"embed_dim={spec['embed_dim']}, depth={spec['depth']}, num_heads={spec['num_heads']}, "
        f"mlp_ratio={spec['mlp_ratio']:g}, qkv_bias={spec['qkv_bias']}{extra}, num_classes=0)"
    )


def _load_hint(spec: dict[str, Any], layout: str, pth: Path, st: Path) -> str:
    """The Python line that loads what was written."""
    if layout == "timm":
        return (
            f"import safetensors.torch, timm; model = {_timm_constructor(spec)}; "
            f"model.load_state_dict(safetensors.torch.load_file({str(st)!r}))"
        )
    heads = f", num_heads={spec['num_heads']}" if spec["type"] == "vit" else ""
    return (
        f"from dinolab.tools.export import load_exported; backbone = load_exported({str(st)!r})"
        f"   # or: dinolab.models.load_backbone({str(pth)!r}{heads})"
    )


def export_backbone(cfg: ExportConfig) -> dict[str, Any]:
    """Write ``cfg.checkpoint_key``'s backbone as ``.pth`` and ``.safetensors``; see the module.

    Returns:
        ``{"pth", "safetensors", "layout", "backbone", "tensors", "load"}``: the two paths, the
        layout, :func:`backbone_spec`, the number of tensors and a Python line that loads them.

    Raises:
        FileNotFoundError: no checkpoint at ``cfg.pretrained_weights``.
        ValueError: the checkpoint has no such backbone (e.g. ``--checkpoint_key student`` of a
            teacher-only file), ``cfg.output_dir`` is a file, a layout that cannot hold it.
        ImportError: safetensors is not installed (``pip install 'dinolab[export]'``).
    """
    try:
        from safetensors.torch import save_file
    except ImportError as err:
        raise ImportError(
            "dinolab export writes safetensors, which is not installed: pip install "
            "'dinolab[export]' (or pip install safetensors)"
        ) from err
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"--layout {cfg.layout!r}; expected one of {list(LAYOUTS)}")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {str(out)!r} is a file, not a folder")
    loaded = read_backbone(
        cfg.pretrained_weights,
        cfg.checkpoint_key,
        arch=cfg.arch,
        patch_size=cfg.patch_size,
        num_heads=cfg.num_heads,
    )
    spec = backbone_spec(loaded.backbone)
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.backbone.state_dict().items()}
    state = to_layout(state, spec, cfg.layout)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg.checkpoint_key}_backbone" + ("_timm" if cfg.layout == "timm" else "")
    pth, st = out / f"{stem}.pth", out / f"{stem}.safetensors"
    torch.save(state, pth)
    metadata = {
        "format": "pt",
        _META_LAYOUT: cfg.layout,
        _META_SPEC: json.dumps(spec),
        _META_SOURCE: json.dumps(
            {"pretrained_weights": str(cfg.pretrained_weights),
             "checkpoint_key": cfg.checkpoint_key, "recipe": loaded.recipe}
        ),
    }
    save_file(state, str(st), metadata=metadata)
    return {
        "pth": str(pth),
        "safetensors": str(st),
        "layout": cfg.layout,
        "backbone": spec,
        "tensors": len(state),
        "load": _load_hint(spec, cfg.layout, pth, st),
    }


def load_exported(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a backbone from a ``.safetensors`` file that ``dinolab export`` wrote.

    The architecture comes from the file's metadata, the weights from its tensors (either
    layout; a timm-layout ViT gets a zero ``mask_token``, which inference never uses).

    Returns:
        The backbone in eval mode, on the CPU: ``[B, 3, H, W] -> [B, D]``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a safetensors file, or one without dinolab's metadata (a ``.pth``
            export loads with :func:`dinolab.models.load_backbone`), or tensors that do not fit.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"load_exported: no file at {str(p)!r}")
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"load_exported: {str(p)!r} is not a safetensors file ({err}); a .pth export loads "
            "with dinolab.models.load_backbone"
        ) from None
    if _META_SPEC not in metadata:
        raise ValueError(
            f"load_exported: {str(p)!r} has no {_META_SPEC!r} metadata (not written by dinolab "
            f"export); its metadata keys: {sorted(metadata)}"
        )
    backbone = _build(json.loads(metadata[_META_SPEC]))
    allowed = {"mask_token"} if metadata.get(_META_LAYOUT) == "timm" else set()
    if metadata.get(_META_LAYOUT) == "timm":
        state = from_timm_layout(state)
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(
            f"load_exported: the tensors of {str(p)!r} do not fit the backbone its metadata "
            f"describes: {str(err).splitlines()[-1].strip()[:300]}"
        ) from None
    missing = [k for k in result.missing_keys if k not in allowed]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"load_exported: the tensors of {str(p)!r} do not fit the backbone its metadata "
            f"describes: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return backbone.eval()


def load_weights_into(
    model: nn.Module, path: str | os.PathLike[str], checkpoint_key: str = "teacher"
) -> nn.Module:
    """Fill ``model`` completely from a local file, in place; return it in eval mode.

    Args:
        model: a backbone of the file's architecture.
        path: a ``.safetensors`` file (``dinolab export``'s, either layout, or any with the
            model's key names) or any file :func:`dinolab.models.load_pretrained` reads
            (a dinolab or official DINO / DINOv2 checkpoint, a plain state dict).
        checkpoint_key: the entry of a training checkpoint (``.pth`` only).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file leaves some of the model's weights unset (other than the iBOT
            ``mask_token``), or has tensors of other shapes or names.
    """
    from dinolab.models import load_pretrained

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights={str(p)!r}: no such file")
    if p.suffix != ".safetensors":
        load_pretrained(model, p, checkpoint_key, allow_missing=["mask_token",
                                                                 "num_batches_tracked"])
        return model.eval()
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(p))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"weights={str(p)!r} is not a safetensors file ({err})") from None
    state = from_timm_layout(state)  # a timm-layout export with registers: dinolab's keys
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(
            f"weights={str(p)!r} does not fit the model: "
            f"{str(err).splitlines()[-1].strip()[:300]}"
        ) from None
    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] not in
               ("mask_token", "num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights={str(p)!r} does not fit the model: it lacks {missing[:5]} and has no "
            f"place for {result.unexpected_keys[:5]}; check the architecture"
        )
    return model.eval()
