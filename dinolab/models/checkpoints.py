"""Load official DINO / DINOv2 / DINOv3 weights (or dinolab's own) into a dinolab model.

Files this understands, all read with ``torch.load(..., weights_only=True)`` (no arbitrary
code runs; ``argparse.Namespace``, which official DINO stores under ``args``, is allowed):

* an official DINO v1 training checkpoint ``{student, teacher, optimizer, epoch, args,
  dino_loss, fp16_scaler}``: the student's keys start with ``module.backbone.`` /
  ``module.head.``, the teacher's with ``backbone.`` / ``head.``;
* a DINOv2 teacher checkpoint ``{"teacher": {backbone.*, dino_head.*, ibot_head.*}}``, possibly
  with chunked blocks (``backbone.blocks.<chunk>.<i>.``);
* ``{"model": ...}`` or ``{"state_dict": ...}`` wrappers, and bare backbone state dicts (the
  released ``dino_vits16_pretrain.pth``, DINOv2 hub files with ``pos_embed`` [1, 1370, D]);
* DINOv3 ViTs (``storage_tokens``, ``rope_embed.periods``, no ``pos_embed``): the released
  ``dinov3_vit*16*_pretrain_*.pth`` files, and the same network in timm's
  (``vit_*_patch16_dinov3``) or Hugging Face transformers' (``DINOv3ViTModel``) key layout,
  mapped exactly onto the official one (:mod:`dinolab.models.dinov3`). They load only into a
  :class:`~dinolab.models.dinov3.DINOv3ViT`; :func:`load_backbone` builds one from the tensors.

Key matching, per file key: ``module.`` / ``_orig_mod.`` (DDP, ``torch.compile``) are always
stripped; ``backbone.`` is stripped (or added) when that is what makes the key a model key;
chunked-block indices are flattened; torch's parametrized weight-norm names
(``parametrizations.weight.original0/1``) and the classic ``weight_g`` / ``weight_v`` are
mapped onto whichever the model uses. ``pos_embed`` of another grid is resized bicubically
exactly as the ViT does at run time (:func:`dinolab.models.vit.interpolate_pos_embed`).
A DINO v1 file leaves only ``mask_token`` missing in a dinolab ViT, and returns its ``head.*``
keys as unexpected.

:func:`load_backbone` goes one step further: it builds the backbone too, as the file says (a
dinolab training checkpoint from the settings it saved, any other file from its tensors), from
one read of the file; :func:`backbone_from_checkpoint` does the same from a file already read,
with the DINO head saved beside the backbone if asked.

Examples:
    >>> from dinolab.models import vit_small
    >>> model = vit_small(patch_size=16)
    >>> path = "dino_deitsmall16_pretrain_full_checkpoint.pth"  # official DINO, downloaded
    >>> missing, unexpected = load_pretrained(model, path)  # doctest: +SKIP
    >>> missing  # doctest: +SKIP
    ['mask_token']
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dinolab.ema import unwrap_model
from dinolab.models.dinov3 import (
    DINOV3_SIZES,
    dinov3_layout,
    dinov3_options,
    dinov3_size_name,
    dinov3_state_from_layout,
)
from dinolab.models.vit import interpolate_pos_embed

__all__ = [
    "LoadedBackbone",
    "backbone_from_checkpoint",
    "is_dinolab_checkpoint",
    "load_backbone",
    "load_pretrained",
    "read_checkpoint",
    "infer_vit_options",
    "infer_dino_head_options",
    "HEAD_PREFIXES",
]

# Projection heads saved next to the backbone in official training checkpoints.
HEAD_PREFIXES = ("head.", "dino_head.", "ibot_head.")
# File keys that a backbone is expected to leave unused: heads and a supervised classifier.
_EXPECTED_LEFTOVERS = (*HEAD_PREFIXES, "fc.")
_ALWAYS_STRIP = ("module.", "_orig_mod.")
_CHUNKED_BLOCK = re.compile(r"(^|\.)blocks\.\d+\.(\d+)\.")
_WEIGHT_NORM_NAMES = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}


def read_checkpoint(path: str | os.PathLike[str], who: str = "load_pretrained") -> object:
    """``torch.load`` a file on the CPU with ``weights_only=True``, with clear errors.

    A ``.safetensors`` file (how timm and Hugging Face publish weights, e.g. DINOv3's
    ``model.safetensors``) is read with the safetensors package instead: a flat dict of tensors,
    no pickle at all.

    Args:
        path: the file.
        who: the function named at the start of error messages.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file is not a PyTorch checkpoint (or is truncated), or it pickles
            Python objects other than tensors and plain containers; a ``.safetensors`` file
            that is not one, or without the safetensors package installed.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{who}: no checkpoint file at {str(p)!r}")
    if p.suffix == ".safetensors":
        return _read_safetensors(p, who)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # "Unsupported global" means a well-formed pickle of some class weights_only refuses;
        # anything else (an unknown opcode...) means the bytes are no pickle at all.
        refused = [line for line in str(err).splitlines() if "Unsupported global" in line]
        if refused:
            raise ValueError(
                f"{who}: {str(p)!r} stores Python objects other than tensors and "
                "plain containers, which weights_only loading refuses "
                f"({refused[0].strip()[:200]}). If you trust the file, extract its state dict "
                "with torch.load(..., weights_only=False) and save that."
            ) from err
        raise ValueError(
            f"{who}: {str(p)!r} is not a PyTorch checkpoint, or it is truncated "
            f"(UnpicklingError)"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on bad files
        raise ValueError(
            f"{who}: {str(p)!r} is not a PyTorch checkpoint, or it is truncated "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from err


def _read_safetensors(p: Path, who: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(
            f"{who}: {str(p)!r} is a .safetensors file, which needs the safetensors package: "
            "pip install safetensors (dinolab's 'export' extra)"
        ) from None
    try:
        return load_file(p, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{who}: {str(p)!r} is not a safetensors file, or it is truncated ({err})"
        ) from err


def _select_state_dict(
    obj: object, checkpoint_key: str | None, path: str, who: str = "load_pretrained"
) -> dict[str, torch.Tensor]:
    """Find the tensors of a loaded file: under ``checkpoint_key``, "model", "state_dict"."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{who}: {path!r} holds a {type(obj).__name__}, not a state dict")
    if checkpoint_key is not None and isinstance(obj.get(checkpoint_key), Mapping):
        obj = obj[checkpoint_key]
    else:
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"{who}: found no tensors in {path!r} under checkpoint_key="
            f"{checkpoint_key!r}, 'model' or 'state_dict'; its keys are {list(obj)[:10]}"
        )
    return tensors


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _unwrap(key: str) -> str:
    """A file key without the DDP / ``torch.compile`` wrappers' prefixes."""
    for prefix in _ALWAYS_STRIP:
        key = _strip(key, prefix)
    return key


def _is_swiglu(key: str) -> bool:
    """DINOv2 ViT-g's SwiGLU feed-forward layers, which dinolab's ViT does not implement."""
    return ".mlp.w12." in key


def _candidates(key: str) -> Iterator[str]:
    """Names a file key may have in the model, most literal first."""
    key = _unwrap(key)
    prefixed = [key, _strip(key, "backbone."), "backbone." + key]
    for name in prefixed:
        chunked = [name, _CHUNKED_BLOCK.sub(r"\1blocks.\2.", name)]
        for c in chunked:
            yield c
            for torch_name, classic in _WEIGHT_NORM_NAMES.items():
                if c.endswith(torch_name):
                    yield c[: -len(torch_name)] + classic
                elif c.endswith(classic):
                    yield c[: -len(classic)] + torch_name


#: ViT widths of the official DINO / DINOv2 sizes.
_VIT_WIDTHS = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large"}


def _backbone_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A file's backbone tensors under backbone names (wrappers, ``backbone.``, chunks gone)."""
    out = {}
    for key, value in state.items():
        key = _unwrap(key)
        if key.startswith(HEAD_PREFIXES):
            continue
        out[_CHUNKED_BLOCK.sub(r"\1blocks.\2.", _strip(key, "backbone."))] = value
    return out


def infer_vit_options(
    path: str | os.PathLike[str], checkpoint_key: str | None = "teacher"
) -> dict[str, Any]:
    """Read from a file's tensors what a dinolab ViT needs to take its weights.

    DINOv2's files differ from DINO v1's in ways a state dict shows: ``patch_embed.proj.weight``
    [D, 3, p, p] gives the width and the patch size (14), ``blocks.*.ls1.gamma`` LayerScale,
    ``register_tokens`` [1, R, D] the ``_reg`` models' registers.

    Returns:
        ``{}`` when the file has no ViT patch embedding (a ResNet); otherwise ``patch_size``,
        ``embed_dim``, ``arch`` (when the width is one of the official sizes: 192 tiny, 384
        small, 768 base, 1024 large), and, when present, ``init_values`` (the value is a
        placeholder: loading overwrites the gammas) and ``num_register_tokens``: keyword
        arguments for :func:`dinolab.models.build_backbone` (without ``embed_dim``).

    Raises:
        ValueError: the file is unreadable, or its ViT uses SwiGLU feed-forward layers
            (DINOv2 ViT-g: ``mlp.w12`` / ``mlp.w3``), which dinolab's ViT does not implement.
    """
    path_str = str(path)
    state = _select_state_dict(read_checkpoint(path), checkpoint_key, path_str)
    return _vit_options(_backbone_tensors(state), path_str)


def _vit_options(state: Mapping[str, torch.Tensor], path_str: str) -> dict[str, Any]:
    """:func:`infer_vit_options` of backbone tensors already read (``_backbone_tensors``)."""
    proj = state.get("patch_embed.proj.weight")
    layout = dinov3_layout(state)
    if layout is not None:
        raise ValueError(
            f"{path_str!r} is a DINOv3 ViT ({layout} key layout: storage tokens, RoPE, no "
            "pos_embed), which build_backbone's ViTs cannot take: build it with "
            "dinolab.models.load_backbone(path), a DINOv3ViT"
        )
    if proj is None or proj.ndim != 4:
        return {}
    if any(_is_swiglu(k) for k in state):
        raise ValueError(
            f"{path_str!r} is a ViT with SwiGLU feed-forward layers (mlp.w12 / mlp.w3, DINOv2's "
            "ViT-g), which dinolab's ViT does not implement; use a ViT-S/B/L file"
        )
    opts: dict[str, Any] = {"patch_size": int(proj.shape[-1]), "embed_dim": int(proj.shape[0])}
    if int(proj.shape[0]) in _VIT_WIDTHS:
        opts["arch"] = _VIT_WIDTHS[int(proj.shape[0])]
    if any(k.endswith(".ls1.gamma") for k in state):
        opts["init_values"] = 1.0
    registers = state.get("register_tokens")
    if registers is not None and registers.ndim == 3:
        opts["num_register_tokens"] = int(registers.shape[1])
    return opts


def infer_dino_head_options(
    path: str | os.PathLike[str], checkpoint_key: str | None = "teacher"
) -> tuple[str, dict[str, Any]] | None:
    """The DINO head that a training checkpoint saved beside its backbone, if any.

    Official DINO v1 saves it under ``head.``, DINOv2 under ``dino_head.`` (its ``ibot_head.``
    is not read); released backbone-only files have none.

    Returns:
        None without a head; else ``(prefix, kwargs)``: the prefix (``"head."`` or
        ``"dino_head."``) and :class:`dinolab.models.DINOHead` arguments read from the
        shapes: ``out_dim`` and ``bottleneck_dim`` from ``last_layer.weight_v`` [K, bottleneck],
        ``nlayers`` from the MLP's Linear weights, ``hidden_dim`` from the first of them,
        ``use_bn`` from BatchNorm statistics.
    """
    return _head_options(_select_state_dict(read_checkpoint(path), checkpoint_key, str(path)))


def _head_options(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """:func:`infer_dino_head_options` of tensors already read."""
    plain = {_unwrap(key): value for key, value in state.items()}
    for prefix in ("head.", "dino_head."):
        last = plain.get(f"{prefix}last_layer.weight_v")
        if last is None:
            last = plain.get(f"{prefix}last_layer.parametrizations.weight.original1")
        if last is None or last.ndim != 2:
            continue
        linear = re.compile(rf"^{re.escape(prefix)}mlp\.(\d+)\.weight$")
        weights = sorted(
            (int(m.group(1)), v)
            for k, v in plain.items()
            if (m := linear.match(k)) is not None and v.ndim == 2
        )
        if not weights:
            continue
        opts: dict[str, Any] = {
            "out_dim": int(last.shape[0]),
            "bottleneck_dim": int(last.shape[1]),
            "nlayers": len(weights),
            "use_bn": any(k.startswith(f"{prefix}mlp.") and k.endswith(".running_mean")
                          for k in plain),
        }
        if len(weights) > 1:
            opts["hidden_dim"] = int(weights[0][1].shape[0])
        return prefix, opts
    return None


def _fit_pos_embed(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Resize a file ``pos_embed`` [1, 1+M*M, D] to the model's [1, 1+G*G, D], else None."""
    if value.ndim != 3 or target.ndim != 3 or value.shape[0] != 1:
        return None
    if value.shape[2] != target.shape[2]:
        return None
    n_model = target.shape[1] - 1
    g = math.isqrt(n_model)
    n_file = value.shape[1] - 1
    if g * g != n_model or math.isqrt(n_file) ** 2 != n_file:
        return None
    return interpolate_pos_embed(value, (g, g), num_prefix_tokens=1)


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    checkpoint_key: str | None = "teacher",
    allow_missing: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Load official DINO / DINOv2 (or dinolab) weights into ``model``, non-strictly.

    Args:
        model: the module to fill (a ViT or ResNet backbone, a MultiCropWrapper, ...; a DDP
            wrapper is unwrapped).
        path: the ``.pth`` file.
        checkpoint_key: entry of a training checkpoint to use ("teacher", as official DINO's
            evaluation scripts; "student" for the student). Ignored when the file has no such
            entry: then a "model" / "state_dict" entry or the whole file is used.
        allow_missing: None (default) loads whatever matches and returns the rest as
            missing. A list of keys or last key parts (e.g. ``["mask_token",
            "num_batches_tracked"]``) for a backbone that is meant to be
            complete) makes every other model key that the file does not provide an error,
            raised before the model is touched: otherwise a file of another depth or layout
            would leave part of the network at its random initialisation.

    Returns:
        ``(missing_keys, unexpected_keys)``: model keys the file did not provide (e.g.
        ``mask_token`` for a DINO v1 file), and file keys (as written in the file) that the
        model has no place for (e.g. the ``head.*`` / ``dino_head.*`` projection heads when
        loading into a bare backbone). Unexpected keys other than heads (and a ResNet's
        supervised ``fc`` classifier) trigger a warning,
        because they usually mean an architecture mismatch (LayerScale, registers).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is unreadable or truncated; no key of the file matches the model
            (a foreign checkpoint); a matched key has another shape (other than a resizable
            ``pos_embed``); two file keys map to the same model key; model keys outside
            ``allow_missing`` have no tensor in the file (when ``allow_missing`` is given).
    """
    path_str = str(path)
    state = _select_state_dict(read_checkpoint(path), checkpoint_key, path_str)
    return _load_state(model, state, path_str, allow_missing, stacklevel=3)


def _load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    path_str: str,
    allow_missing: Sequence[str] | None,
    who: str = "load_pretrained",
    stacklevel: int = 2,
) -> tuple[list[str], list[str]]:
    """:func:`load_pretrained` of tensors already read (``_select_state_dict``)."""
    target = unwrap_model(model)
    model_state = target.state_dict()
    layout = dinov3_layout(_backbone_tensors(state))
    if layout is not None:
        if not any(k.endswith("rope_embed.periods") for k in model_state):
            raise ValueError(
                f"{who}: {path_str!r} is a DINOv3 ViT ({layout} key layout: storage tokens, "
                f"RoPE, no pos_embed); a {type(target).__name__} cannot take it (it would keep "
                "random position embeddings). Build it with dinolab.models.load_backbone(path), "
                "or load it into a dinolab.models.DINOv3ViT"
            )
        if layout != "official":
            state, _ = dinov3_state_from_layout(_backbone_tensors(state), layout, path_str)
            if allow_missing is not None:  # timm and transformers never store the periods
                allow_missing = [*allow_missing, "rope_embed.periods"]

    matched: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unexpected: list[str] = []
    mismatches: list[str] = []
    for file_key, value in state.items():
        model_key = next((c for c in _candidates(file_key) if c in model_state), None)
        if model_key is None:
            unexpected.append(file_key)
            continue
        if model_key in source_of:
            raise ValueError(
                f"{who}: file keys {source_of[model_key]!r} and {file_key!r} in "
                f"{path_str!r} both map to model key {model_key!r}"
            )
        want = model_state[model_key]
        if value.shape != want.shape and model_key.split(".")[-1] == "pos_embed":
            resized = _fit_pos_embed(value, want)
            value = resized if resized is not None else value
        if value.shape != want.shape:
            mismatches.append(
                f"{model_key!r}: file {tuple(value.shape)} vs model {tuple(want.shape)}"
            )
            continue
        matched[model_key] = value
        source_of[model_key] = file_key
    if mismatches:
        raise ValueError(
            f"{who}: {len(mismatches)} tensor(s) of {path_str!r} have another shape "
            f"than the model's: {'; '.join(mismatches[:5])}"
            + (" ..." if len(mismatches) > 5 else "")
            + ". Check arch, patch_size and embed_dim."
        )
    if not matched:
        raise ValueError(
            f"{who}: no key of {path_str!r} matches the model (foreign checkpoint?). "
            f"File keys: {list(state)[:5]}; model keys: {list(model_state)[:5]}"
        )
    if allow_missing is not None:
        absent = [
            k
            for k in model_state
            if k not in matched and k not in allow_missing
            and k.rsplit(".", 1)[-1] not in allow_missing
        ]
        if absent:
            hint = (
                " The file's ViT has SwiGLU feed-forward layers (DINOv2 ViT-g), which dinolab "
                "does not implement."
                if any(_is_swiglu(k) for k in unexpected)
                else " Check arch (depth), LayerScale (init_values) and registers "
                "(num_register_tokens), or the checkpoint key."
            )
            raise ValueError(
                f"{who}: {path_str!r} has no tensor for {len(absent)} of the "
                f"model's {len(model_state)} keys, e.g. {absent[:5]}: they would stay at their "
                f"random initialisation.{hint}"
            )
    result = target.load_state_dict(matched, strict=False)
    stray = [k for k in unexpected
             if not _strip(_strip(k, "module."), "backbone.").startswith(_EXPECTED_LEFTOVERS)]
    if stray:
        warnings.warn(
            f"{who}: {len(stray)} key(s) of {path_str!r} have no place in the model, "
            f"e.g. {stray[:5]}; the architecture may differ (LayerScale init_values? "
            "num_register_tokens?)",
            stacklevel=stacklevel,
        )
    return list(result.missing_keys), unexpected


# ``dinolab.train.checkpoint.CHECKPOINT_FORMAT``, the marker of dinolab's own training
# checkpoints, and its version (repeated here because the library's layers import downwards
# only: train imports models, not the reverse; a test keeps them equal).
_DINOLAB_FORMAT = "dinolab-checkpoint"
_DINOLAB_VERSION = 1  # dinolab.train.checkpoint.CHECKPOINT_VERSION
# (embed_dim, depth, num_heads) of the named ViTs, as the recipes build them (``--arch``,
# overridden by ``--embed_dim`` / ``--depth`` / ``--num_heads``); the dino recipe reads it too.
VIT_SIZES = _VIT_SIZES = {
    "vit_course": (128, 4, 4),
    "vit_micro": (96, 4, 3),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
# Everything a complete backbone may lack from a file: DINO v1 has no iBOT mask token, and
# BatchNorm's step counters are not weights.
_MAY_LACK = ["mask_token", "num_batches_tracked"]


def is_dinolab_checkpoint(checkpoint: object) -> bool:
    """Whether a loaded file is a dinolab training checkpoint (``dinolab train ...``)."""
    return isinstance(checkpoint, Mapping) and checkpoint.get("format") == _DINOLAB_FORMAT


@dataclass
class LoadedBackbone:
    """A network built from a checkpoint by :func:`backbone_from_checkpoint`.

    Attributes:
        backbone: the backbone with the file's weights, in eval mode ([B, 3, H, W] -> [B, D]).
        head: the DINO head saved beside it (asked for with ``with_head=True`` and present in
            the file), in eval mode; else None.
        out_dim: the head's ``K``, or None without a head.
        source: ``"dinolab"`` (a dinolab training checkpoint) or ``"official"`` (any other
            layout: official DINO / DINOv2 files, bare state dicts).
        recipe: the recipe that wrote a dinolab checkpoint (``"dino"``, ``"distill"``...).
        args: the training settings a dinolab checkpoint saved (``{}`` for other files).
    """

    backbone: nn.Module
    head: nn.Module | None = None
    out_dim: int | None = None
    source: str = "official"
    recipe: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


def _resnet_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The torchvision ResNet whose block type and blocks per stage the tensors show."""
    from dinolab.models.resnet import RESNET_ARCHS

    bottleneck = "layer1.0.conv3.weight" in state
    counts = []
    for stage in range(1, 5):
        found = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(found))
    for name, (block, layers) in RESNET_ARCHS.items():
        if layers == counts and (block.expansion == 4) == bottleneck:
            return name
    return None


def _check_which(which: object) -> str:
    if not isinstance(which, str) or not which:
        raise ValueError(
            f"load_backbone: which={which!r} must name an entry of the checkpoint: 'teacher' "
            "or 'student'"
        )
    return which


def _dinolab_backbone(
    ckpt: Mapping[str, Any],
    which: str,
    where: str,
    arch: str | None,
    patch_size: int | None,
    num_heads: int | None,
    img_size: int | None,
    with_head: bool,
) -> LoadedBackbone:
    """Build and fill the ``which`` backbone of a dinolab checkpoint from its saved settings."""
    from dinolab.models.heads import DINOHead
    from dinolab.models.resnet import RESNET_ARCHS, ResNetBackbone
    from dinolab.models.vit import VisionTransformer

    recipe = ckpt.get("recipe")
    args = dict(ckpt.get("args") or {})
    entries = [str(k) for k in ckpt]
    if int(ckpt.get("version", 1)) > _DINOLAB_VERSION:
        raise ValueError(
            f"load_backbone: {where!r} has format version {ckpt.get('version')}, newer than "
            f"this dinolab's {_DINOLAB_VERSION}; upgrade dinolab to read it"
        )
    entry = ckpt.get(which)
    if not isinstance(entry, Mapping):
        raise ValueError(
            f"load_backbone: {where!r} has no {which!r} entry; expected 'teacher' or "
            f"'student' (the checkpoint's entries: {entries})"
        )
    if recipe == "distill" and which == "teacher":
        raise ValueError(
            f"load_backbone: {where!r} is a distill checkpoint: its teacher is the frozen input "
            "model, whose architecture it does not record; load the student "
            "(which='student') or the teacher's own file "
            f"({args.get('teacher_pretrained_weights')!r})"
        )
    prefix = "backbone."
    state = {
        _unwrap(k)[len(prefix):]: v
        for k, v in entry.items()
        if isinstance(k, str) and _unwrap(k).startswith(prefix) and isinstance(v, torch.Tensor)
    }
    if not state:
        raise ValueError(
            f"load_backbone: {where!r} has no backbone under {which!r} (no 'backbone.*' "
            f"tensors; its keys: {[str(k) for k in entry][:10]}); a dinolab checkpoint of a "
            f"{recipe!r} run. Its entries: {entries}"
        )
    saved_arch = args.get("arch")
    if arch is not None and arch != saved_arch:
        raise ValueError(
            f"load_backbone: arch={arch!r} contradicts {where!r}, a dinolab checkpoint of a "
            f"{saved_arch!r}; leave arch unset (a dinolab checkpoint records its architecture)"
        )
    backbone: nn.Module
    if saved_arch in _VIT_SIZES:
        default = _VIT_SIZES[saved_arch]
        dim = args.get("embed_dim") or default[0]
        depth = args.get("depth") or default[1]
        heads = args.get("num_heads") or default[2]
        saved_patch = args.get("patch_size")
        proj = state.get("patch_embed.proj.weight")
        if saved_patch is None and proj is not None:
            saved_patch = int(proj.shape[-1])
        for name, given, saved in (("patch_size", patch_size, saved_patch),
                                   ("num_heads", num_heads, heads)):
            if given is not None and given != saved:
                raise ValueError(
                    f"load_backbone: {name}={given!r} contradicts {where!r}, a dinolab "
                    f"checkpoint of a {saved_arch} with {name} {saved!r}; leave it unset (a "
                    "dinolab checkpoint records its architecture)"
                )
        size = img_size or args.get("global_crops_size") or 224
        # The MLP width is read from the tensors (vit_micro's ratio is 2, the others' 4).
        fc1 = state.get("blocks.0.mlp.fc1.weight")
        mlp_ratio = int(fc1.shape[0]) / dim if fc1 is not None else 4.0
        registers = state.get("register_tokens")
        backbone = VisionTransformer(img_size=size, patch_size=saved_patch or 16, embed_dim=dim,
                                     depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                                     num_register_tokens=0 if registers is None
                                     else int(registers.shape[1]))
        pos = state.get("pos_embed")
        if pos is not None and pos.shape != backbone.pos_embed.shape:
            resized = _fit_pos_embed(pos, backbone.pos_embed)
            state["pos_embed"] = resized if resized is not None else pos
    elif saved_arch in RESNET_ARCHS:
        conv1 = state.get("conv1.weight")
        small = conv1 is not None and conv1.shape[-1] == 3
        backbone = ResNetBackbone(saved_arch, small_input=small)
    else:
        raise ValueError(
            f"load_backbone: {where!r} records arch={saved_arch!r}, which this dinolab does "
            f"not build; expected one of {[*_VIT_SIZES, *RESNET_ARCHS]}"
        )
    try:
        backbone.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"load_backbone: the {which} backbone of {where!r} does not fit the {saved_arch} "
            f"its settings describe: {str(err).splitlines()[0][:300]}"
        ) from None
    head = out_dim = None
    if with_head:
        found = _head_options({k: v for k, v in entry.items() if isinstance(v, torch.Tensor)})
        if found is not None:
            head_prefix, head_kw = found
            head = DINOHead(backbone.embed_dim, **head_kw)
            head_state = {
                _unwrap(k)[len(head_prefix):]: v
                for k, v in entry.items()
                if _unwrap(k).startswith(head_prefix)
            }
            try:
                head.load_state_dict(head_state)
            except RuntimeError as err:
                raise ValueError(
                    f"load_backbone: the {which} head of {where!r} does not fit a DINOHead "
                    f"{head_kw}: {str(err).splitlines()[0][:300]}"
                ) from None
            head.eval()
            out_dim = head_kw["out_dim"]
    backbone.eval()
    return LoadedBackbone(backbone, head, out_dim, "dinolab", recipe, args)


def _official_backbone(
    obj: object,
    which: str,
    where: str,
    arch: str | None,
    patch_size: int | None,
    num_heads: int | None,
    img_size: int | None,
    with_head: bool,
) -> LoadedBackbone:
    """Build a backbone from what an official (or bare) file's tensors say, then fill it."""
    from dinolab.models import build_backbone
    from dinolab.models.heads import DINOHead
    from dinolab.models.resnet import RESNET_ARCHS, ResNetBackbone
    from dinolab.models.vit import VisionTransformer

    who = "load_backbone"
    state = _select_state_dict(obj, which, where, who)
    tensors = _backbone_tensors(state)
    layout = dinov3_layout(tensors)
    if layout is not None:
        return _dinov3_backbone(state, tensors, layout, where, arch, patch_size, num_heads,
                                img_size, with_head)
    backbone: nn.Module
    if "patch_embed.proj.weight" in tensors:
        found = _vit_options(tensors, where)
        patch = int(found["patch_size"])
        if patch_size is not None and patch_size != patch:
            raise ValueError(
                f"{who}: patch_size={patch_size!r} contradicts {where!r}, whose patch "
                f"embedding has {patch}-px patches"
            )
        extra = {k: found[k] for k in ("init_values", "num_register_tokens") if k in found}
        pos = tensors.get("pos_embed")
        grid = math.isqrt(max(int(pos.shape[1]) - 1, 0)) if pos is not None and pos.ndim == 3 else 0
        size = img_size or (grid * patch if grid else 224)
        name = arch or found.get("arch")
        if name is not None:
            if name not in _VIT_SIZES:
                raise ValueError(
                    f"{who}: arch={name!r} is no ViT, but {where!r} holds one (a patch "
                    f"embedding); expected one of {list(_VIT_SIZES)}"
                )
            if num_heads is not None and num_heads != _VIT_SIZES[name][2]:
                raise ValueError(
                    f"{who}: num_heads={num_heads!r} contradicts arch {name!r} "
                    f"({_VIT_SIZES[name][2]} heads)"
                )
            # The named size, complete or refused: missing blocks are an error, not random.
            backbone = build_backbone(name, patch_size=patch, img_size=size, **extra)
        else:
            if num_heads is None:
                raise ValueError(
                    f"{who}: {where!r} holds a ViT of width {found['embed_dim']}, none of the "
                    f"official sizes ({', '.join(f'{d} {n}' for d, n in _VIT_WIDTHS.items())}), "
                    "so the file does not tell its number of attention heads: pass arch= or "
                    "num_heads="
                )
            blocks = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
            fc1 = tensors.get("blocks.0.mlp.fc1.weight")
            dim = int(found["embed_dim"])
            backbone = VisionTransformer(
                img_size=size,
                patch_size=patch,
                embed_dim=dim,
                depth=max(blocks, default=0) + 1,
                num_heads=num_heads,
                mlp_ratio=int(fc1.shape[0]) / dim if fc1 is not None else 4.0,
                qkv_bias="blocks.0.attn.qkv.bias" in tensors,
                **extra,
            )
    elif "conv1.weight" in tensors and "layer1.0.conv1.weight" in tensors:
        name = arch or _resnet_arch(tensors)
        if name not in RESNET_ARCHS:
            raise ValueError(
                f"{who}: {where!r} holds a ResNet of none of the torchvision sizes "
                f"{list(RESNET_ARCHS)}" + (f" (arch={arch!r})" if arch else "")
            )
        backbone = ResNetBackbone(name, small_input=tensors["conv1.weight"].shape[-1] == 3)
    else:
        raise ValueError(
            f"{who}: {where!r} has no backbone under {which!r}: no ViT patch embedding "
            f"(patch_embed.proj.weight) and no ResNet stem (conv1.weight). Its keys: "
            f"{list(state)[:10]}"
        )
    head = out_dim = None
    saved_head = _head_options(state) if with_head else None
    if saved_head is not None:
        head_prefix, head_kw = saved_head
        head = DINOHead(backbone.embed_dim, **head_kw)
        holder = nn.Module()  # backbone.* and head.* / dino_head.*, as the file names them
        holder.add_module("backbone", backbone)
        holder.add_module(head_prefix.rstrip("."), head)
        _load_state(holder, state, where, _MAY_LACK, who, stacklevel=4)
        head.eval()
        out_dim = head_kw["out_dim"]
    else:
        _load_state(backbone, state, where, _MAY_LACK, who, stacklevel=4)
    backbone.eval()
    return LoadedBackbone(backbone, head, out_dim, "official", None, {})


def _dinov3_backbone(
    state: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    layout: str,
    where: str,
    arch: str | None,
    patch_size: int | None,
    num_heads: int | None,
    img_size: int | None,
    with_head: bool,
) -> LoadedBackbone:
    """Build a :class:`~dinolab.models.dinov3.DINOv3ViT` from a file's tensors, complete or refused.

    Every tensor the model has must come from the file (``mask_token`` excepted: timm drops it;
    the RoPE periods excepted for timm / transformers files, which do not store them), and every
    backbone tensor of the file must have its place (``local_cls_norm``, used only on local crops
    in training, excepted).
    """
    from dinolab.models.dinov3 import DINOv3ViT
    from dinolab.models.heads import DINOHead

    who = "load_backbone"
    converted, sources = dinov3_state_from_layout(tensors, layout, where)
    opts = dinov3_options(converted, num_heads=num_heads, where=where, layout=layout)
    if patch_size is not None and patch_size != opts["patch_size"]:
        raise ValueError(
            f"{who}: patch_size={patch_size!r} contradicts {where!r}, whose patch embedding has "
            f"{opts['patch_size']}-px patches"
        )
    name = dinov3_size_name(opts)
    if arch is not None and arch != name:
        raise ValueError(
            f"{who}: arch={arch!r} contradicts {where!r}, a DINOv3 ViT ({layout} layout) of width "
            f"{opts['embed_dim']}, {opts['depth']} blocks, {opts['ffn_layer']} feed-forward"
            + (f" ({name})" if name else " (no released size)")
            + f"; leave arch unset or pass one of {list(DINOV3_SIZES)}"
        )
    backbone = DINOv3ViT(img_size=img_size or 224, **opts)
    model_state = backbone.state_dict()
    may_lack = {"mask_token"} | ({"rope_embed.periods"} if layout != "official" else set())
    missing = [k for k in model_state if k not in converted and k not in may_lack]
    if missing:
        raise ValueError(
            f"{who}: {where!r} is a DINOv3 ViT ({layout} key layout) but has no tensor for "
            f"{len(missing)} of the model's {len(model_state)} keys, e.g. {missing[:5]} "
            "(official names): they would stay at their random initialisation"
        )
    stray = [sources.get(k, k) for k in converted if k not in model_state]
    if stray:
        raise ValueError(
            f"{who}: {where!r} is a DINOv3 ViT ({layout} key layout) with {len(stray)} tensor(s) "
            f"the architecture read from it has no place for, e.g. {stray[:5]}"
        )
    wrong = [
        f"{sources.get(k, k)!r}: file {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(model_state[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"{who}: {len(wrong)} tensor(s) of {where!r} (DINOv3, {layout} layout) have another "
            f"shape than the architecture read from the file: {'; '.join(wrong[:5])}"
        )
    backbone.load_state_dict(converted, strict=False)
    head = out_dim = None
    saved_head = _head_options(state) if with_head else None
    if saved_head is not None:
        head_prefix, head_kw = saved_head
        head = DINOHead(backbone.embed_dim, **head_kw)
        head_state = {}
        for key, value in state.items():
            plain = _strip(_unwrap(key), "backbone.")
            if plain.startswith(head_prefix):
                head_state[plain[len(head_prefix):]] = value
        _load_state(head, head_state, where, _MAY_LACK, who, stacklevel=4)
        head.eval()
        out_dim = head_kw["out_dim"]
    backbone.eval()
    return LoadedBackbone(backbone, head, out_dim, "official", None, {})


def backbone_from_checkpoint(
    checkpoint: object,
    which: str = "teacher",
    *,
    arch: str | None = None,
    patch_size: int | None = None,
    num_heads: int | None = None,
    img_size: int | None = None,
    with_head: bool = False,
    path: str | os.PathLike[str] = "<checkpoint>",
) -> LoadedBackbone:
    """:func:`load_backbone` of a file already read (:func:`read_checkpoint`), with extras.

    For callers that look at the file themselves (its recipe, its settings) and must not
    read it twice; ``with_head=True`` also builds the DINO head saved beside the backbone.

    Args:
        checkpoint: what :func:`read_checkpoint` returned.
        which, arch, patch_size, num_heads, img_size: as :func:`load_backbone`.
        with_head: also build and fill the DINO head of the same entry (``head.`` in dinolab
            and DINO v1 checkpoints, ``dino_head.`` in DINOv2's), when the file has one.
        path: the file's name, for error messages.

    Returns:
        A :class:`LoadedBackbone`: the backbone (eval mode), the head or None, ``out_dim``,
        and for dinolab checkpoints the recipe and settings they saved.
    """
    which = _check_which(which)
    where = str(path)
    build = _dinolab_backbone if is_dinolab_checkpoint(checkpoint) else _official_backbone
    return build(checkpoint, which, where, arch, patch_size, num_heads, img_size, with_head)


def load_backbone(
    path: str | os.PathLike[str],
    which: str = "teacher",
    *,
    arch: str | None = None,
    patch_size: int | None = None,
    num_heads: int | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """The backbone of a training checkpoint or pretrained file, built as the file says.

    The file is read once, with ``weights_only=True`` (:func:`read_checkpoint`), and the
    architecture comes from it:

    * a dinolab training checkpoint (``dinolab train dino``, ``distill``...): from the
      settings it saved (``arch``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``,
      ``global_crops_size``); its ``backbone.*`` tensors must fit them exactly. A distill
      checkpoint's teacher is the frozen input model, which it does not describe: load its
      student, or the teacher's own file;
    * any other file (official DINO / DINOv2 training checkpoints and released backbones,
      bare state dicts): from its tensors, as :func:`infer_vit_options` reads them (width,
      patch size, DINOv2's LayerScale and registers; a ResNet's depth from its stages). A
      width of an official size (192, 384, 768, 1024) names the ViT, which must then be
      complete: a file that would leave part of it random is refused;
    * a DINOv3 ViT (official, timm or transformers key layout): a
      :class:`~dinolab.models.dinov3.DINOv3ViT` as :func:`dinolab.models.dinov3.dinov3_options`
      reads it (width, depth, heads from the RoPE periods, SwiGLU or GELU, storage tokens),
      complete or refused; ViT-7B is refused.

    Args:
        path: the ``.pth`` file.
        which: the entry of a training checkpoint: ``"teacher"`` (official DINO's choice for
            evaluation) or ``"student"``. A file without that entry (a released backbone) is
            used as it is.
        arch: the architecture, for a file whose tensors do not tell it (a ViT of another
            width); must agree with the file otherwise (a DINOv3 file: one of
            :data:`~dinolab.models.dinov3.DINOV3_SIZES`, e.g. ``"dinov3_vitl16"``).
        patch_size: must agree with the file's patch embedding when given.
        num_heads: attention heads, the one thing a state dict cannot show: needed only for
            a ViT of a width that is no official size, outside dinolab checkpoints (DINOv3:
            official files show it through their RoPE periods; timm / transformers files are
            read with heads of width 64, as every release, unless this is given).
        img_size: the resolution the position embeddings are resized to once here (None: the
            file's own; the ViT resizes them to any input size at run time anyway). Only
            recorded for DINOv3, whose RoPE needs no resizing.

    Returns:
        The backbone in eval mode, on the CPU: ``[B, 3, H, W] -> [B, D]``, with
        ``embed_dim`` (and ``patch_size`` for a ViT).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is unreadable; it holds no backbone under ``which`` (the error
            names the keys found); it lacks the ``which`` entry (dinolab checkpoints); the
            backbone is incomplete or contradicts ``arch`` / ``patch_size`` / ``num_heads``.

    Examples:
        >>> backbone = load_backbone("runs/dino/checkpoint.pth")  # doctest: +SKIP
        >>> backbone(images).shape                                # doctest: +SKIP
        torch.Size([8, 128])
    """
    which = _check_which(which)
    checkpoint = read_checkpoint(path, who="load_backbone")
    loaded = backbone_from_checkpoint(
        checkpoint,
        which,
        arch=arch,
        patch_size=patch_size,
        num_heads=num_heads,
        img_size=img_size,
        path=path,
    )
    return loaded.backbone
