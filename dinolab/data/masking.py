"""Block-wise patch masking for iBOT / DINOv2 masked image modelling.

The student sees some of its global crops with rectangles of patches replaced by a learned
mask token; the teacher sees them whole, and the iBOT loss asks the student to predict the
teacher's patch tokens at the hidden positions.

* :class:`MaskingGenerator` draws one ``[H, W]`` mask made of rectangles, as DINOv2's
  ``dinov2/data/masking.py`` (itself from BEiT): each rectangle has an area of at least
  ``min_num_patches`` (or what is left to mask, if less) and at most ``max_num_patches``
  patches and a log-uniform aspect ratio in ``[min_aspect, max_aspect]``; rectangles are added
  until the requested count is reached or ten tries in a row add nothing.
* :func:`sample_ibot_masks` draws the masks of one batch of crops as DINOv2's
  ``collate_data_and_cast``: ``int(n_crops * mask_probability)`` crops are masked, crop ``i``
  of them with ``int(N * U(r_i, r_{i+1}))`` patches where
  ``r = linspace(mask_ratio_min, mask_ratio_max, n + 1)``; the others get no mask; the list is
  shuffled.

Randomness comes from a ``torch.Generator``, a ``numpy.random.Generator`` or an int seed passed
as ``generator``; ``None`` uses torch's global generator (so ``torch.manual_seed`` applies).

Examples:
    >>> import torch
    >>> gen = MaskingGenerator(14)
    >>> mask = gen(60, generator=torch.Generator().manual_seed(0))
    >>> mask.shape, mask.dtype, int(mask.sum()) <= 60
    (torch.Size([14, 14]), torch.bool, True)
    >>> masks = sample_ibot_masks(8, 14, generator=0)
    >>> masks.shape, int((masks.sum(1) > 0).sum()) <= 4
    (torch.Size([8, 196]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["GeneratorLike", "MaskingGenerator", "sample_ibot_masks"]

GeneratorLike = torch.Generator | np.random.Generator | int | None

Block = tuple[int, int, int, int]  # (top, left, height, width) in patches


class _Random:
    """Uniform floats, integers and permutations from a torch or NumPy generator."""

    def __init__(self, generator: GeneratorLike) -> None:
        if isinstance(generator, bool):
            raise ValueError(f"generator={generator!r}: expected a Generator, an int seed or None")
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        if generator is not None and not isinstance(
            generator, (torch.Generator, np.random.Generator)
        ):
            raise ValueError(
                f"generator has type {type(generator).__name__}; expected torch.Generator, "
                "numpy.random.Generator, an int seed or None"
            )
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        """One float in ``[low, high)``, drawn as ``low + (high - low) * u``."""
        g = self.generator
        if isinstance(g, np.random.Generator):
            u = float(g.random())
        else:
            u = float(torch.rand((), generator=g, dtype=torch.float64))
        return low + (high - low) * u

    def randint(self, low: int, high: int) -> int:
        """One integer in ``[low, high]``, both ends included."""
        g = self.generator
        if isinstance(g, np.random.Generator):
            return int(g.integers(low, high + 1))
        return int(torch.randint(low, high + 1, (1,), generator=g))

    def permutation(self, n: int) -> list[int]:
        g = self.generator
        if isinstance(g, np.random.Generator):
            return [int(i) for i in g.permutation(n)]
        return torch.randperm(n, generator=g).tolist()


def _grid_size(input_size: int | Sequence[int], who: str) -> tuple[int, int]:
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(f"{who}: input_size={input_size!r} must be a positive int or (H, W)")
    return int(size[0]), int(size[1])


class MaskingGenerator:
    """Block-wise mask generator of DINOv2 / BEiT.

    Args:
        input_size: patch grid, ``H`` (square) or ``(H, W)`` patches.
        num_masking_patches: default number of patches to mask when called without a count
            (``None``: 0).
        min_num_patches: smallest rectangle, in patches. DINOv2: 4.
        max_num_patches: largest rectangle, in patches. ``None`` gives ``0.5 * H * W``, the
            value DINOv2's training script passes. (DINOv2's class itself falls back to
            ``num_masking_patches``.)
        min_aspect: smallest height/width ratio of a rectangle. DINOv2: 0.3.
        max_aspect: largest ratio; ``None`` gives ``1 / min_aspect``.

    Calling ``gen(count, generator=None)`` returns a bool tensor ``[H, W]`` with at most
    ``count`` True entries. With ``remaining = count - (patches masked so far)``, one block
    step makes at most ten tries of:

    1. draw a target area ``U(low, max(min_num_patches, min(remaining, max_num_patches)))``
       with ``low = min(min_num_patches, remaining)``, and an aspect ratio
       ``exp(U(log min_aspect, log max_aspect))``; ``h = round(sqrt(area * aspect))``,
       ``w = round(sqrt(area / aspect))``;
    2. reject the try unless ``low <= h * w <= max_num_patches`` and
       ``min_aspect <= h / w <= max_aspect`` and the rectangle fits in the grid;
    3. place it at a position drawn uniformly among those where it adds at least one and at
       most ``remaining`` new patches (reject the try if there is none).

    Blocks are added until ``count`` patches are masked or a block step adds nothing, so the
    count is never exceeded; it is reached almost always (it can fall short when the free
    patches are too scattered for any allowed rectangle).

    So every rectangle has between ``min_num_patches`` and ``max_num_patches`` patches, except
    that the last ones may be smaller when fewer than ``min_num_patches`` patches remain to be
    masked (DINOv2 does the same: its area draw ``uniform(min_num_patches, remaining)`` then
    falls below the minimum). Deliberate differences from DINOv2:

    * DINOv2 does not re-check the rounded rectangle, so e.g. a 1x3 block can appear while 10
      patches remain; here the bounds hold exactly, aspect ratio included;
    * DINOv2 draws any position and gives up the try when the rectangle adds too many
      patches; here the position is drawn among the valid ones (given that a try succeeds,
      both are uniform over the valid positions), which reaches the count more often;
    * a rectangle may span the whole height or width (DINOv2 requires it to be smaller).

    Examples:
        >>> gen = MaskingGenerator((8, 8), min_num_patches=4, max_num_patches=16)
        >>> mask, blocks = gen.generate(20, generator=0)
        >>> int(mask.sum()) <= 20, all(h * w <= 16 for _, _, h, w in blocks)
        (True, True)
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.height, self.width = _grid_size(input_size, "MaskingGenerator")
        self.num_patches = self.height * self.width
        if num_masking_patches is not None:
            self._check_count(num_masking_patches)
        self.num_masking_patches = num_masking_patches
        if not isinstance(min_num_patches, int) or min_num_patches < 1:
            raise ValueError(
                f"MaskingGenerator: min_num_patches={min_num_patches!r} must be an int >= 1"
            )
        if max_num_patches is None:
            max_num_patches = 0.5 * self.num_patches
        if max_num_patches < min_num_patches:
            raise ValueError(
                f"MaskingGenerator: max_num_patches={max_num_patches!r} is smaller than "
                f"min_num_patches={min_num_patches}; no rectangle could be drawn"
            )
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        if max_aspect is None:
            if min_aspect <= 0:
                raise ValueError(f"MaskingGenerator: min_aspect={min_aspect!r} must be > 0")
            max_aspect = 1.0 / min_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(
                f"MaskingGenerator: aspect range ({min_aspect!r}, {max_aspect!r}) must satisfy "
                "0 < min_aspect <= max_aspect"
            )
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)
        self.log_aspect_ratio = (math.log(self.min_aspect), math.log(self.max_aspect))

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator(({self.height}, {self.width}), blocks of "
            f"{self.min_num_patches}..{self.max_num_patches} patches, aspect "
            f"{self.min_aspect:.3g}..{self.max_aspect:.3g})"
        )

    def get_shape(self) -> tuple[int, int]:
        """``(H, W)``, the patch grid."""
        return self.height, self.width

    def _check_count(self, count: int) -> int:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not (
            0 <= count <= self.num_patches
        ):
            raise ValueError(
                f"MaskingGenerator: num_masking_patches={count!r} must be an int in "
                f"[0, {self.num_patches}] (grid {self.height}x{self.width})"
            )
        return int(count)

    def _add_block(self, mask: np.ndarray, remaining: int, rng: _Random) -> Block | None:
        """Try (at most ten times) to add one rectangle adding 1..remaining new patches."""
        # Fewer patches left than a minimal block: allow blocks down to what is left (DINOv2
        # reaches the same through uniform(min_num_patches, remaining) with remaining < min).
        low = min(self.min_num_patches, remaining)
        high = max(self.min_num_patches, min(remaining, self.max_num_patches))
        for _ in range(10):
            target_area = rng.uniform(low, high)
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if not (1 <= h <= self.height and 1 <= w <= self.width):
                continue
            if not low <= h * w <= self.max_num_patches:
                continue
            # The tolerance absorbs float error when h / w sits exactly on a bound.
            if not self.min_aspect - 1e-9 <= h / w <= self.max_aspect + 1e-9:
                continue
            # Number of patches already masked under every h x w window, from an integral image.
            integral = np.zeros((self.height + 1, self.width + 1), dtype=np.int64)
            integral[1:, 1:] = mask.cumsum(0).cumsum(1)
            covered = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
            new = h * w - covered
            valid = np.flatnonzero((new > 0) & (new <= remaining))
            if valid.size == 0:
                continue
            top, left = divmod(int(valid[rng.randint(0, valid.size - 1)]), self.width - w + 1)
            mask[top : top + h, left : left + w] = True
            return top, left, h, w
        return None

    def generate(
        self, num_masking_patches: int | None = None, generator: GeneratorLike = None
    ) -> tuple[Tensor, list[Block]]:
        """Draw a mask and return it with the rectangles it is made of.

        Args:
            num_masking_patches: how many patches to mask, in ``[0, H * W]``; ``None`` uses the
                constructor's value (or 0).
            generator: torch / NumPy generator or int seed; ``None`` uses torch's global one.

        Returns:
            ``(mask, blocks)``: bool tensor ``[H, W]`` and the list of accepted rectangles
            ``(top, left, height, width)`` in patches, in the order they were drawn.
        """
        if num_masking_patches is None:
            num_masking_patches = self.num_masking_patches or 0
        target = self._check_count(num_masking_patches)
        rng = _Random(generator)
        mask = np.zeros((self.height, self.width), dtype=bool)
        blocks: list[Block] = []
        count = 0
        while count < target:
            before = count
            block = self._add_block(mask, target - count, rng)
            if block is None:
                break
            blocks.append(block)
            count = int(mask.sum())
            assert before < count <= target
        return torch.from_numpy(mask), blocks

    def __call__(
        self, num_masking_patches: int | None = None, generator: GeneratorLike = None
    ) -> Tensor:
        """Return a bool mask ``[H, W]`` with at most ``num_masking_patches`` True entries."""
        return self.generate(num_masking_patches, generator)[0]


