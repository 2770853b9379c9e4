"""The training engine, its checkpoints, multi-process helpers and the three recipes.

* :mod:`dinolab.train.engine`: :class:`Engine` runs a :class:`Task` with the settings of a
  :class:`TrainConfig` (schedules, clipping, mixed precision, DDP, NaN stop, resume, logs);
* :mod:`dinolab.train.checkpoint`: atomic :func:`save_checkpoint`, safe :func:`load_checkpoint`;
* :mod:`dinolab.train.distributed`: torchrun set-up (gloo on CPU, NCCL on GPU) and rank helpers;
* :mod:`dinolab.train.recipes`: ``dino`` (self-distillation), ``kd`` (seed 004's knowledge
  distillation, done soundly) and ``distill`` (a frozen teacher, several losses);
* :mod:`dinolab.train.plots`: PNG plots from a run's JSON-lines logs.

Examples:
    >>> from dinolab.train.recipes import DINOConfig, train_dino     # doctest: +SKIP
    >>> summary = train_dino(DINOConfig(epochs=2, output_dir="runs/dino"))  # doctest: +SKIP
"""

from dinolab.train.checkpoint import load_checkpoint, save_checkpoint
from dinolab.train.engine import (
    Engine,
    NonFiniteLossError,
    SeededTransform,
    StepContext,
    Task,
    TrainConfig,
    cancel_gradients_last_layer,
    clip_gradients,
    get_params_groups,
)

__all__ = [
    "Engine",
    "NonFiniteLossError",
    "SeededTransform",
    "StepContext",
    "Task",
    "TrainConfig",
    "cancel_gradients_last_layer",
    "clip_gradients",
    "get_params_groups",
    "load_checkpoint",
    "save_checkpoint",
]
