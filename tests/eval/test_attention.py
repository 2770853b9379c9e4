"""dinolab.eval.attention: the DINO attention metric on hand-computed maps, and PCA colours."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from dinolab.eval import (
    AttentionJaccard,
    attention_jaccard,
    centre_prior,
    centre_prior_jaccard,
    cls_attention,
    cls_to_patch_attention,
    jaccard,
    map_jaccard,
    map_object_mass,
    patch_features,
    pca_colors,
    threshold_attention,
    upsample_patches,
)
from dinolab.models import VisionTransformer, vit_course

# A 4x4 attention map (sums to 1, no two values equal). Sorted: .20 .15 .12 .10 | .09 ...; the
# cumulative share is .57 after four patches and .66 after five, so mass 0.6 keeps these five:
# (1,1) (1,2) (2,1) (2,2) (3,2).
HAND_MAP = torch.tensor(
    [
        [0.01, 0.02, 0.03, 0.04],
        [0.02, 0.20, 0.15, 0.03],
        [0.02, 0.12, 0.10, 0.04],
        [0.01, 0.05, 0.09, 0.07],
    ]
)
HAND_KEPT = torch.zeros(4, 4, dtype=torch.bool)
HAND_KEPT[1:3, 1:3] = True
HAND_KEPT[3, 2] = True


def hand_mask() -> torch.Tensor:
    """8x8 pixels (patch 2): rows 2..5, columns 3..6, a 4x4 block one pixel right of the
    attention's 2x2 central patches."""
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 3:7] = True
    return mask


def official_threshold(attn: torch.Tensor, mass: float) -> torch.Tensor:
    """facebookresearch/dino visualize_attention.py, written out: [heads, N] -> bool [heads, N]."""
    val, idx = torch.sort(attn)
    val = val / torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - mass)
    idx2 = torch.argsort(idx)
    for head in range(attn.shape[0]):
        th_attn[head] = th_attn[head][idx2[head]]
    return th_attn


def test_threshold_keeps_the_top_patches_holding_the_mass() -> None:
    assert torch.equal(threshold_attention(HAND_MAP, mass=0.6), HAND_KEPT)
    # Scale does not matter (each map is divided by its sum), nor leading dimensions.
    batch = torch.stack([HAND_MAP * 7, HAND_MAP.T]).reshape(1, 2, 4, 4)
    kept = threshold_attention(batch, mass=0.6)
    assert kept.shape == (1, 2, 4, 4) and kept.dtype == torch.bool
    assert torch.equal(kept[0, 0], HAND_KEPT) and torch.equal(kept[0, 1], HAND_KEPT.T)
    # mass 1 keeps every patch with some attention; a small mass only the top patch.
    assert threshold_attention(HAND_MAP, mass=1.0).all()
    top = threshold_attention(HAND_MAP, mass=0.1)
    assert top.sum() == 1 and top[1, 1]


def test_threshold_agrees_with_the_official_code_without_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 49, generator=gen, dtype=torch.float64) ** 3
    for mass in (0.3, 0.6, 0.9):
        ours = threshold_attention(maps.reshape(6, 7, 7), mass).reshape(6, 49)
        assert torch.equal(ours, official_threshold(maps, mass)), mass


def test_threshold_ties_and_exact_masses() -> None:
    # 4 + 3 = 7 of 10 reaches 0.6 at the first 3; the other 3 is tied with it and kept too,
    # whatever the order of the patches (the kept share is then 1.0, above 0.6).
    tied = torch.tensor([[4.0, 3.0], [3.0, 0.0]])
    assert threshold_attention(tied, 0.6).tolist() == [[True, True], [True, False]]
    assert threshold_attention(tied.flip(-1), 0.6).tolist() == [[True, True], [False, True]]
    # A uniform map is one big tie: every patch is kept at any mass.
    assert threshold_attention(torch.full((3, 3), 0.1), 0.2).all()
    # A share equal to the mass on paper reaches it despite rounding: 0.4 + 0.3 + 0.2 = 0.9.
    exact = torch.tensor([[0.3, 0.2], [0.1, 0.4]])
    assert threshold_attention(exact, 0.9).tolist() == [[True, True], [False, True]]
    # A patch with no attention is never needed, even at mass 1.
    assert threshold_attention(tied, 1.0).tolist() == [[True, True], [True, False]]