def _mask_targets(
    n_crops: int,
    num_patches: int,
    mask_ratio: tuple[float, float],
    mask_probability: float,
    rng: _Random,
) -> list[int]:
    n_masked = int(n_crops * mask_probability)
    lo, hi = mask_ratio
    # Same breakpoints as torch.linspace(lo, hi, n_masked + 1), in float64.
    r = [lo + (hi - lo) * i / n_masked for i in range(n_masked + 1)] if n_masked else [lo]
    targets = [int(num_patches * rng.uniform(r[i], r[i + 1])) for i in range(n_masked)]
    return targets + [0] * (n_crops - n_masked)


def sample_ibot_masks(
    n_crops: int,
    grid: int | Sequence[int],
    mask_ratio: Sequence[float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    generator: GeneratorLike = None,
    mask_generator: MaskingGenerator | None = None,
    return_targets: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Masks for a batch of global crops, as DINOv2's collate function draws them.

    Random draws, in this order (so a test can replay them): one uniform per masked crop for
    its ratio, then the shuffle permutation, then the block masks.

    Args:
        n_crops: number of crops in the batch (DINOv2: ``2 * B`` global crops).
        grid: patch grid ``H`` or ``(H, W)`` of a crop (``img_size // patch_size``).
        mask_ratio: ``(min, max)`` fraction of patches masked, spread over the masked crops.
            DINOv2: ``(0.1, 0.5)``.
        mask_probability: fraction of crops that get a mask. DINOv2: 0.5.
        generator: torch / NumPy generator or int seed; ``None`` uses torch's global one.
        mask_generator: block generator to use; ``None`` builds
            ``MaskingGenerator(grid, max_num_patches=0.5 * H * W)`` as DINOv2 does; on grids
            of fewer than 8 patches the smallest block shrinks to ``max(1, H * W // 2)``.
        return_targets: also return the requested count of every crop.

    Returns:
        bool tensor ``[n_crops, H * W]`` (row ``i``: patches to mask in crop ``i``, row-major);
        with ``return_targets``, also a long tensor ``[n_crops]`` of the requested counts
        (the masks reach them unless the block sampler runs out of room).

    Examples:
        >>> m, t = sample_ibot_masks(4, (4, 4), generator=0, return_targets=True)
        >>> m.shape, bool((m.sum(1) <= t).all())
        (torch.Size([4, 16]), True)
    """
    if isinstance(n_crops, bool) or not isinstance(n_crops, int) or n_crops < 1:
        raise ValueError(f"sample_ibot_masks: n_crops={n_crops!r} must be an int >= 1")
    height, width = _grid_size(grid, "sample_ibot_masks")
    if len(mask_ratio) != 2 or not 0.0 <= mask_ratio[0] <= mask_ratio[1] <= 1.0:
        raise ValueError(
            f"sample_ibot_masks: mask_ratio={tuple(mask_ratio)!r} must be (min, max) with "
            "0 <= min <= max <= 1"
        )
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(
            f"sample_ibot_masks: mask_probability={mask_probability!r} must be in [0, 1]"
        )
    num_patches = height * width
    if mask_generator is None:
        mask_generator = MaskingGenerator(
            (height, width),
            min_num_patches=min(4, max(1, num_patches // 2)),
            max_num_patches=max(0.5 * num_patches, 1),
        )
    elif mask_generator.get_shape() != (height, width):
        raise ValueError(
            f"sample_ibot_masks: mask_generator has grid {mask_generator.get_shape()} but "
            f"grid={grid!r}"
        )
    rng = _Random(generator)
    ratio = (float(mask_ratio[0]), float(mask_ratio[1]))
    targets = _mask_targets(n_crops, num_patches, ratio, mask_probability, rng)
    order = rng.permutation(n_crops)
    shuffled = [targets[j] for j in order]
    masks = torch.stack(
        [mask_generator(t, generator=rng.generator).flatten() for t in shuffled]
    )
    if return_targets:
        return masks, torch.tensor(shuffled, dtype=torch.long)
    return masks
