"""What a recipe defines for the engine: a :class:`Task` and what one step may know.

Also the two ways a step reports a non-finite loss (:class:`NonFiniteLossError`,
:func:`nonfinite_loss`) and the SyncBatchNorm helpers the engine and tasks share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from dinolab.ema import unwrap_model
from dinolab.train import distributed as du
from dinolab.train.config import TrainConfig
from dinolab.train.optim import get_params_groups

__all__ = [
    "NonFiniteLossError",
    "nonfinite_loss",
    "StepContext",
    "Task",
    "wants_sync_batchnorm",
    "convert_sync_batchnorm_in_place",
]


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or Inf; the message names the step."""


def nonfinite_loss(reference: torch.Tensor) -> torch.Tensor:
    """A NaN loss that back-propagates nowhere, on ``reference``'s device.

    A task returns it from ``training_step`` when its outputs are not finite (see
    :func:`dinolab.train.distributed.finite_on_every_rank`); the engine stops on it, naming
    the step, before anything is updated.
    """
    return torch.full((), float("nan"), device=reference.device, requires_grad=True)


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def wants_sync_batchnorm(config: TrainConfig, dist_info: du.DistInfo) -> bool:
    """Whether the engine converts BatchNorm to SyncBatchNorm: ``sync_bn``, several
    processes, and a GPU (PyTorch's SyncBatchNorm has no CPU kernel)."""
    return bool(config.sync_bn) and dist_info.distributed and dist_info.device.type == "cuda"


def convert_sync_batchnorm_in_place(module: nn.Module) -> None:
    """Replace every BatchNorm layer inside ``module`` by a SyncBatchNorm sharing its tensors.

    Raises:
        TypeError: ``module`` is itself a BatchNorm layer (it cannot be replaced in place).
    """
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if converted is not module:  # only when module itself is a BatchNorm layer
        raise TypeError(
            f"convert_sync_batchnorm: {type(module).__name__} is itself a BatchNorm layer; "
            "wrap it in a container module so it can be converted in place"
        )


@dataclass
class StepContext:
    """What :meth:`Task.training_step` may need to know about the current iteration."""

    epoch: int  # 0-based epoch
    it: int  # global iteration, epoch * niter_per_ep + batch index
    batch_index: int
    niter_per_ep: int
    epochs: int
    student: nn.Module  # the student as it must be called: DDP-wrapped under torchrun
    device: torch.device
    lr: float
    wd: float


class Task:
    """What a recipe defines: models, one training step, evaluation and checkpoint state.

    Subclasses set ``self.student`` (the module the optimiser trains) and override
    :meth:`training_step`; the other hooks have sensible defaults.
    """

    name: str = "task"
    student: nn.Module
    # Scale the lr with the global batch (lr * batch / 256) as DINO does.
    scale_lr: bool = True

    def setup(self, epochs: int, niter_per_ep: int, device: torch.device) -> None:
        """Called once before training with the run's length; move extra modules here."""

    def modules_to_device(self, device: torch.device) -> None:
        """Move every module the task owns to ``device`` (default: the student)."""
        self.student.to(device)

    def convert_sync_batchnorm(self) -> None:
        """Turn the BatchNorm layers of every module that trains in train mode into
        :class:`torch.nn.SyncBatchNorm`, in place (default: the student's).

        Called by the engine before DDP wraps the student, only under torchrun on GPUs with
        ``sync_bn``. The layers keep their parameters and buffers (the same tensors), so
        optimiser groups, EMA pairs and checkpoint keys are unchanged. A frozen teacher that
        runs in eval mode needs no conversion: it normalises with its running statistics.
        """
        convert_sync_batchnorm_in_place(self.student)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: group 0 is decayed, group 1 (biases, norms) is not."""
        return get_params_groups(self.student)

    def train_mode(self) -> None:
        """Put the models in the mode training needs (called every epoch, after evaluation)."""
        self.student.train()

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the scalar loss to minimise and metrics to log for this step."""
        raise TypeError(f"{type(self).__name__} must override Task.training_step")

    def after_optimizer_step(self, ctx: StepContext) -> dict[str, float]:
        """Called after ``optimizer.step()`` (EMA updates); returns metrics to log."""
        return {}

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Evaluate after an epoch (rank 0 only); return metrics to log. Default: nothing."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries; keys follow official DINO (student, teacher, dino_loss)."""
        return {"student": unwrap_model(self.student).state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        unwrap_model(self.student).load_state_dict(state["student"])