def test_upsample_patches_is_nearest_by_the_patch_size() -> None:
    up = upsample_patches(HAND_KEPT, 2)
    assert up.shape == (8, 8) and up.dtype == torch.bool
    assert torch.equal(up[::2, ::2], HAND_KEPT) and torch.equal(up[1::2, 1::2], HAND_KEPT)
    assert up.sum() == 4 * HAND_KEPT.sum()
    floats = upsample_patches(torch.arange(4.0).reshape(1, 2, 2), 3)
    assert floats.shape == (1, 6, 6) and floats[0, 5, 0] == 2 and floats[0, 0, 5] == 1


def test_jaccard_equals_the_hand_computation() -> None:
    # Kept pixels: the 2x2 central patches (rows 2..5, cols 2..5: 16 px) and patch (3, 2)
    # (rows 6..7, cols 4..5: 4 px), 20 px. Mask: rows 2..5, cols 3..6, 16 px. Intersection:
    # rows 2..5, cols 3..5, 12 px. Union 20 + 16 - 12 = 24. Jaccard 12 / 24 = 0.5.
    pred = upsample_patches(threshold_attention(HAND_MAP, 0.6), 2)
    assert pred.sum() == 20
    value = jaccard(pred, hand_mask())
    assert value.shape == () and value.dtype == torch.float64 and float(value) == 0.5
    assert float(map_jaccard(HAND_MAP[None], hand_mask()[None], 2, 0.6)[0]) == 0.5


def test_object_mass_equals_the_hand_computation() -> None:
    # hand_mask covers patch rows 1 and 2; of patch columns 0..3 it covers 0, half (pixel
    # column 3 of 2..3), all, half (pixel column 6 of 6..7). On the object: row 1
    # .20/2 + .15 + .03/2 = .265, row 2 .12/2 + .10 + .04/2 = .18; the map sums to 1: 0.445.
    value = map_object_mass(HAND_MAP[None], hand_mask()[None], 2)
    assert value.shape == (1,) and value.dtype == torch.float64
    assert abs(float(value[0]) - 0.445) < 1e-6  # HAND_MAP is float32
    # Scale-free, per head for [B, K, h, w], and a uniform map scores the object's area share.
    maps = torch.stack([HAND_MAP * 7.0, torch.ones(4, 4)])[None]  # [1, 2, 4, 4]
    both = map_object_mass(maps, hand_mask()[None], 2)
    assert both.shape == (1, 2)
    torch.testing.assert_close(both, torch.tensor([[0.445, 16 / 64]], dtype=torch.float64),
                               rtol=0, atol=1e-6)


