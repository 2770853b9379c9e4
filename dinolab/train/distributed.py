"""torch.distributed helpers: one code path for a single process and for ``torchrun``.

Launch several processes with ``torchrun`` (``torch.distributed.launch`` is deprecated)::

    torchrun --nproc_per_node=2 -m dinolab train dino --epochs 10

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group with NCCL
when every process has its own GPU and gloo otherwise (CPU). Without those variables it does
nothing and the helpers below answer as a single process (rank 0 of 1), so the training
engine never branches on how it was started.

Examples:
    >>> info = init_distributed()   # not under torchrun: a single process
    >>> info.world_size, is_main_process()
    (1, True)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_dist_avail_and_initialized",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_mean",
    "finite_on_every_rank",
    "make_sampler",
    "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``local_rank`` and ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None for a single process

    @property
    def distributed(self) -> bool:
        """True when running inside an initialised process group of more than one process."""
        return self.backend is not None


def is_dist_avail_and_initialized() -> bool:
    """True when torch.distributed is built in and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the group, 1 when not distributed."""
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the only process that writes logs, plots and checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process; a no-op for a single process."""
    if is_dist_avail_and_initialized():
        dist.barrier()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"init_distributed: environment variable {name}={value!r} is not an "
            "integer; it is set by torchrun"
        ) from None


def init_distributed(
    device: str | torch.device | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Join the process group described by torchrun's environment, or stay single-process.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` (Apple GPUs; one process only) or ``None``
            (CUDA when available). Under torchrun with CUDA, each process takes GPU
            ``LOCAL_RANK``.
        timeout_s: collective-operation timeout in seconds.

    Returns:
        A :class:`DistInfo` for this process.

    Raises:
        ValueError: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are malformed or inconsistent,
            ``cuda`` was asked for on a machine without it, or ``mps`` with several processes.
    """
    want = torch.device(device) if device is not None else None
    if want is not None and want.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "init_distributed: device 'cuda' was requested but CUDA is not available; "
            "pass --device cpu"
        )
    use_cuda = torch.cuda.is_available() if want is None else want.type == "cuda"

    use_mps = want is not None and want.type == "mps"

    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK")
    if use_mps and rank is not None and world_size is not None and world_size > 1:
        raise ValueError(
            f"init_distributed: device {str(want)!r} with WORLD_SIZE={world_size}: an Apple "
            "GPU runs one process (no NCCL or gloo on MPS); run without torchrun"
        )
    if rank is None or world_size is None or use_mps:
        dev = torch.device("mps") if use_mps else torch.device("cpu")
        if use_cuda:
            # The GPU asked for, else the current one (the caller's choice; GPU 0 by default).
            # It becomes the current GPU: the CUDA RNG state that checkpoints save and restore
            # is the current GPU's, and so are the allocations made without a device.
            index = want.index if want is not None and want.index is not None else None
            index = torch.cuda.current_device() if index is None else index
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"init_distributed: device 'cuda:{index}' was requested but only "
                    f"{torch.cuda.device_count()} GPUs are visible"
                )
            torch.cuda.set_device(index)
            dev = torch.device("cuda", index)
        if is_dist_avail_and_initialized():  # a caller already set up the group
            rank, world_size = dist.get_rank(), dist.get_world_size()
            local = dev.index if dev.type == "cuda" else rank
            return DistInfo(rank, world_size, local, dev, dist.get_backend())
        return DistInfo(0, 1, 0, dev, None)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"init_distributed: RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    local_rank = rank if local_rank is None else local_rank

    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"init_distributed: LOCAL_RANK={local_rank} but only "
                f"{torch.cuda.device_count()} GPUs are visible; use --nproc_per_node <= that"
            )
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not is_dist_avail_and_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": dev} if backend == "nccl" else {}),
        )
    return DistInfo(rank, world_size, local_rank, dev, dist.get_backend())


def all_reduce_mean(value: torch.Tensor | float) -> float:
    """Average a scalar over all processes (for logging); the value itself when single."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    if is_dist_avail_and_initialized():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t)


def finite_on_every_rank(*tensors: torch.Tensor | None) -> bool:
    """True when every tensor is free of NaN and Inf in every process (``None`` is skipped).

    A training step decides with this whether to compute its losses. The decision must be
    the same in every process: a process that skipped a loss would skip the collectives in
    it (the DINO center's all-reduce, DDP's gradient all-reduce) while the others wait in
    them until the timeout. One all-reduce of a flag when distributed; none otherwise.
    """
    local_ok = all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)
    if not is_dist_avail_and_initialized():
        return local_ok
    bad = torch.tensor(0.0 if local_ok else 1.0)
    if dist.get_backend() == "nccl":
        bad = bad.cuda()
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return float(bad) == 0.0


def make_sampler(
    dataset: Dataset, shuffle: bool, seed: int, drop_last: bool = False
) -> DistributedSampler:
    """A :class:`DistributedSampler` over this process group, also for a single process.

    Using the distributed sampler in every case keeps one behaviour: the order is a
    permutation drawn from ``seed + epoch`` (call ``sampler.set_epoch(epoch)`` each epoch),
    so a resumed run and a run on N processes see the same global batches. Rank r reads
    positions r, r+N, r+2N, ... of that permutation.
    """
    return DistributedSampler(
        dataset,
        num_replicas=get_world_size(),
        rank=get_rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


def cleanup() -> None:
    """Leave the process group (at the end of a run or after an error)."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()
