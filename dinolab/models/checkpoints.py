"""Load official DINO / DINOv2 weights (or dinolab's own) into a dinolab model.

Files this understands, all read with ``torch.load(..., weights_only=True)`` (no arbitrary
code runs; ``argparse.Namespace``, which official DINO stores under ``args``, is allowed):

* an official DINO v1 training checkpoint ``{student, teacher, optimizer, epoch, args,
  dino_loss, fp16_scaler}``: the student's keys start with ``module.backbone.`` /
  ``module.head.``, the teacher's with ``backbone.`` / ``head.``;
* a DINOv2 teacher checkpoint ``{"teacher": {backbone.*, dino_head.*, ibot_head.*}}``, possibly
  with chunked blocks (``backbone.blocks.<chunk>.<i>.``);
* ``{"model": ...}`` or ``{"state_dict": ...}`` wrappers, and bare backbone state dicts (the
  released ``dino_vits16_pretrain.pth``, DINOv2 hub files with ``pos_embed`` [1, 1370, D]).

Key matching, per file key: ``module.`` / ``_orig_mod.`` (DDP, ``torch.compile``) are always
stripped; ``backbone.`` is stripped (or added) when that is what makes the key a model key;
chunked-block indices are flattened; torch's parametrized weight-norm names
(``parametrizations.weight.original0/1``) and the classic ``weight_g`` / ``weight_v`` are
mapped onto whichever the model uses. ``pos_embed`` of another grid is resized bicubically
exactly as the ViT does at run time (:func:`dinolab.models.vit.interpolate_pos_embed`).
A DINO v1 file leaves only ``mask_token`` missing in a dinolab ViT, and returns its ``head.*``
keys as unexpected.

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
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dinolab.ema import unwrap_model
from dinolab.models.vit import interpolate_pos_embed

__all__ = [
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


def read_checkpoint(path: str | os.PathLike[str]) -> object:
    """``torch.load`` a file on the CPU with ``weights_only=True``, with clear errors.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file is not a PyTorch checkpoint (or is truncated), or it pickles
            Python objects other than tensors and plain containers.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"load_pretrained: no checkpoint file at {str(p)!r}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # "Unsupported global" means a well-formed pickle of some class weights_only refuses;
        # anything else (an unknown opcode...) means the bytes are no pickle at all.
        refused = [line for line in str(err).splitlines() if "Unsupported global" in line]
        if refused:
            raise ValueError(
                f"load_pretrained: {str(p)!r} stores Python objects other than tensors and "
                "plain containers, which weights_only loading refuses "
                f"({refused[0].strip()[:200]}). If you trust the file, extract its state dict "
                "with torch.load(..., weights_only=False) and save that."
            ) from err
        raise ValueError(
            f"load_pretrained: {str(p)!r} is not a PyTorch checkpoint, or it is truncated "
            f"(UnpicklingError)"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on bad files
        raise ValueError(
            f"load_pretrained: {str(p)!r} is not a PyTorch checkpoint, or it is truncated "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from err


def _select_state_dict(
    obj: object, checkpoint_key: str | None, path: str
) -> dict[str, torch.Tensor]:
    """Find the tensors of a loaded file: under ``checkpoint_key``, "model", "state_dict"."""
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"load_pretrained: {path!r} holds a {type(obj).__name__}, not a state dict"
        )
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
            f"load_pretrained: found no tensors in {path!r} under checkpoint_key="
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
    state = _backbone_tensors(_select_state_dict(read_checkpoint(path), checkpoint_key, path_str))
    proj = state.get("patch_embed.proj.weight")
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
    state = _select_state_dict(read_checkpoint(path), checkpoint_key, str(path))
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
    target = unwrap_model(model)
    model_state = target.state_dict()

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
                f"load_pretrained: file keys {source_of[model_key]!r} and {file_key!r} in "
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
            f"load_pretrained: {len(mismatches)} tensor(s) of {path_str!r} have another shape "
            f"than the model's: {'; '.join(mismatches[:5])}"
            + (" ..." if len(mismatches) > 5 else "")
            + ". Check arch, patch_size and embed_dim."
        )
    if not matched:
        raise ValueError(
            f"load_pretrained: no key of {path_str!r} matches the model (foreign checkpoint?). "
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
                f"load_pretrained: {path_str!r} has no tensor for {len(absent)} of the "
                f"model's {len(model_state)} keys, e.g. {absent[:5]}: they would stay at their "
                f"random initialisation.{hint}"
            )
    result = target.load_state_dict(matched, strict=False)
    stray = [k for k in unexpected
             if not _strip(_strip(k, "module."), "backbone.").startswith(_EXPECTED_LEFTOVERS)]
    if stray:
        warnings.warn(
            f"load_pretrained: {len(stray)} key(s) of {path_str!r} have no place in the model, "
            f"e.g. {stray[:5]}; the architecture may differ (LayerScale init_values? "
            "num_register_tokens?)",
            stacklevel=2,
        )
    return list(result.missing_keys), unexpected
