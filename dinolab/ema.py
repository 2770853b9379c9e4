"""Exponential moving averages of weights: the DINO / BYOL / MoCo teacher update.

``teacher <- m * teacher + (1 - m) * student`` for every floating parameter, in place. The
first update lays both models' parameters out as views into one flat buffer per model
(:func:`dinolab.flat_params.flatten_parameters`: same Parameter objects, names, shapes and
values, so state dicts, checkpoints, optimiser groups and DDP are unchanged); from then on an
update is ONE ``lerp_`` over the teacher's buffer, which runs at the machine's memory bandwidth
(``benchmarks/bench_ema.py`` measures the fraction). Where the layout cannot be flat (mixed
dtypes or devices) or ``flatten=False``, torch's multi-tensor ``_foreach_lerp_`` does the same
update per tensor.

Buffers (BatchNorm running statistics, position indices, ...) are NOT averaged by default.
That is what official DINO does: its teacher runs its own forward passes in train mode and
so keeps its own BatchNorm statistics (``buffers="keep"``). When the averaged model never runs
in train mode (an EMA of a student kept only for evaluation) pass ``buffers="copy"`` to take
the student's statistics, or ``buffers="ema"`` to average floating buffers like parameters.

Examples:
    >>> import copy
    >>> import torch.nn as nn
    >>> student = nn.Linear(4, 2)
    >>> teacher = copy.deepcopy(student)
    >>> ema_update(teacher, student, momentum=0.996)
    >>> updater = EMAUpdater(total_steps=1000)  # momentum 0.996 -> 1 along a cosine
    >>> updater.step(teacher, student)  # once per iteration, after optimizer.step()
    0.996
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
import torch.nn as nn

from dinolab.flat_params import flat_view, flatten_parameters
from dinolab.schedules import cosine_schedule

__all__ = ["ema_update", "EMAUpdater", "unwrap_model"]

BufferMode = Literal["keep", "copy", "ema"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside a DistributedDataParallel / DataParallel wrapper, else ``model``."""
    wrapped = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrapped) else model


