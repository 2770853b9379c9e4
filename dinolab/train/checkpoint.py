"""Training checkpoints: written atomically, read with ``weights_only=True``, checked on both ends.

A dinolab checkpoint is a plain dictionary that ``torch.load(..., weights_only=True)`` can
read, so loading a file never runs code from it. It uses official DINO's key names where
they exist (``student``, ``teacher``, ``optimizer``, ``epoch``, ``args``, ``dino_loss``,
``fp16_scaler``), so :func:`dinolab.models.load_pretrained` and scripts written for
official DINO checkpoints read its ``teacher`` entry unchanged. dinolab adds:

* ``format`` / ``version``: the marker that tells a dinolab checkpoint from a foreign file;
* ``step``: global iterations done (``epoch * len(loader)`` at an epoch boundary);
* ``rng``: Python, NumPy, torch CPU and CUDA generator states, as tensors and plain types;
* ``extra``: recipe state that has no official slot (an EMA of the student, a phase name).

Writing goes to a temporary file in the same directory, which is flushed and ``fsync``-ed,
then renamed over the destination with :func:`os.replace` (atomic on POSIX and Windows) and
the directory entry is ``fsync``-ed as well. A crash or a full disk in the middle of a save
therefore leaves the previous checkpoint untouched, and a state whose weights are not finite
is refused before anything is written.

Examples:
    >>> import torch.nn as nn, tempfile, os
    >>> net = nn.Linear(2, 2)
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pth")
    >>> save_checkpoint(path, {"student": net.state_dict(), "epoch": 1, "step": 10})
    >>> load_checkpoint(path)["epoch"]
    1
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
    "plain_config",
]

CHECKPOINT_FORMAT = "dinolab-checkpoint"
CHECKPOINT_VERSION = 1

# Keys every dinolab checkpoint carries; a file without them is foreign.
_REQUIRED_KEYS = ("format", "version", "epoch", "step")
# Entries that hold model weights and must be finite before they may replace a good file.
_WEIGHT_KEYS = ("student", "teacher")


def plain_config(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Turn a configuration (dict, argparse Namespace, dataclass) into plain values.

    ``weights_only=True`` loading accepts only tensors, numbers, strings, ``None`` and
    lists / tuples / dicts of them, so paths become strings and anything else that is not
    plain becomes its ``repr``.

    Returns:
        A new dict with the same keys and plain values.
    """
    if not isinstance(config, Mapping):
        config = vars(config) if hasattr(config, "__dict__") else dict(config)

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, list | tuple):
            return type(value)(convert(v) for v in value)
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, np.generic):
            return value.item()
        return repr(value)

    return {str(k): convert(v) for k, v in config.items()}


def get_rng_state() -> dict[str, Any]:
    """Capture every random generator a training run draws from, as loadable plain types.

    Returns:
        ``{"python": tuple, "numpy": dict, "torch": uint8 tensor, "cuda": list of uint8
        tensors}``. NumPy's state array is stored as an int64 tensor because ``weights_only``
        loading refuses NumPy arrays. ``"cuda"`` holds the generator of this process's current
        GPU only (under torchrun each process has its own), and is empty when this process has
        not used CUDA: reading every GPU's state would open a CUDA context on each of them
        from every process.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": (
            [torch.cuda.get_rng_state()]
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else []
        ),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states captured by :func:`get_rng_state`.

    The CUDA state goes to this process's current GPU; it is skipped without CUDA (a CPU
    resume of a GPU run), which changes nothing on CPU. Checkpoints that stored one state per
    visible GPU give the current GPU its own when the device count matches.

    Raises:
        ValueError: ``state`` lacks one of the ``python``, ``numpy`` or ``torch`` entries.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(
            f"set_rng_state: the RNG state lacks {missing}; expected the dict "
            "written by get_rng_state()"
        )
    py = state["python"]
    # weights_only loading may hand back lists where tuples were saved.
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == 1:
            torch.cuda.set_rng_state(cuda_states[0])
        elif len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state(cuda_states[torch.cuda.current_device()])


def _check_state(state: Mapping[str, Any], path: Path) -> None:
    """Refuse a state that must not replace a checkpoint: wrong type or non-finite weights."""
    if not isinstance(state, Mapping):
        raise ValueError(
            f"save_checkpoint({str(path)!r}): state must be a dict, got {type(state).__name__}"
        )
    for key in ("epoch", "step"):
        if key not in state:
            raise ValueError(
                f"save_checkpoint({str(path)!r}): state has no {key!r} entry; expected at "
                "least 'epoch' and 'step' besides the weights"
            )
    for key in _WEIGHT_KEYS:
        weights = state.get(key)
        if not isinstance(weights, Mapping):
            continue
        for name, tensor in weights.items():
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())
            ):
                raise ValueError(
                    f"save_checkpoint({str(path)!r}): {key}[{name!r}] holds NaN or Inf values; "
                    "refusing to replace the last good checkpoint with it"
                )


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; the previous file survives any failure.

    ``format`` and ``version`` markers are added. Tensors are moved to the CPU by
    :func:`torch.save`'s normal handling only if they already are; callers pass state dicts.

    Args:
        path: destination file; its directory is created if needed.
        state: a dict with at least ``epoch`` and ``step``; usually also ``student``,
            ``teacher``, ``optimizer``, ``dino_loss``, ``fp16_scaler``, ``rng`` and ``args``
            (a plain dict, see :func:`plain_config`).

    Returns:
        The destination path.

    Raises:
        ValueError: ``state`` is not a dict, lacks ``epoch``/``step``, or its ``student`` or
            ``teacher`` weights contain NaN or Inf. Nothing is written in that case.
    """
    path = Path(path)
    _check_state(state, path)
    payload = dict(state)
    payload["format"] = CHECKPOINT_FORMAT
    payload["version"] = CHECKPOINT_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded (default the CPU; modules move them on
            ``load_state_dict``).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated or corrupt, is not a dict, or lacks dinolab's
            ``format``/``epoch``/``step`` entries (a foreign file, e.g. an official DINO
            checkpoint: load those with :func:`dinolab.models.load_pretrained`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
    ) as err:
        size = path.stat().st_size
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"load_checkpoint: {str(path)!r} ({size} bytes) is truncated or corrupt, or holds "
            f"objects that weights_only=True loading refuses ({type(err).__name__}: {reason})"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(
            f"load_checkpoint: {str(path)!r} holds a {type(state).__name__}, not a dinolab "
            "checkpoint dict"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"load_checkpoint: {str(path)!r} is not a dinolab checkpoint (missing {missing}, "
            f"format={state.get('format')!r}, keys {sorted(map(str, state))[:8]}); for official "
            "DINO / DINOv2 weights use dinolab.models.load_pretrained"
        )
    if int(state["version"]) > CHECKPOINT_VERSION:
        raise ValueError(
            f"load_checkpoint: {str(path)!r} has format version {state['version']}, newer "
            f"than this dinolab's {CHECKPOINT_VERSION}; upgrade dinolab to read it"
        )
    return state