def test_object_mass_does_not_punish_a_map_sharper_than_the_object() -> None:
    # All attention on one of the object's four patches: every bit of it lies on the object
    # (mass 1), while the 60%-mass set is that one patch, a quarter of the object (Jaccard .25).
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:6, 2:6] = True
    sharp = torch.full((1, 4, 4), 1e-9, dtype=torch.float64)
    sharp[0, 1, 1] = 1.0
    assert float(map_object_mass(sharp, mask, 2)[0]) > 0.99999
    assert abs(float(map_jaccard(sharp, mask, 2)[0]) - 0.25) < 1e-12
    with pytest.raises(ValueError, match=r"masks have shape \(1, 6, 6\)"):
        map_object_mass(sharp, torch.zeros(1, 6, 6, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="masks must be bool"):
        map_object_mass(sharp, torch.zeros(1, 8, 8), 2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        map_object_mass(-sharp, mask, 2)
    with pytest.raises(ValueError, match="sums to 0"):
        map_object_mass(torch.zeros(1, 4, 4), mask, 2)
    with pytest.raises(ValueError, match=r"maps must be \[B, h, w\]"):
        map_object_mass(sharp[0], mask, 2)


def test_jaccard_edge_cases_and_batches() -> None:
    empty = torch.zeros(2, 3, 3, dtype=torch.bool)
    full = torch.ones(2, 3, 3, dtype=torch.bool)
    assert jaccard(empty, empty).tolist() == [1.0, 1.0]  # 0 / 0: defined as a perfect match
    assert jaccard(empty, full).tolist() == [0.0, 0.0]
    assert jaccard(full, full).tolist() == [1.0, 1.0]
    a = torch.tensor([[True, True, False]])
    b = torch.tensor([[False, True, True]])
    assert float(jaccard(a, b)) == pytest.approx(1 / 3)
    np_masks = np.zeros((2, 3, 3), dtype=bool)
    assert jaccard(torch.from_numpy(np_masks), np_masks).tolist() == [1.0, 1.0]


class FakeViT(nn.Module):
    """Returns given CLS-to-patch maps as its last-block attention: [B, heads, 1+N, 1+N]."""

    def __init__(self, maps: torch.Tensor, patch_size: int = 2) -> None:
        super().__init__()
        self.maps, self.patch_size = maps, patch_size
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        b, heads, h, w = x.shape[0], self.maps.shape[1], self.maps.shape[2], self.maps.shape[3]
        attn = torch.zeros(b, heads, 1 + h * w, 1 + h * w)
        attn[:, :, 0, 1:] = self.maps[:b].reshape(b, heads, h * w)
        return attn


def test_attention_jaccard_per_head_and_head_averaged_by_hand() -> None:
    # Head 0: the hand map, Jaccard 0.5 with the hand mask. Head 1: 0.9 on patch (1, 2), the
    # rest spread evenly: keeps patch (1, 2) alone, rows 2..3 x cols 4..5, all inside the
    # mask: 4 / 16 = 0.25. Their average: (1, 2) holds (0.15 + 0.9) / 2 = 0.525, then (1, 1)
    # (0.20 + 0.1/15) / 2 = 0.103 reaches 0.6: rows 2..3 x cols 2..5, 8 px, 6 of them in the
    # mask: 6 / (8 + 16 - 6) = 1/3. The second image's mask is empty: 0 everywhere.
    head1 = torch.full((4, 4), 0.1 / 15)
    head1[1, 2] = 0.9
    maps = torch.stack([HAND_MAP, head1])[None].expand(2, -1, -1, -1)
    masks = torch.stack([hand_mask(), torch.zeros(8, 8, dtype=torch.bool)])
    result = attention_jaccard(FakeViT(maps), torch.zeros(2, 3, 8, 8), masks)
    assert isinstance(result, AttentionJaccard)
    torch.testing.assert_close(
        result.per_image_head, torch.tensor([[0.5, 0.25], [0.0, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        result.per_image_mean_map, torch.tensor([1 / 3, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(result.per_head, torch.tensor([0.25, 0.125], dtype=torch.float64))
    assert result.mean_map == pytest.approx(1 / 6) and result.best_head == 0
    summary = result.as_dict()
    assert summary["per_head"] == pytest.approx([0.25, 0.125]) and summary["images"] == 2
    # One image at a time gives the same numbers.
    again = attention_jaccard(FakeViT(maps), torch.zeros(2, 3, 8, 8), masks.numpy(), batch_size=1)
    torch.testing.assert_close(again.per_image_head, result.per_image_head)


def test_cls_attention_of_a_vit_with_and_without_registers() -> None:
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    vit = vit_course().train()
    maps = cls_attention(vit, images)
    with torch.no_grad():
        full = vit.eval().get_last_selfattention(images)
    assert maps.shape == (3, 4, 4, 4)
    torch.testing.assert_close(maps, full[:, :, 0, 1:].reshape(3, 4, 4, 4))
    reg = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_register_tokens=3).train()
    maps = cls_attention(reg, images, batch_size=2)
    assert reg.training and all(m.training for m in reg.modules())  # modes restored
    with torch.no_grad():
        full = reg.eval().get_last_selfattention(images)
    assert full.shape[-1] == 1 + 3 + 16
    torch.testing.assert_close(maps, full[:, :, 0, 4:].reshape(3, 2, 4, 4))
    assert (maps.sum((-2, -1)) < 1).all()  # CLS and registers take the rest of each row
    # And the metric runs end to end on a real ViT.
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    result = attention_jaccard(reg, images, masks)
    assert result.per_head.shape == (2,) and 0 <= result.mean_map <= 1


def test_centre_prior_shape_symmetry_and_threshold() -> None:
    prior = centre_prior(4, 4, sigma=0.25)
    assert prior.shape == (4, 4)
    for flipped in (prior.flip(0), prior.flip(1), prior.T):
        assert torch.equal(prior, flipped)
    # Offsets of 0.5 and 1.5 patches, sigma = 1 patch: exp(-0.25), exp(-1.25), exp(-2.25).
    torch.testing.assert_close(prior[1, 1], torch.tensor(np.exp(-0.25), dtype=torch.float64))
    torch.testing.assert_close(prior[0, 1], torch.tensor(np.exp(-1.25), dtype=torch.float64))
    torch.testing.assert_close(prior[0, 0], torch.tensor(np.exp(-2.25), dtype=torch.float64))
    # The central four hold 4 * 0.779 / 5.83 = 0.53 < 0.6: the eight tied edge patches join.
    kept = threshold_attention(prior, 0.6)
    assert kept.sum() == 12 and not kept[0, 0] and not kept[3, 3] and kept[0, 1]
    # The default: the central 2x2 of a 4x4 grid, symmetric on rectangular grids too.
    assert threshold_attention(centre_prior(4, 4), 0.6)[1:3, 1:3].all()
    assert threshold_attention(centre_prior(4, 4), 0.6).sum() == 4
    rect = centre_prior(5, 8)
    assert rect.shape == (5, 8)
    assert torch.equal(rect, rect.flip(0)) and torch.equal(rect, rect.flip(1))
    assert rect.argmax() == 2 * 8 + 3  # one of the central maxima


def test_centre_prior_jaccard_on_centred_and_corner_objects() -> None:
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 8:24, 8:24] = True  # exactly the central 2x2 patches of 8 px
    masks[1, :8, :8] = True  # a corner
    values = centre_prior_jaccard(masks, patch_size=8)
    assert values.shape == (2,) and values.tolist() == [1.0, 0.0]
    from dinolab.data.shapes import Shapes

    shapes = centre_prior_jaccard(Shapes(n=60, img_size=32).masks, patch_size=8)
    assert 0.2 < float(shapes.mean()) < 0.7


def _synthetic_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features [3, 6, 6, 16]: a block of foreground patches per image far from the
    background cluster, with their own variation along three other directions."""
    gen = torch.Generator().manual_seed(seed)
    n, h, w, d = 3, 6, 6, 16
    fg = torch.zeros(n, h, w, dtype=torch.bool)
    fg[0, 1:3, 1:4] = True
    fg[1, 3:6, 2:4] = True
    fg[2, 0:2, 4:6] = True
    feats = 0.05 * torch.randn(n, h, w, d, generator=gen)
    feats[..., 0] += 4.0 * fg  # the foreground direction
    m = int(fg.sum())
    feats[fg, 1:4] += torch.randn(m, 3, generator=gen) * torch.tensor([2.0, 1.0, 0.5])
    return feats, fg


def test_pca_colors_shapes_range_and_foreground() -> None:
    feats, fg = _synthetic_features()
    colors, foreground = pca_colors(feats)
    assert colors.shape == (3, 6, 6, 3) and colors.dtype == torch.float32
    assert foreground.shape == (3, 6, 6) and foreground.dtype == torch.bool
    assert torch.equal(foreground, fg)  # the smaller side of the first component
    assert colors.min() >= 0 and colors.max() <= 1
    assert (colors[~foreground] == 0).all()  # background black
    fg_colors = colors[foreground]
    # Min-max per component over the foreground: each channel spans [0, 1] exactly.
    torch.testing.assert_close(fg_colors.min(0).values, torch.zeros(3))
    torch.testing.assert_close(fg_colors.max(0).values, torch.ones(3))
    # The first colour follows the foreground's largest variation (feature 1).
    corr = np.corrcoef(fg_colors[:, 0].numpy(), feats[fg][:, 1].numpy())[0, 1]
    assert abs(corr) > 0.95
    one, _ = pca_colors(feats, n_components=1)
    assert one.shape == (3, 6, 6, 1)


def test_pca_colors_are_deterministic_and_sign_fixed() -> None:
    feats, _ = _synthetic_features()
    first = pca_colors(feats)
    for _ in range(2):
        again = pca_colors(feats.clone())
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    # The foreground is the smaller side whatever the sign of the features.
    assert torch.equal(pca_colors(-feats)[1], first[1])
    # A larger background share or an offset changes nothing of the split.
    assert torch.equal(pca_colors(feats + 3.0)[1], first[1])


def test_patch_features_are_the_normed_patch_tokens_on_the_grid() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_register_tokens=2)
    images = torch.randn(3, 3, 32, 40)
    feats = patch_features(vit, images, batch_size=2)
    assert feats.shape == (3, 4, 5, 32)
    with torch.no_grad():
        tokens = vit.forward_features(images)["x_norm_patchtokens"]
    torch.testing.assert_close(feats, tokens.reshape(3, 4, 5, 32))
    colors, fg = pca_colors(feats)
    assert colors.shape == (3, 4, 5, 3) and fg.shape == (3, 4, 5)


# --- Bad input: each a ValueError naming the value and what was expected -----------------


def test_masks_of_the_wrong_shape_or_type_are_refused() -> None:
    vit = vit_course()
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"masks have shape \(2, 16, 16\), expected \[B, H, W\]"):
        attention_jaccard(vit, images, torch.zeros(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks have shape \(3, 32, 32\)"):
        attention_jaccard(vit, images, torch.zeros(3, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks must be bool .* dtype torch.uint8"):
        attention_jaccard(vit, images, torch.zeros(2, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="masks must be bool .* dtype float64"):
        attention_jaccard(vit, images, np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="masks have shape"):
        map_jaccard(HAND_MAP[None], torch.zeros(1, 6, 6, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="must be bool"):
        centre_prior_jaccard(torch.zeros(1, 8, 8), 2)
    with pytest.raises(ValueError, match=r"pred \(8, 8\) and target \(4, 4\)"):
        jaccard(torch.zeros(8, 8, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="pred must be bool"):
        jaccard(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool))


def test_attention_whose_tokens_do_not_match_the_patch_grid_is_refused() -> None:
    with pytest.raises(ValueError, match=r"T=17 tokens, but a 3x3 patch grid needs .* = 10"):
        cls_to_patch_attention(torch.rand(1, 2, 17, 17), (3, 3))
    with pytest.raises(ValueError, match=r"1 \(CLS\) \+ 2 \(registers\) \+ 16 \(patches\) = 19"):
        cls_to_patch_attention(torch.rand(1, 2, 17, 17), (4, 4), num_register_tokens=2)
    with pytest.raises(ValueError, match=r"must be \[B, heads, T, T\]"):
        cls_to_patch_attention(torch.rand(2, 17, 17), (4, 4))
    # A patch size that is not the model's: an 8x8 grid of 4-px patches needs 65 tokens.
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"T=17 tokens, but a 8x8 patch grid needs"):
        attention_jaccard(vit_course(), torch.randn(2, 3, 32, 32), masks, patch_size=4)
    with pytest.raises(ValueError, match="do not split into patches of 8 px"):
        cls_attention(vit_course(), torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("mass", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.6"])
def test_mass_outside_zero_one_is_refused(mass) -> None:
    pattern = re.escape(f"mass={mass!r}") + r" must be a number in \(0, 1\]"
    with pytest.raises(ValueError, match=pattern):
        threshold_attention(HAND_MAP, mass)
    with pytest.raises(ValueError, match=r"mass=.* must be a number in \(0, 1\]"):
        attention_jaccard(vit_course(), torch.randn(1, 3, 32, 32),
                          torch.zeros(1, 32, 32, dtype=torch.bool), mass=mass)
    with pytest.raises(ValueError, match=r"mass=.* must be a number in \(0, 1\]"):
        centre_prior_jaccard(torch.zeros(1, 8, 8, dtype=torch.bool), 2, mass=mass)


def test_other_bad_arguments() -> None:
    with pytest.raises(ValueError, match="a map sums to 0"):
        threshold_attention(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="finite and >= 0"):
        threshold_attention(torch.tensor([[1.0, -0.5], [0.2, 0.1]]))
    with pytest.raises(ValueError, match=r"maps \[\.\.\., h, w\], got shape \(4,\)"):
        threshold_attention(torch.rand(4))
    with pytest.raises(ValueError, match="patch_size=0 must be an int >= 1"):
        upsample_patches(HAND_KEPT, 0)
    with pytest.raises(ValueError, match="sigma=0 must be a number > 0"):
        centre_prior(4, 4, sigma=0)
    with pytest.raises(ValueError, match="h=0 must be an int >= 1"):
        centre_prior(0, 4)
    with pytest.raises(ValueError, match="n_components=4 must be an int in \\[1, D=3\\]"):
        pca_colors(torch.randn(1, 2, 2, 3), n_components=4)
    with pytest.raises(ValueError, match=r"must be \[N, h, w, D\], got shape \(4, 4, 3\)"):
        pca_colors(torch.randn(4, 4, 3))
    with pytest.raises(ValueError, match="all 8 patches have the same features"):
        pca_colors(torch.ones(2, 2, 2, 5))
    with pytest.raises(ValueError, match="no integer patch_size"):
        attention_jaccard(nn.Linear(2, 2), torch.randn(1, 3, 8, 8),
                          torch.zeros(1, 8, 8, dtype=torch.bool))