def _paired(
    teacher_items: list[tuple[str, torch.Tensor]],
    student_items: list[tuple[str, torch.Tensor]],
    what: str,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pair tensors by name; refuse different names or shapes with a message naming them."""
    t_names = [n for n, _ in teacher_items]
    s_names = [n for n, _ in student_items]
    if t_names != s_names:
        missing = sorted(set(s_names) - set(t_names))[:5]
        extra = sorted(set(t_names) - set(s_names))[:5]
        raise ValueError(
            f"ema_update: teacher and student {what} differ: the student has "
            f"{len(s_names)}, the teacher {len(t_names)}; only in the student: {missing}, "
            f"only in the teacher: {extra}. The teacher must be a copy of the student's "
            "architecture (for a teacher of another architecture, freeze it instead of "
            "averaging)."
        )
    for (name, t), (_, s) in zip(teacher_items, student_items, strict=True):
        if t.shape != s.shape:
            raise ValueError(
                f"ema_update: {what[:-1]} {name!r} has shape {tuple(t.shape)} in the teacher "
                f"but {tuple(s.shape)} in the student; expected identical shapes"
            )
    return [t for _, t in teacher_items], [s for _, s in student_items]


# Bumped whenever any module anywhere registers a parameter or a sub-module (``setattr``,
# ``register_parameter``, ``add_module``, ``load_state_dict(assign=True)``, a new model being
# built), through torch's global registration hooks. A remembered pair is trusted only while
# it has not moved: a counter check instead of walking two module trees every update.
_TREE_VERSION = [0]


def _tree_changed(module: nn.Module, name: str, value: object) -> None:
    _TREE_VERSION[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_tree_changed)
torch.nn.modules.module.register_module_module_registration_hook(_tree_changed)


class _FlatPair:
    """A teacher and student found flat and paired, and how to tell cheaply that they still are.

    Walking a ViT-S's module tree with ``named_parameters()``, pairing its 151 tensors by name
    and checking the layout costs about 0.6 ms, a tenth of the one ``lerp_`` the update has
    become. Between two updates, what could change is the tree (a parameter or module
    assigned anywhere: the registration counter moves) or where the parameters live
    (``.to()``, ``.double()``, ``load_state_dict`` never; a new ``param.data`` does: the
    addresses differ). Holding the parameters, as an optimiser does, keeps their addresses
    from being reused. Not seen, as by an optimiser: a parameter written into
    ``module._parameters`` directly or removed with ``del``; pass the pair again after
    ``flatten_parameters`` or use ``flatten=False`` for such code.
    """

    def __init__(
        self,
        student: nn.Module,
        params: list[torch.Tensor],
        t_flat: torch.Tensor,
        s_flat: torch.Tensor,
    ) -> None:
        self.version = _TREE_VERSION[0]
        self.student = weakref.ref(student)  # the teacher is the cache's (weak) key
        self.params = params
        self.ptrs = [p.data_ptr() for p in params]
        self.t_flat, self.s_flat = t_flat, s_flat

    def holds(self, student: nn.Module) -> bool:
        """Whether ``student`` is the one seen and nothing was registered or moved since."""
        return (
            self.version == _TREE_VERSION[0]
            and self.student() is student
            and [p.data_ptr() for p in self.params] == self.ptrs
        )


# teacher -> its flat pair; weak, so a cached pair never keeps a teacher alive.
_FLAT_PAIRS: weakref.WeakKeyDictionary[nn.Module, _FlatPair] = weakref.WeakKeyDictionary()


def _flat_pair(
    teacher: nn.Module,
    student: nn.Module,
    t_list: list[torch.Tensor],
    s_list: list[torch.Tensor],
    flatten: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The two flat buffers ``[N]`` covering ``t_list`` and ``s_list``, or Nones.

    Element ``i`` of one buffer must be element ``i`` of the other: the lists hold the same
    shapes in the same order (checked by :func:`_paired`), so back-to-back layouts align.
    """
    t_flat, s_flat = flat_view(t_list), flat_view(s_list)
    if flatten and (t_flat is None or s_flat is None):
        # Only when the lists are exactly the modules' floating parameters (they are, as
        # paired by name; the check keeps a future change from flattening something else).
        for module, tensors in ((teacher, t_list), (student, s_list)):
            if flat_view(tensors) is None and len(tensors) == sum(
                1 for p in module.parameters() if p.is_floating_point()
            ):
                flatten_parameters(module)
        t_flat, s_flat = flat_view(t_list), flat_view(s_list)
    if t_flat is None or s_flat is None or t_flat.dtype != s_flat.dtype:
        return None, None
    if t_flat.device != s_flat.device:
        return None, None
    return t_flat, s_flat


@torch.no_grad()
def ema_update(
    teacher: nn.Module,
    student: nn.Module,
    momentum: float,
    buffers: BufferMode = "keep",
    flatten: bool = True,
) -> None:
    """Move the teacher's weights towards the student's, in place and without autograd.

    ``theta_t <- momentum * theta_t + (1 - momentum) * theta_s`` for every floating-point
    parameter, paired by name. DDP / DataParallel wrappers are unwrapped first.

    When the floating parameters of both models are views into one flat buffer each, at the
    same offsets, the update is one ``lerp_`` over the buffers. With ``flatten`` (default),
    a model whose parameters are not laid out so is flattened first
    (:func:`dinolab.flat_params.flatten_parameters`, once: the layout persists until the
    model is moved to another device or dtype). A pair found flat is remembered, so the next
    updates skip pairing the parameters by name; assigning a parameter or a module anywhere,
    or moving the models, makes the next update pair them again. Like an optimiser, it does
    not see a parameter written into ``module._parameters`` directly or deleted with ``del``.

    Args:
        teacher: the averaged model, updated in place.
        student: the model trained by gradient descent; only read.
        momentum: ``m`` in ``[0, 1]``; 1 leaves the teacher unchanged, 0 copies the student.
        buffers: ``"keep"`` (official DINO: the teacher's buffers are left alone),
            ``"copy"`` (take the student's buffers) or ``"ema"`` (average floating buffers
            with the same momentum; integer buffers such as ``num_batches_tracked`` are
            copied).
        flatten: lay the parameters out in flat buffers when they are not (False: leave
            them as they are and update tensor by tensor when they are not flat already).

    Raises:
        ValueError: ``momentum`` outside ``[0, 1]``, or parameter names or shapes differ.
    """
    m = float(momentum)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum!r}")
    if buffers not in ("keep", "copy", "ema"):
        raise ValueError(f"ema_update: buffers must be 'keep', 'copy' or 'ema', got {buffers!r}")
    teacher, student = unwrap_model(teacher), unwrap_model(student)
    cached = _FLAT_PAIRS.get(teacher)
    if cached is not None and cached.holds(student):
        cached.t_flat.lerp_(cached.s_flat, 1.0 - m)  # see below
    else:
        _FLAT_PAIRS.pop(teacher, None)
        _update_parameters(teacher, student, m, flatten)
    if buffers == "keep":
        return
    t_bufs, s_bufs = _paired(
        list(teacher.named_buffers()), list(student.named_buffers()), "buffers"
    )
    for t, s in zip(t_bufs, s_bufs, strict=True):
        if buffers == "ema" and t.is_floating_point():
            t.lerp_(s, 1.0 - m)
        else:
            t.copy_(s)


