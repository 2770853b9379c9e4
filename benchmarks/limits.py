"""Limits of the machine that benchmarks are held to, measured in the same run.

Ratios against a baseline move with the CPU; a fraction of the machine's own limit says how
much is left to win on any CPU. This module measures those limits for compute-bound code:

* :func:`count_flops`: the model FLOPs of one call, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (``2 * M * N * K`` per matrix product,
  forward and backward: ``mm``, ``addmm``, ``bmm``, ``baddbmm``; convolutions), plus the two
  matrix products of attention, which that counter does not know on the CPU
  (``_scaled_dot_product_flash_attention_for_cpu``: ``4 * B * H * N_q * N_k * d`` forward,
  twice that backward, torch's own formulas for the GPU kernels). Element-wise operations,
  norms, softmax, the loss and the optimiser are not counted: they are the overhead.
* :class:`GemmReplay`: every matrix product one call runs, recorded with its shapes, strides
  and dtypes, then replayed alone on random data of the same layout. Its FLOPs per second
  is the GEMM throughput *at the call's own shapes*: what the call would reach if it did
  nothing but its matrix products.
* :func:`square_gemm`: one large square ``torch.mm``, the machine's GEMM throughput on shapes
  BLAS likes best.

Run alone: ``python benchmarks/limits.py`` prints the square GEMM rate at a few sizes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten

# The matrix products a recorded call may run, with their FLOPs from the input shapes.
_GEMMS: dict[Any, Callable[[list[torch.Size]], int]] = {
    aten.mm.default: lambda s: 2 * s[0][0] * s[0][1] * s[1][1],
    aten.addmm.default: lambda s: 2 * s[1][0] * s[1][1] * s[2][1],
    aten.bmm.default: lambda s: 2 * s[0][0] * s[0][1] * s[0][2] * s[1][2],
    aten.baddbmm.default: lambda s: 2 * s[1][0] * s[1][1] * s[1][2] * s[2][2],
}


def _cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any,
                       **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """Model FLOPs of one call of ``fn`` (see the module docstring for what is counted).

    Returns:
        ``(total, by_operator)``, e.g. ``{"mm": ..., "addmm": ..., "convolution": ...}``.
    """
    extra: dict[Any, Any] = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward),
    ):
        if hasattr(aten, name):
            extra[getattr(aten, name)] = formula
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    with counter:
        fn()
    counts = counter.get_flop_counts()["Global"]
    by_op = {str(op).split(".")[-1]: int(n) for op, n in counts.items()}
    return int(counter.get_total_flops()), by_op


class _Recorder(TorchDispatchMode):
    """Note every matrix product's operator and input layouts; run everything as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[Any, tuple[tuple[Any, ...], ...]]] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _GEMMS:
            layout = tuple(
                (tuple(a.shape), tuple(a.stride()), a.dtype)
                for a in args
                if isinstance(a, torch.Tensor)
            )
            self.calls[(func, layout)] += 1
        return func(*args, **(kwargs or {}))


class GemmReplay:
    """The matrix products of one call of ``fn``, replayable alone.

    Calling the object runs every recorded product as many times as ``fn`` did, on random
    tensors of the recorded shapes, strides and dtypes (one set per distinct layout, so the
    replay's inputs sit in cache more often than the real call's: it is an upper bound).

    Attributes:
        flops: ``2 * M * N * K`` summed over the recorded products.
        calls: number of products per call of ``fn``.
        layouts: number of distinct (operator, shapes, strides) among them.
    """

    def __init__(self, fn: Callable[[], object]) -> None:
        recorder = _Recorder()
        with recorder:
            fn()
        self._work: list[tuple[Any, list[torch.Tensor], int]] = []
        self.flops = 0
        g = torch.Generator().manual_seed(0)
        for (func, layout), count in recorder.calls.items():
            tensors = []
            for shape, stride, dtype in layout:
                # Any layout, expanded (stride 0) and transposed ones included: random values
                # in a storage just large enough, viewed with the recorded strides.
                extent = 1 + sum(max(n - 1, 0) * st for n, st in zip(shape, stride, strict=True))
                base = torch.randn(extent, generator=g).to(dtype)
                tensors.append(base.as_strided(shape, stride))
            self._work.append((func, tensors, count))
            self.flops += count * _GEMMS[func]([torch.Size(s) for s, _, _ in layout])
        self.calls = sum(recorder.calls.values())
        self.layouts = len(recorder.calls)

    def __call__(self) -> None:
        for func, tensors, count in self._work:
            for _ in range(count):
                func(*tensors)

    def largest(self, n: int = 5) -> list[str]:
        """The ``n`` layouts with the most FLOPs, as ``op [M,K]x[K,N] xcount`` strings."""
        rows = []
        for func, tensors, count in self._work:
            shapes = [list(t.shape) for t in tensors]
            flops = count * _GEMMS[func]([t.shape for t in tensors])
            rows.append((flops, f"{str(func).split('.')[-2]} {shapes} x{count}"))
        return [text for _, text in sorted(rows, reverse=True)[:n]]


# Operator-name fragments -> the group a profile reports them under (first match wins).
_GROUPS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention kernel", ("scaled_dot_product",)),
    ("GELU", ("gelu",)),
    ("layer norm", ("layer_norm",)),
    ("softmax / log-softmax", ("softmax",)),
    ("convolution", ("convolution",)),
    ("optimizer", ("adam", "Optimizer", "_foreach", "lerp")),
    ("copies, cat, fill", ("copy_", "aten::cat", "fill_", "zero_", "clone", "contiguous")),
)


def profile_breakdown(fn: Callable[[], object], calls: int = 2) -> list[tuple[str, float]]:
    """Where one call's CPU time goes: ``(group, fraction)`` pairs, largest first.

    ``torch.profiler`` records ``calls`` calls of ``fn``; the self CPU time of every operator
    is summed into the groups of ``_GROUPS`` (matrix products, attention, GELU, ...) and
    "other" (element-wise arithmetic, views, Python-level autograd bookkeeping).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    totals: Counter[str] = Counter()
    for event in prof.key_averages():
        group = next((g for g, keys in _GROUPS if any(k in event.key for k in keys)), "other")
        totals[group] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return [(group, t / whole) for group, t in totals.most_common()]


def square_gemm(n: int = 2048) -> tuple[Callable[[], object], int]:
    """A zero-argument ``torch.mm`` of two float32 ``[n, n]`` matrices, and its FLOPs."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    return (lambda: torch.mm(a, b, out=out)), 2 * n**3


if __name__ == "__main__":
    for size in (512, 1024, 2048):
        fn, flops = square_gemm(size)
        fn()
        start = time.perf_counter()
        for _ in range(5):
            fn()
        seconds = (time.perf_counter() - start) / 5
        print(f"square GEMM {size}: {flops / seconds / 1e9:.1f} GFLOP/s "
              f"({torch.get_num_threads()} threads)")
