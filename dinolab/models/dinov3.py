"""DINOv3's Vision Transformer: storage tokens, 2-D axial RoPE, masked key bias, SwiGLU.

The architecture of facebookresearch/dinov3 (``dinov3/models/vision_transformer.py``),
written here from its published facts, with the same state-dict keys so that the released
``dinov3_vit*16*_pretrain_*.pth`` files load with nothing renamed. What changed since DINOv2:

* **tokens** are ``[CLS, R storage tokens, N patches]`` (``storage_tokens`` [1, R, D], R = 4 in
  every release; DINOv2 called them registers). There is **no** ``pos_embed``;
* **position** enters only through 2-D axial RoPE, applied to the queries and keys of the patch
  tokens in every block (CLS and storage tokens get none). Each head splits its ``d`` channels
  into a y half and an x half; patch ``(i, j)`` of an ``h x w`` grid has centre coordinates
  ``y = 2 (i + 0.5) / h - 1`` and ``x = 2 (j + 0.5) / w - 1`` in [-1, 1] (each axis normalised on
  its own), and its angles are ``2 pi y / period_k`` then ``2 pi x / period_k`` for the ``d / 4``
  periods ``period_k = base ** (k / (d / 4))`` (base 100), the ``d / 2`` angles repeated twice to
  ``d`` and applied rotate-half style: ``q' = q cos + rotate_half(q) sin``. The periods are the
  buffer ``rope_embed.periods`` [d / 4] (the released files hold them rounded to bfloat16, and
  they are read from the file, not recomputed). Any image size that is a multiple of the patch
  works: the grid is recomputed, nothing is interpolated;
* ``blocks.i.attn.qkv`` has a bias and a ``bias_mask`` buffer [3D] that zeroes its key part;
* every block has LayerScale (``ls1.gamma``, ``ls2.gamma``); LayerNorm eps is 1e-5;
* the feed-forward layer is a GELU MLP (``mlp.fc1``, ``mlp.fc2``) for S, B and L, and SwiGLU
  (``mlp.w1``, ``mlp.w2``, ``mlp.w3``: ``w3(silu(w1 x) * w2 x)``, hidden width
  ``2/3 * ratio * D`` rounded up to a multiple of 8) for S+, L+ and H+.

The training-time RoPE augmentations (coordinate shift, jitter, rescale) are options, off by
default and never active in eval mode. Stochastic depth, when asked for, is dinolab's per-sample
:class:`~dinolab.models.vit.DropPath` (the same expectation as the official subset trick).

dinolab also computes what the official code does not expose (it calls fused attention): the
last block's attention map with RoPE applied, :meth:`DINOv3ViT.get_last_selfattention`, and
``num_register_tokens`` (= the storage tokens), so :mod:`dinolab.eval.attention` (CLS attention,
its Jaccard, the PCA colours) works on a DINOv3 backbone.

Besides the official key layout, :func:`dinov3_state_from_layout` maps timm's
(``vit_*_patch16_dinov3``, ``timm.models.eva``) and Hugging Face transformers'
(``DINOv3ViTModel``) layouts onto it; :func:`dinov3_options` reads the architecture from the
tensors. :func:`dinolab.models.load_backbone` uses both.

Examples:
    >>> import torch
    >>> vit = DINOv3ViT(patch_size=8, embed_dim=64, depth=2, num_heads=4)   # d = 16: 4 periods
    >>> vit(torch.randn(2, 3, 32, 48)).shape                     # any multiple of the patch
    torch.Size([2, 64])
    >>> out = vit.forward_features(torch.randn(2, 3, 32, 32))
    >>> out["x_storage_tokens"].shape, out["x_norm_patchtokens"].shape
    (torch.Size([2, 4, 64]), torch.Size([2, 16, 64]))
    >>> vit.get_last_selfattention(torch.randn(1, 3, 32, 32)).shape   # 1 + 4 + 16 tokens
    torch.Size([1, 4, 21, 21])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinolab.models.vit import DropPath, LayerScale, Mlp, PatchEmbed

__all__ = [
    "DINOV3_SIZES",
    "DINOv3Block",
    "DINOv3ViT",
    "MaskedBiasLinear",
    "RoPEAttention",
    "RopePositionEmbedding",
    "SwiGLUFFN",
    "dinov3_layout",
    "dinov3_options",
    "dinov3_size_name",
    "dinov3_state_from_layout",
    "dinov3_vits16",
    "dinov3_vits16plus",
    "dinov3_vitb16",
    "dinov3_vitl16",
    "dinov3_vitl16plus",
    "dinov3_vith16plus",
    "rope_rotate_half",
    "swiglu_hidden_dim",
]

#: The released DINOv3 ViTs dinolab builds: name -> (D, depth, heads, ffn ratio, ffn layer).
#: All have head dimension 64, 4 storage tokens and patch 16. ViT-7B (D 4096, 40 blocks, no qkv
#: bias) is not among them: see :func:`dinov3_options`.
DINOV3_SIZES: dict[str, tuple[int, int, int, float, str]] = {
    "dinov3_vits16": (384, 12, 6, 4.0, "mlp"),
    "dinov3_vits16plus": (384, 12, 6, 6.0, "swiglu"),
    "dinov3_vitb16": (768, 12, 12, 4.0, "mlp"),
    "dinov3_vitl16": (1024, 24, 16, 4.0, "mlp"),
    "dinov3_vitl16plus": (1024, 24, 16, 6.0, "swiglu"),
    "dinov3_vith16plus": (1280, 32, 20, 6.0, "swiglu"),
}
_FFN_LAYERS = ("mlp", "swiglu")
_7B_WIDTH = 4096


def swiglu_hidden_dim(dim: int, ffn_ratio: float, align_to: int = 8) -> int:
    """SwiGLU hidden width: ``int(2/3 * int(dim * ffn_ratio))`` rounded up to ``align_to``.

    Two thirds because SwiGLU has three matrices where a GELU MLP has two, so the parameter
    count stays that of an MLP of ratio ``ffn_ratio``; e.g. D=384, ratio 6 -> 1536.
    """
    hidden = int(int(dim * ffn_ratio) * 2 / 3)
    return hidden + (-hidden % align_to)


def rope_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[a, b] -> [-b, a]`` on the last axis split in two halves: ``[..., d] -> [..., d]``."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RopePositionEmbedding(nn.Module):
    """DINOv3's 2-D axial RoPE angles for an ``h x w`` patch grid; no learnable weights.

    Args:
        head_dim: channels per attention head ``d`` (a multiple of 4): ``d / 4`` periods.
        base: the periods are ``base ** (k / (d / 4))``, k = 0 .. d/4 - 1 (official: 100).
        shift_coords: training only: add one uniform value in ``[-s, s]`` per axis.
        jitter_coords: training only: multiply each axis by a log-uniform factor in
            ``[1/j, j]``.
        rescale_coords: training only: multiply both axes by one log-uniform factor in
            ``[1/r, r]`` (official training: 2).

    Buffers:
        periods: ``[d / 4]`` float32, saved in the state dict (``rope_embed.periods``).
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 100.0,
        shift_coords: float | None = None,
        jitter_coords: float | None = None,
        rescale_coords: float | None = None,
    ) -> None:
        super().__init__()
        if head_dim < 4 or head_dim % 4:
            raise ValueError(
                f"RopePositionEmbedding: head_dim={head_dim} must be a positive multiple of 4 "
                "(a y half and an x half, each rotated in pairs)"
            )
        for name, value in (("jitter_coords", jitter_coords), ("rescale_coords", rescale_coords)):
            if value is not None and not value >= 1.0:
                raise ValueError(
                    f"RopePositionEmbedding: {name}={value!r} must be a factor >= 1 (or None)"
                )
        self.head_dim = head_dim
        self.base = base
        self.shift_coords = shift_coords
        self.jitter_coords = jitter_coords
        self.rescale_coords = rescale_coords
        quarter = head_dim // 4
        exponents = torch.arange(quarter, dtype=torch.float32) / quarter
        self.register_buffer("periods", base**exponents, persistent=True)

    def coordinates(self, h: int, w: int) -> torch.Tensor:
        """Patch centres ``[h*w, 2]`` (y, x) in [-1, 1], row-major; augmented when training."""
        device = self.periods.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
        coords = 2.0 * grid - 1.0
        if self.training:
            coords = self._augment(coords)
        return coords

    def _augment(self, coords: torch.Tensor) -> torch.Tensor:
        opts = {"device": coords.device, "dtype": coords.dtype}
        if self.shift_coords is not None:
            s = float(self.shift_coords)
            coords = coords + torch.empty(1, 2, **opts).uniform_(-s, s)
        if self.jitter_coords is not None:
            j = math.log(self.jitter_coords)
            coords = coords * torch.empty(1, 2, **opts).uniform_(-j, j).exp()
        if self.rescale_coords is not None:
            r = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, 1, **opts).uniform_(-r, r).exp()
        return coords

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sin, cos)``, each ``[h*w, d]`` float32, for an ``h x w`` patch grid."""
        coords = self.coordinates(h, w)
        periods = self.periods.float()
        # [HW, 2, d/4]: all y angles, then all x angles; then the d/2 angles twice.
        angles = (2 * math.pi * coords[:, :, None]) / periods[None, None, :]
        angles = angles.flatten(1).repeat(1, 2)
        return torch.sin(angles), torch.cos(angles)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


class MaskedBiasLinear(nn.Linear):
    """``nn.Linear`` whose bias is multiplied by the ``bias_mask`` buffer (same shape).

    DINOv3's fused qkv projection: the mask is 1 on the query and value thirds and 0 on the key
    third, so keys get no bias. A key bias would not cancel in the softmax here: RoPE rotates it
    differently at each patch.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if out_features % 3:
            raise ValueError(
                f"MaskedBiasLinear: out_features={out_features} must be 3 * D (q, k and v)"
            )
        if bias:
            mask = torch.ones(out_features)
            third = out_features // 3
            mask[third : 2 * third] = 0.0
            self.register_buffer("bias_mask", mask)
        else:
            self.bias_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.bias_mask.to(self.bias.dtype)
        return F.linear(x, self.weight, bias)