def _update_parameters(teacher: nn.Module, student: nn.Module, m: float, flatten: bool) -> None:
    """Pair the parameters by name, flatten if asked, update; remember a flat pair."""
    t_params, s_params = _paired(
        list(teacher.named_parameters()), list(student.named_parameters()), "parameters"
    )
    floating = [t.is_floating_point() for t in t_params]
    t_list = [t for t, keep in zip(t_params, floating, strict=True) if keep]
    s_list = [s for s, keep in zip(s_params, floating, strict=True) if keep]
    if t_list:
        t_flat, s_flat = _flat_pair(teacher, student, t_list, s_list, flatten)
        # lerp: t + (1 - m) * (s - t) == m * t + (1 - m) * s, in ONE pass over both tensors.
        # On a CPU the update is memory-bound, so this beats mul_ then add_ (two passes).
        if t_flat is not None and s_flat is not None:
            t_flat.lerp_(s_flat, 1.0 - m)
            _FLAT_PAIRS[teacher] = _FlatPair(student, t_list + s_list, t_flat, s_flat)
        else:
            torch._foreach_lerp_(t_list, [s.detach() for s in s_list], 1.0 - m)


class EMAUpdater:
    """Hold the teacher-momentum schedule and the step counter; update once per iteration.

    The momentum follows official DINO's cosine, from ``base_momentum`` towards
    ``final_momentum`` over ``total_steps`` iterations:
    ``m_it = final - (final - base) * (1 + cos(pi * it / total_steps)) / 2``.
    Past ``total_steps`` the momentum stays at ``final_momentum``.

    Args:
        total_steps: iterations in the whole run (``epochs * len(loader)``).
        base_momentum: momentum at step 0 (DINO: 0.996, DINOv2: 0.992).
        final_momentum: value the momentum rises towards (1.0).
        buffers: how buffers are treated, see :func:`ema_update`.

    Examples:
        >>> import copy
        >>> import torch.nn as nn
        >>> student = nn.Linear(3, 3); teacher = copy.deepcopy(student)
        >>> ema = EMAUpdater(total_steps=10)
        >>> ema.momentum
        0.996
        >>> ema.step(teacher, student)
        0.996
        >>> ema.step_count, round(ema.momentum, 6)
        (1, 0.996098)
    """

    def __init__(
        self,
        total_steps: int,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        buffers: BufferMode = "keep",
    ) -> None:
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(
                f"EMAUpdater: total_steps must be a positive integer, got {total_steps!r}"
            )
        for name, v in (("base_momentum", base_momentum), ("final_momentum", final_momentum)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"EMAUpdater: {name} must be in [0, 1], got {v!r}")
        self.total_steps = int(total_steps)
        self.base_momentum = float(base_momentum)
        self.final_momentum = float(final_momentum)
        self.buffers: BufferMode = buffers
        self.schedule = cosine_schedule(base_momentum, final_momentum, 1, self.total_steps)
        self.step_count = 0

    @property
    def momentum(self) -> float:
        """Momentum the next :meth:`step` will use."""
        if self.step_count >= self.total_steps:
            return self.final_momentum
        return float(self.schedule[self.step_count])

    def step(self, teacher: nn.Module, student: nn.Module) -> float:
        """Apply one EMA update at the current momentum, count the step, return the momentum."""
        m = self.momentum
        ema_update(teacher, student, m, buffers=self.buffers)
        self.step_count += 1
        return m

    def state_dict(self) -> dict[str, int | float | str]:
        """Counter and settings, for checkpoints."""
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "base_momentum": self.base_momentum,
            "final_momentum": self.final_momentum,
        }

    def load_state_dict(self, state: dict[str, int | float | str]) -> None:
        """Restore the counter saved by :meth:`state_dict`; settings must match."""
        for key in ("total_steps", "base_momentum", "final_momentum"):
            if key in state and float(state[key]) != float(getattr(self, key)):
                raise ValueError(
                    f"EMAUpdater.load_state_dict: {key} is {state[key]!r} in the state but "
                    f"{getattr(self, key)!r} here"
                )
        self.step_count = int(state["step_count"])