class SwiGLUFFN(nn.Module):
    """``w3(silu(w1 x) * w2 x)``: ``[B, T, D] -> [B, T, D]``, hidden width ``hidden_dim``."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.w2 = nn.Linear(dim, hidden_dim, bias=bias)
        self.w3 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


def _apply_rope(
    x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor
) -> torch.Tensor:
    """Rotate the LAST ``HW`` tokens of ``x`` [B, h, T, d]; the ``T - HW`` first stay as they are.

    Computed in the dtype of ``sin`` (float32) and cast back, as the official code does.
    """
    n = sin.shape[-2]
    prefix = x.shape[-2] - n
    if prefix < 0:
        raise ValueError(
            f"RoPE: {n} patch positions for only {x.shape[-2]} tokens; check the image size"
        )
    patches = x[..., prefix:, :].to(sin.dtype)
    rotated = (patches * cos + rope_rotate_half(patches) * sin).to(x.dtype)
    return torch.cat((x[..., :prefix, :], rotated), dim=-2)


class RoPEAttention(nn.Module):
    """Multi-head self-attention with RoPE on the patch tokens' queries and keys.

    ``qkv`` is a :class:`MaskedBiasLinear` ([3D, D] weight, key bias masked) when
    ``mask_k_bias``, else a plain ``nn.Linear``; ``proj`` [D, D]. The usual path is fused
    :func:`torch.nn.functional.scaled_dot_product_attention`; the map is computed explicitly
    only when asked for.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        mask_k_bias: bool = True,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"RoPEAttention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        if mask_k_bias:
            self.qkv: nn.Linear = MaskedBiasLinear(dim, 3 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _qkv(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, h, T, d/h]
        if rope is not None:
            sin, cos = rope
            q, k = _apply_rope(q, sin, cos), _apply_rope(k, sin, cos)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, T, D] -> [B, T, D]; with ``return_attention`` also the map [B, h, T, T].

        ``rope``: ``(sin, cos)`` [N, d/h] for the last N tokens (the patches), or None.
        """
        b, t, d = x.shape
        q, k, v = self._qkv(x, rope)
        if return_attention:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return (out, attn) if return_attention else out


class DINOv3Block(nn.Module):
    """Pre-norm block: ``x + ls1(attn(norm1(x), rope))`` then ``x + ls2(mlp(norm2(x)))``.

    Keys: ``norm1``, ``attn.qkv`` (+ ``bias_mask``), ``attn.proj``, ``ls1.gamma``, ``norm2``,
    ``mlp.fc1/fc2`` (``ffn_layer="mlp"``) or ``mlp.w1/w2/w3`` (``"swiglu"``), ``ls2.gamma``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        mask_k_bias: bool = True,
        layerscale_init: float | None = 1e-5,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if ffn_layer not in _FFN_LAYERS:
            raise ValueError(f"DINOv3Block: ffn_layer={ffn_layer!r}; expected one of {_FFN_LAYERS}")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = RoPEAttention(dim, num_heads, qkv_bias=qkv_bias, mask_k_bias=mask_k_bias)
        self.ls1: nn.Module = (
            LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp: nn.Module = (
            Mlp(dim, mlp_hidden_dim) if ffn_layer == "mlp" else SwiGLUFFN(dim, mlp_hidden_dim)
        )
        self.ls2: nn.Module = (
            LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        )
        self.drop_path = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``x`` [B, T, D] -> [B, T, D]; ``rope`` = ``(sin, cos)`` of the patch grid."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def attention(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Softmax attention map [B, heads, T, T] of this block for tokens ``x`` [B, T, D]."""
        _, attn = self.attn(self.norm1(x), rope, return_attention=True)
        return attn


class DINOv3ViT(nn.Module):
    """DINOv3's ViT backbone (official keys); see the module docstring for the architecture.

    Args:
        img_size: nominal input side (only recorded: RoPE takes any multiple of the patch).
        patch_size: patch side in pixels (16 in every release).
        in_chans: input channels.
        embed_dim: token width ``D``.
        depth: number of blocks.
        num_heads: attention heads; ``D / num_heads`` (64 in the releases) must be a multiple
            of 4 for RoPE.
        ffn_ratio: feed-forward width / ``D`` (4 for S/B/L, 6 for S+/L+/H+).
        ffn_layer: ``"mlp"`` (GELU) or ``"swiglu"``.
        mlp_hidden_dim: the hidden width itself (overrides ``ffn_ratio``; a file's is read from
            its tensors).
        qkv_bias: bias in the qkv projection (True in every release but 7B).
        mask_k_bias: the ``bias_mask`` buffer that zeroes the key bias (True in every release).
        layerscale_init: LayerScale initial value (None: no LayerScale keys).
        n_storage_tokens: storage tokens ``R`` between CLS and the patches (4 in the releases).
        norm_eps: LayerNorm epsilon (1e-5).
        rope_base: base of the RoPE periods (100).
        rope_shift_coords, rope_jitter_coords, rope_rescale_coords: the training-time RoPE
            augmentations of :class:`RopePositionEmbedding` (off by default).
        untie_cls_and_patch_norms: a separate ``cls_norm`` for CLS and storage tokens (no
            release uses it; a file with ``cls_norm.*`` tensors turns it on).
        drop_path_rate: stochastic depth of every block (0 for a frozen teacher).

    Attributes:
        embed_dim, num_features: ``D``. num_heads, patch_size, n_blocks, n_storage_tokens, and
        num_register_tokens (the same R, the name dinolab's attention tools read).
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        mlp_hidden_dim: int | None = None,
        qkv_bias: bool = True,
        mask_k_bias: bool = True,
        layerscale_init: float | None = 1e-5,
        n_storage_tokens: int = 4,
        norm_eps: float = 1e-5,
        rope_base: float = 100.0,
        rope_shift_coords: float | None = None,
        rope_jitter_coords: float | None = None,
        rope_rescale_coords: float | None = None,
        untie_cls_and_patch_norms: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"DINOv3ViT: patch_size must be >= 1, got {patch_size}")
        if depth < 1:
            raise ValueError(f"DINOv3ViT: depth must be >= 1, got {depth}")
        if n_storage_tokens < 0:
            raise ValueError(f"DINOv3ViT: n_storage_tokens must be >= 0, got {n_storage_tokens}")
        if num_heads < 1 or embed_dim % num_heads or (embed_dim // num_heads) % 4:
            raise ValueError(
                f"DINOv3ViT: embed_dim={embed_dim} must split into num_heads={num_heads} heads "
                "whose width is a multiple of 4 (RoPE rotates y and x channel pairs)"
            )
        if ffn_layer not in _FFN_LAYERS:
            raise ValueError(f"DINOv3ViT: ffn_layer={ffn_layer!r}; expected one of {_FFN_LAYERS}")
        if mlp_hidden_dim is None:
            mlp_hidden_dim = (
                int(embed_dim * ffn_ratio)
                if ffn_layer == "mlp"
                else swiglu_hidden_dim(embed_dim, ffn_ratio)
            )
        self.num_features = self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.img_size = img_size
        self.n_blocks = self.depth = depth
        self.n_storage_tokens = self.num_register_tokens = n_storage_tokens
        self.ffn_layer = ffn_layer

        self.patch_embed = PatchEmbed(max(img_size, patch_size), patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if n_storage_tokens > 0:
            self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        else:
            self.storage_tokens = None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.rope_embed = RopePositionEmbedding(
            embed_dim // num_heads,
            base=rope_base,
            shift_coords=rope_shift_coords,
            jitter_coords=rope_jitter_coords,
            rescale_coords=rope_rescale_coords,
        )
        self.blocks = nn.ModuleList(
            DINOv3Block(embed_dim, num_heads, mlp_hidden_dim, ffn_layer, qkv_bias, mask_k_bias,
                        layerscale_init, norm_eps, drop_path_rate)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.cls_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if untie_cls_and_patch_norms else None
        self.head = nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        if self.storage_tokens is not None:
            nn.init.normal_(self.storage_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------- tokens
    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"DINOv3ViT: expected images [B, C, H, W], got {shape}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p or h < p or w < p:
            raise ValueError(
                f"DINOv3ViT: input {h}x{w} px is not a multiple of patch_size={p}; expected "
                f"height and width that are positive multiples of {p} (crop or resize to them)"
            )
        return h // p, w // p

    def prepare_tokens_with_masks(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images [B, C, H, W] -> tokens [B, 1 + R + N, D] (CLS, storage, patches) and (h, w).

        ``masks`` [B, N] bool (True = masked) replaces those patch embeddings by
        ``mask_token``. No position is added here: RoPE acts inside the attention.
        """
        h, w = self._grid(x)
        b = x.shape[0]
        tokens = self.patch_embed(x)  # [B, N, D]
        if masks is not None:
            if masks.shape != (b, h * w):
                raise ValueError(
                    f"DINOv3ViT: masks must have shape [B, N] = [{b}, {h * w}], got "
                    f"{tuple(masks.shape)}"
                )
            tokens = torch.where(masks.bool().unsqueeze(-1), self.mask_token.to(tokens.dtype),
                                 tokens)
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.storage_tokens is not None:
            prefix.append(self.storage_tokens.expand(b, -1, -1))
        return torch.cat((*prefix, tokens), dim=1), (h, w)

    def _final_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last LayerNorm(s): ``[B, T, D] -> [B, T, D]``."""
        if self.cls_norm is None:
            return self.norm(tokens)
        r = self.n_storage_tokens + 1
        return torch.cat((self.cls_norm(tokens[:, :r]), self.norm(tokens[:, r:])), dim=1)

    def _run(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        tokens, (h, w) = self.prepare_tokens_with_masks(x, masks)
        rope = self.rope_embed(h, w)
        for blk in self.blocks:
            tokens = blk(tokens, rope)
        return tokens

    # ----------------------------------------------------------------------------- outputs
    def forward_features(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        masks: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """All outputs of the last block, as the official ``forward_features``.

        Args:
            x: images [B, C, H, W], or a list of such batches (each its own size).
            masks: [B, N] bool or None (a list of them for a list of batches).

        Returns:
            A dict (a list of dicts for a list): ``x_norm_clstoken`` [B, D],
            ``x_storage_tokens`` [B, R, D] (normed, despite the name: the official key),
            ``x_norm_patchtokens`` [B, N, D], ``x_prenorm`` [B, 1+R+N, D], ``masks``; and
            ``x_norm_regtokens``, the storage tokens again under the name dinolab's ViT uses.
        """
        if not isinstance(x, torch.Tensor):
            batches = list(x)
            mask_list = list(masks) if masks is not None else [None] * len(batches)
            if len(mask_list) != len(batches):
                raise ValueError(
                    f"DINOv3ViT: {len(batches)} image batches but {len(mask_list)} masks"
                )
            return [self.forward_features(b, m) for b, m in zip(batches, mask_list, strict=True)]
        tokens = self._run(x, masks)  # type: ignore[arg-type]
        normed = self._final_norm(tokens)
        r = self.n_storage_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_storage_tokens": normed[:, 1 : r + 1],
            "x_norm_regtokens": normed[:, 1 : r + 1],
            "x_norm_patchtokens": normed[:, r + 1 :],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, is_training: bool = False
    ) -> torch.Tensor | dict[str, Any]:
        """Images [B, C, H, W] -> normed CLS token [B, D] (``is_training``: the whole dict)."""
        out = self.forward_features(x, masks)
        if is_training:
            return out
        return self.head(out["x_norm_clstoken"])  # type: ignore[index]

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        *,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """Outputs of chosen blocks, as the official method (first block first).

        Unlike dinolab's :class:`~dinolab.models.VisionTransformer` (DINO v1's method, which
        returns whole token sequences), this returns the PATCH tokens unless asked for more, and
        ``n`` is keyword-only as in the official code, so that a v1-style call
        ``get_intermediate_layers(x, 4)`` fails instead of reading a patch token as CLS.

        Args:
            x: images [B, C, H, W].
            n: the last ``n`` blocks (an int), or a list of block indices.
            reshape: patch tokens as maps ``[B, D, h, w]`` instead of ``[B, N, D]``.
            return_class_token: pair each with its CLS token [B, D].
            return_extra_tokens: pair each with its storage tokens [B, R, D].
            norm: apply the final LayerNorm (as the last block's outputs get).

        Returns:
            A tuple, one entry per block: the patch tokens, or a tuple ``(patches, cls)``,
            ``(patches, storage)`` or ``(patches, cls, storage)``.
        """
        depth = len(self.blocks)
        if isinstance(n, int) and not isinstance(n, bool):
            if not 1 <= n <= depth:
                raise ValueError(
                    f"get_intermediate_layers: n={n} must be in [1, {depth}] (the last n blocks)"
                )
            take = list(range(depth - n, depth))
        else:
            take = [int(i) for i in n]
            bad = [i for i in take if not 0 <= i < depth]
            if bad or not take:
                raise ValueError(
                    f"get_intermediate_layers: block indices {list(n)} must be in [0, {depth - 1}]"
                )
        tokens, (h, w) = self.prepare_tokens_with_masks(x)
        rope = self.rope_embed(h, w)
        outputs = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, rope)
            if i in take:
                outputs.append(self._final_norm(tokens) if norm else tokens)
        r = self.n_storage_tokens
        cls = [o[:, 0] for o in outputs]
        extra = [o[:, 1 : r + 1] for o in outputs]
        patches = [o[:, r + 1 :] for o in outputs]
        if reshape:
            b = x.shape[0]
            patches = [p.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token and return_extra_tokens:
            return tuple(zip(patches, cls, extra, strict=True))
        if return_class_token:
            return tuple(zip(patches, cls, strict=True))
        if return_extra_tokens:
            return tuple(zip(patches, extra, strict=True))
        return tuple(patches)

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of the last block, RoPE applied: [B, heads, T, T], T = 1 + R + N.

        The official code never forms this matrix (fused attention); here the last block
        computes ``softmax(q k^T / sqrt(d))`` explicitly from the same rotated q and k.
        """
        tokens, (h, w) = self.prepare_tokens_with_masks(x)
        rope = self.rope_embed(h, w)
        for blk in self.blocks[:-1]:
            tokens = blk(tokens, rope)
        return self.blocks[-1].attention(tokens, rope)


def _dinov3(name: str, patch_size: int, **kw: Any) -> DINOv3ViT:
    dim, depth, heads, ratio, ffn = DINOV3_SIZES[name]
    return DINOv3ViT(patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads,
                     ffn_ratio=ratio, ffn_layer=ffn, **kw)


def dinov3_vits16(patch_size: int = 16, **kw: Any) -> DINOv3ViT:
    """DINOv3 ViT-S/16: D=384, 12 blocks, 6 heads, GELU MLP (~21.6 M parameters)."""
    return _dinov3("dinov3_vits16", patch_size, **kw)


def dinov3_vits16plus(patch_size: int = 16, **kw: Any) -> DINOv3ViT:
    """DINOv3 ViT-S+/16: D=384, 12 blocks, 6 heads, SwiGLU of hidden width 1536 (~28.7 M)."""
    return _dinov3("dinov3_vits16plus", patch_size, **kw)


def dinov3_vitb16(patch_size: int = 16, **kw: Any) -> DINOv3ViT:
    """DINOv3 ViT-B/16: D=768, 12 blocks, 12 heads, GELU MLP (~85.7 M parameters)."""
    return _dinov3("dinov3_vitb16", patch_size, **kw)


def dinov3_vitl16(patch_size: int = 16, **kw: Any) -> DINOv3ViT:
    """DINOv3 ViT-L/16: D=1024, 24 blocks, 16 heads, GELU MLP (~303 M parameters)."""
    return _dinov3("dinov3_vitl16", patch_size, **kw)


def dinov3_vitl16plus(patch_size: int = 16, **kw: Any) -> DINOv3ViT:
    """DINOv3 ViT-L+/16: D=1024, 24 blocks, 16 heads, SwiGLU of hidden width 4096."""
    return _dinov3("dinov3_vitl16plus", patch_size, **kw)


def dinov3_vith16plus(patch_size: int = 16, **kw: Any) -> DINOv3ViT:
    """DINOv3 ViT-H+/16: D=1280, 32 blocks, 20 heads, SwiGLU of hidden width 5120 (~840 M)."""
    return _dinov3("dinov3_vith16plus", patch_size, **kw)


# ------------------------------------------------------------------------------ key layouts
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_HF_PREFIX = "dinov3_vit."
# Tensors of the official layout that take no part in an eval-mode forward pass.
_IGNORED_OFFICIAL = ("local_cls_norm.",)  # ViT-L SAT / 7B: used on local crops in training only


def dinov3_layout(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which DINOv3 key layout a backbone state dict has: ``"official"``, ``"timm"``,
    ``"transformers"``, or None (not a DINOv3 ViT).

    ``state`` holds backbone keys (without ``module.`` / ``backbone.``). The official layout has
    ``storage_tokens`` or ``rope_embed.periods`` (or the qkv ``bias_mask``); timm's
    (``timm.models.eva``, ``vit_*_patch16_dinov3``) has ``reg_token``, LayerScale ``gamma_1`` and
    no ``pos_embed``; Hugging Face's (``DINOv3ViTModel``) has ``embeddings.patch_embeddings`` and
    ``layer.<i>.attention.q_proj``.
    """
    keys = set(state)
    if (
        "storage_tokens" in keys
        or "rope_embed.periods" in keys
        or any(k.endswith(".attn.qkv.bias_mask") for k in keys)
    ):
        return "official"
    plain = {k[len(_HF_PREFIX):] if k.startswith(_HF_PREFIX) else k for k in keys}
    if "embeddings.patch_embeddings.weight" in plain and any(
        k.startswith("layer.") and ".attention.q_proj." in k for k in plain
    ):
        return "transformers"
    if (
        "reg_token" in keys
        and "pos_embed" not in keys
        and any(re.match(r"^blocks\.\d+\.gamma_1$", k) for k in keys)
    ):
        return "timm"
    return None


def _blocks(state: Mapping[str, Any], pattern: str = r"^blocks\.(\d+)\.") -> list[int]:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return sorted(found)


def _qkv_bias(
    q: torch.Tensor | None, k: torch.Tensor | None, v: torch.Tensor | None, dim: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fused qkv bias [3D] and its ``bias_mask`` [3D] from separate (possibly absent) biases.

    An absent query / value bias is a zero bias; an absent key bias is masked (mask 0), a present
    one kept (mask 1), so the fused layer computes exactly what the three separate ones did.
    """
    zeros = torch.zeros(dim, dtype=like.dtype)
    bias = torch.cat([zeros if t is None else t.to(like.dtype) for t in (q, k, v)])
    mask = torch.ones(3 * dim, dtype=like.dtype)
    if k is None:
        mask[dim : 2 * dim] = 0.0
    return bias, mask


def _from_timm(
    state: Mapping[str, torch.Tensor], where: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out: dict[str, torch.Tensor] = {}
    src: dict[str, str] = {}
    used: set[str] = set()

    def take(file_key: str, key: str, value: torch.Tensor | None = None) -> None:
        out[key] = state[file_key] if value is None else value
        src[key] = file_key
        used.add(file_key)

    for file_key, key in (("cls_token", "cls_token"), ("reg_token", "storage_tokens"),
                          ("patch_embed.proj.weight", "patch_embed.proj.weight"),
                          ("patch_embed.proj.bias", "patch_embed.proj.bias"),
                          ("norm.weight", "norm.weight"), ("norm.bias", "norm.bias")):
        if file_key in state:
            take(file_key, key)
    for i in _blocks(state):
        f, o = f"blocks.{i}.", f"blocks.{i}."
        for part in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                     "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias"):
            if f + part in state:
                take(f + part, o + part)
        for file_part, part in (("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma")):
            if f + file_part in state:
                take(f + file_part, o + part)
        swiglu = f + "mlp.fc1_g.weight" in state
        names = (("fc1_g", "w1"), ("fc1_x", "w2"), ("fc2", "w3")) if swiglu else (
            ("fc1", "fc1"), ("fc2", "fc2"))
        for file_part, part in names:
            for leaf in ("weight", "bias"):
                if f"{f}mlp.{file_part}.{leaf}" in state:
                    take(f"{f}mlp.{file_part}.{leaf}", f"{o}mlp.{part}.{leaf}")
        weight = state.get(f + "attn.qkv.weight")
        if weight is not None:
            dim = weight.shape[0] // 3
            q, v = state.get(f + "attn.q_bias"), state.get(f + "attn.v_bias")
            bias, mask = _qkv_bias(q, None, v, dim, weight)
            used.update(f + n for n in ("attn.q_bias", "attn.v_bias") if f + n in state)
            out[o + "attn.qkv.bias"], out[o + "attn.qkv.bias_mask"] = bias, mask
            src[o + "attn.qkv.bias"] = src[o + "attn.qkv.bias_mask"] = f + "attn.q_bias/v_bias"
    # timm's RoPE tables and k_bias are non-persistent buffers, rebuilt from the architecture.
    used |= {k for k in state if k.startswith("rope.") or k.endswith(".attn.k_bias")}
    _refuse_leftovers(state, used, "timm", where)
    return out, src


def _from_transformers(
    state: Mapping[str, torch.Tensor], where: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    plain = {k[len(_HF_PREFIX):] if k.startswith(_HF_PREFIX) else k: k for k in state}
    out: dict[str, torch.Tensor] = {}
    src: dict[str, str] = {}
    used: set[str] = set()

    def get(key: str) -> torch.Tensor | None:
        return state[plain[key]] if key in plain else None

    def take(hf_key: str, key: str, value: torch.Tensor | None = None) -> None:
        if hf_key not in plain:
            return
        out[key] = state[plain[hf_key]] if value is None else value
        src[key] = plain[hf_key]
        used.add(plain[hf_key])

    take("embeddings.cls_token", "cls_token")
    take("embeddings.register_tokens", "storage_tokens")
    mask_token = get("embeddings.mask_token")
    if mask_token is not None:  # transformers keeps it [1, 1, D]; the official one is [1, D]
        take("embeddings.mask_token", "mask_token", mask_token.reshape(1, -1))
    take("embeddings.patch_embeddings.weight", "patch_embed.proj.weight")
    take("embeddings.patch_embeddings.bias", "patch_embed.proj.bias")
    take("norm.weight", "norm.weight")
    take("norm.bias", "norm.bias")
    for i in _blocks(plain, r"^layer\.(\d+)\."):
        f, o = f"layer.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            take(f"{f}norm1.{leaf}", f"{o}norm1.{leaf}")
            take(f"{f}norm2.{leaf}", f"{o}norm2.{leaf}")
            take(f"{f}attention.o_proj.{leaf}", f"{o}attn.proj.{leaf}")
        take(f + "layer_scale1.lambda1", o + "ls1.gamma")
        take(f + "layer_scale2.lambda1", o + "ls2.gamma")
        gated = f + "mlp.gate_proj.weight" in plain
        names = (("gate_proj", "w1"), ("up_proj", "w2"), ("down_proj", "w3")) if gated else (
            ("up_proj", "fc1"), ("down_proj", "fc2"))
        for hf_part, part in names:
            for leaf in ("weight", "bias"):
                take(f"{f}mlp.{hf_part}.{leaf}", f"{o}mlp.{part}.{leaf}")
        ws = [get(f"{f}attention.{n}_proj.weight") for n in "qkv"]
        if all(w is not None for w in ws):
            weight = torch.cat(ws)  # type: ignore[arg-type]
            dim = weight.shape[0] // 3
            q, k, v = (get(f"{f}attention.{n}_proj.bias") for n in "qkv")
            bias, mask = _qkv_bias(q, k, v, dim, weight)
            out[o + "attn.qkv.weight"] = weight
            out[o + "attn.qkv.bias"], out[o + "attn.qkv.bias_mask"] = bias, mask
            src[o + "attn.qkv.weight"] = plain[f"{f}attention.q_proj.weight"].replace(
                "q_proj", "{q,k,v}_proj")
            src[o + "attn.qkv.bias"] = src[o + "attn.qkv.weight"].replace("weight", "bias")
            src[o + "attn.qkv.bias_mask"] = src[o + "attn.qkv.bias"]
            for n in "qkv":
                for leaf in ("weight", "bias"):
                    if f"{f}attention.{n}_proj.{leaf}" in plain:
                        used.add(plain[f"{f}attention.{n}_proj.{leaf}"])
    # inv_freq is a non-persistent buffer, rebuilt from the architecture.
    used |= {k for k in state if ".inv_freq" in k or k.endswith("rope_embeddings.inv_freq")}
    _refuse_leftovers(state, used, "transformers", where)
    return out, src


def _refuse_leftovers(
    state: Mapping[str, torch.Tensor], used: set[str], layout: str, where: str
) -> None:
    stray = [k for k in state if k not in used]
    if stray:
        raise ValueError(
            f"{where!r} is a DINOv3 backbone in {layout}'s key layout, but {len(stray)} of its "
            f"tensors have no exact place in DINOv3's architecture, e.g. {stray[:5]}; dinolab "
            "maps only the released DINOv3 ViTs' layout (it would otherwise compute another "
            "network)"
        )


def dinov3_state_from_layout(
    state: Mapping[str, torch.Tensor], layout: str | None = None, where: str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A DINOv3 backbone state dict in the official key layout, from any of the three.

    timm (``vit_*_patch16_dinov3``): ``reg_token`` -> ``storage_tokens``, ``blocks.i.gamma_1/2``
    -> ``ls1/ls2.gamma``, ``attn.q_bias`` / ``v_bias`` -> the fused ``attn.qkv.bias`` with a zero
    key part (timm models without them: a zero bias), SwiGLU ``mlp.fc1_g / fc1_x / fc2`` ->
    ``mlp.w1 / w2 / w3``. transformers (``DINOv3ViTModel``): ``embeddings.*`` ->
    ``cls_token`` / ``storage_tokens`` / ``mask_token`` (reshaped to [1, D]) /
    ``patch_embed.proj``, ``layer.i.attention.q/k/v_proj`` concatenated into ``attn.qkv``,
    ``o_proj`` -> ``attn.proj``, ``layer_scale1/2.lambda1`` -> ``ls1/ls2.gamma``, MLP
    ``up_proj / down_proj`` -> ``fc1 / fc2`` (GELU) or ``gate_proj / up_proj / down_proj`` ->
    ``w1 / w2 / w3`` (SwiGLU). Both rebuild the ``bias_mask`` buffer (key bias masked unless the
    file has one). Neither stores the RoPE periods: they compute them in float32 from base 100,
    which the built model does too (the official files hold bfloat16-rounded ones, so official
    and timm / transformers outputs differ by that rounding).

    Args:
        state: backbone tensors (no ``module.`` / ``backbone.`` prefix).
        layout: as :func:`dinov3_layout` says (None: detect it).
        where: the file's name, for messages.

    Returns:
        ``(tensors, sources)``: the official-layout tensors, and for each official key the file
        key it came from (for error messages).

    Raises:
        ValueError: not a DINOv3 layout, or a timm / transformers file with tensors that have no
            exact place in the architecture (other variants of those models).
    """
    layout = layout or dinov3_layout(state)
    if layout == "official":
        kept = {k: v for k, v in state.items() if not k.startswith(_IGNORED_OFFICIAL)}
        return kept, {k: k for k in kept}
    if layout == "timm":
        return _from_timm(state, where)
    if layout == "transformers":
        return _from_transformers(state, where)
    raise ValueError(
        f"{where!r} is not a DINOv3 backbone: no storage_tokens / rope_embed.periods (official), "
        "reg_token + gamma_1 (timm) or embeddings.patch_embeddings (transformers)"
    )


def dinov3_options(
    state: Mapping[str, torch.Tensor],
    num_heads: int | None = None,
    where: str = "<state dict>",
    layout: str = "official",
) -> dict[str, Any]:
    """:class:`DINOv3ViT` keyword arguments read from official-layout tensors.

    Read: width ``D`` and patch size from ``patch_embed.proj.weight`` [D, 3, p, p]; depth from
    the block indices; the head width from ``rope_embed.periods`` [d / 4] (``num_heads = D / d``;
    files without periods, timm's and transformers', have d = 64 like every release);
    ``n_storage_tokens`` from ``storage_tokens`` [1, R, D]; the feed-forward layer and its width
    from ``mlp.w1`` (SwiGLU) or ``mlp.fc1`` (GELU); the qkv bias, its mask, LayerScale and an
    untied ``cls_norm`` from their presence.

    Args:
        state: official-layout tensors (:func:`dinov3_state_from_layout`).
        num_heads: attention heads, if known; must agree with the periods when they exist.
        where: the file's name, for messages.
        layout: the file's layout, for messages.

    Raises:
        ValueError: ViT-7B (width 4096: dinolab builds S, S+, B, L, L+ and H+ only); no patch
            embedding, block or feed-forward tensors; an official file without a qkv bias;
            ``num_heads`` contradicting the periods; a head width that is no multiple of 4.
    """
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise ValueError(
            f"{where!r} ({layout} DINOv3 layout) has no square patch embedding "
            "patch_embed.proj.weight [D, 3, p, p]; expected one in every DINOv3 ViT"
        )
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    if dim == _7B_WIDTH:
        raise ValueError(
            f"{where!r} is DINOv3 ViT-7B (width {dim}): dinolab builds the DINOv3 ViTs "
            f"{', '.join(DINOV3_SIZES)} only (7B has no qkv bias, a SwiGLU aligned to 64 and "
            "6.7 B parameters, ~27 GB in float32: far beyond a CPU); distil from ViT-L or H+"
        )
    blocks = _blocks(state)
    if not blocks:
        raise ValueError(f"{where!r} ({layout} DINOv3 layout) has no blocks.<i>.* tensors")
    depth = blocks[-1] + 1
    absent = sorted(set(range(depth)) - set(blocks))
    if absent:
        raise ValueError(
            f"{where!r} ({layout} DINOv3 layout) has no tensors for blocks {absent[:5]} of "
            f"{depth}; expected blocks 0..{depth - 1}, each complete"
        )
    periods = state.get("rope_embed.periods")
    if periods is not None:
        head_dim = 4 * int(periods.numel())
        if head_dim == 0 or dim % head_dim:
            raise ValueError(
                f"{where!r}: rope_embed.periods has {periods.numel()} values, so heads of width "
                f"{head_dim}, which does not divide the width {dim}"
            )
        heads = dim // head_dim
        if num_heads is not None and num_heads != heads:
            raise ValueError(
                f"num_heads={num_heads} contradicts {where!r}, whose {periods.numel()} RoPE "
                f"periods mean heads of width {head_dim}: {heads} heads"
            )
    else:
        if num_heads is None:
            if dim % 64:
                raise ValueError(
                    f"{where!r} ({layout} DINOv3 layout) stores no RoPE periods and its width "
                    f"{dim} is no multiple of 64, the head width of every release: pass "
                    "num_heads="
                )
            num_heads = dim // 64
        heads = num_heads
        if dim % heads or (dim // heads) % 4:
            raise ValueError(
                f"num_heads={heads} does not split the width {dim} into heads whose width is "
                "a multiple of 4"
            )
    b0 = "blocks.0."
    if (w1 := state.get(b0 + "mlp.w1.weight")) is not None:
        ffn, hidden = "swiglu", int(w1.shape[0])
    elif (fc1 := state.get(b0 + "mlp.fc1.weight")) is not None:
        ffn, hidden = "mlp", int(fc1.shape[0])
    else:
        raise ValueError(
            f"{where!r} ({layout} DINOv3 layout) has no feed-forward weights in block 0: "
            "expected blocks.0.mlp.fc1.weight (GELU MLP: S, B, L) or blocks.0.mlp.w1.weight "
            "(SwiGLU: S+, L+, H+)"
        )
    if b0 + "attn.qkv.bias" not in state:
        raise ValueError(
            f"{where!r} ({layout} DINOv3 layout) has no blocks.0.attn.qkv.bias: every DINOv3 "
            "release but ViT-7B (which dinolab does not build) has one; the tensor is missing"
        )
    storage = state.get("storage_tokens")
    return {
        "patch_size": patch,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "ffn_layer": ffn,
        "mlp_hidden_dim": hidden,
        "qkv_bias": True,
        "mask_k_bias": b0 + "attn.qkv.bias_mask" in state,
        "layerscale_init": 1e-5 if b0 + "ls1.gamma" in state else None,
        "n_storage_tokens": int(storage.shape[1]) if storage is not None else 0,
        "untie_cls_and_patch_norms": "cls_norm.weight" in state,
    }


def dinov3_size_name(opts: Mapping[str, Any]) -> str | None:
    """The release name (``dinov3_vitl16``...) whose architecture ``opts`` describes, or None."""
    for name, (dim, depth, heads, ratio, ffn) in DINOV3_SIZES.items():
        hidden = int(dim * ratio) if ffn == "mlp" else swiglu_hidden_dim(dim, ratio)
        if (opts.get("embed_dim"), opts.get("depth"), opts.get("num_heads"),
                opts.get("ffn_layer"), opts.get("mlp_hidden_dim")) == (
                dim, depth, heads, ffn, hidden):
            return name
    return None
