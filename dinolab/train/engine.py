"""One training engine for every dinolab recipe (``dino``, ``kd``, ``distill``).

The engine owns everything a recipe should not have to repeat: the process group and DDP,
the data loader and its sampler, the optimiser and its per-iteration learning-rate and
weight-decay schedules, mixed precision, gradient clipping, freezing the head's last layer
early on, NaN/Inf detection, checkpoints and ``--resume``, progress bars, JSON-lines metrics
and the plots. A recipe is a :class:`Task` (what one training step computes, what is
evaluated each epoch, what goes into a checkpoint) plus a :class:`TrainConfig`.

One iteration follows official DINO's ``train_one_epoch`` order:

1. set the learning rate of every parameter group and the weight decay of group 0
   (the regularised one) from their per-iteration cosine schedules;
2. forward passes and loss (:meth:`Task.training_step`), under autocast when asked;
3. stop if the loss is NaN or Inf, naming the step;
4. backward; per-parameter gradient clipping; last-layer gradients dropped while
   ``epoch < freeze_last_layer``; optimiser step;
5. :meth:`Task.after_optimizer_step` (the EMA teacher update).

Reproducibility. Every sample's augmentation is drawn from a generator seeded by
``(seed, epoch, index)`` (:class:`SeededTransform`) and the order of samples comes from a
:class:`~torch.utils.data.DistributedSampler` seeded by ``seed + epoch``. Neither depends on
the number of processes, the number of loader workers or what ran before, so a run resumed
from its last checkpoint continues exactly as the uninterrupted run would have, and N
processes with ``batch_size_per_gpu = B / N`` see the same global batches as one process
with batch ``B``. The same data make the same weights on the CPU (the tests check it), unless
a loss looks within the batch: KoLeo (``--koleo_loss_weight``, on by default in the ``dino``
recipe) finds each sample's nearest neighbour in its own process's batch, as DINOv2. On a GPU,
some backward kernels (index-put, bicubic interpolation, replicate padding) add in a varying
order, so resumed and multi-process runs agree up to float rounding, not bit for bit, unless
``torch.use_deterministic_algorithms(True)`` is set (slower).

Examples:
    A recipe in a few lines (see :mod:`dinolab.train.recipes` for the real ones)::

        task = MyTask(student=model)             # a Task subclass
        engine = Engine(task, train_set, TrainConfig(epochs=5, output_dir="out"))
        summary = engine.fit()
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dinolab.schedules import cosine_schedule
from dinolab.train import distributed as du
from dinolab.train.checkpoint import (
    get_rng_state,
    load_checkpoint,
    plain_config,
    save_checkpoint,
    set_rng_state,
)

# The engine's building blocks live in one module per idea; they are re-exported here so
# that ``from dinolab.train.engine import X`` keeps working for every X it ever offered.
from dinolab.train.config import TrainConfig
from dinolab.train.device import autocast_context, fix_random_seeds, resolve_device
from dinolab.train.optim import cancel_gradients_last_layer, clip_gradients, get_params_groups
from dinolab.train.seeded import SeededTransform
from dinolab.train.task import (
    NonFiniteLossError,
    StepContext,
    Task,
    _has_batchnorm,
    convert_sync_batchnorm_in_place,
    nonfinite_loss,
    wants_sync_batchnorm,
)

__all__ = [
    "TrainConfig",
    "StepContext",
    "Task",
    "Engine",
    "NonFiniteLossError",
    "nonfinite_loss",
    "SeededTransform",
    "get_params_groups",
    "clip_gradients",
    "cancel_gradients_last_layer",
    "fix_random_seeds",
    "resolve_device",
    "autocast_context",
    "wants_sync_batchnorm",
    "convert_sync_batchnorm_in_place",
]

CHECKPOINT_NAME = "checkpoint.pth"
STEP_LOG = "log_steps.jsonl"
EPOCH_LOG = "log_epochs.jsonl"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Engine:
    """Train a :class:`Task` on a data set with the settings of a :class:`TrainConfig`.

    Args:
        task: the recipe's task, already built (models on the CPU are fine).
        train_set: yields what ``collate_fn`` batches; wrap augmentations in
            :class:`SeededTransform` for exact resumes (the engine calls ``set_epoch``).
        config: the run's settings.
        collate_fn: the loader's collate function (e.g. the multi-crop collate).
        callbacks: called as ``callback(engine, record)`` after every step with that step's
            metrics record; a callback may raise to stop the run (tests use it to simulate
            an interruption).

    Attributes after :meth:`fit`: ``history`` (per-epoch records), ``output_dir``.
    """

    def __init__(
        self,
        task: Task,
        train_set: Dataset,
        config: TrainConfig,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        callbacks: Sequence[Callable[[Engine, dict[str, Any]], None]] = (),
    ) -> None:
        self._check_config(config)
        self.task = task
        self.config = config
        self.callbacks = list(callbacks)
        self.dist = du.init_distributed(resolve_device(config.device))
        self.device = self.dist.device
        autocast_context(config.precision, self.device)  # validate early
        self.is_main = self.dist.rank == 0
        self.output_dir = Path(config.output_dir)
        self.train_set = train_set
        self.sampler = du.make_sampler(train_set, shuffle=True, seed=config.seed)
        self.loader = DataLoader(
            train_set,
            batch_size=config.batch_size_per_gpu,
            sampler=self.sampler,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            collate_fn=collate_fn,
            # Not persistent: workers hold copies of the data set, and set_epoch (below) reaches
            # only the main process's. Workers forked anew each epoch copy the new epoch, so
            # SeededTransform's augmentations change with it and a resume replays them.
            persistent_workers=False,
        )
        self.niter_per_ep = len(self.loader)
        if self.niter_per_ep == 0:
            raise ValueError(
                f"Engine: the training set has {len(train_set)} samples "  # type: ignore[arg-type]
                f"({len(self.sampler)} for this process), fewer than one batch of "
                f"batch_size_per_gpu={config.batch_size_per_gpu}; lower --batch_size_per_gpu"
            )
        self.total_steps = config.epochs * self.niter_per_ep

        # Models were built from the same seed on every rank; from here on each rank draws
        # its own stream (drop-path masks), still repeatable for a given seed and rank.
        torch.manual_seed(config.seed + 1000 * self.dist.rank + 1)
        task.modules_to_device(self.device)
        task.setup(config.epochs, self.niter_per_ep, self.device)
        if wants_sync_batchnorm(config, self.dist):
            task.convert_sync_batchnorm()
        elif self.dist.distributed and _has_batchnorm(task.student) and self.is_main:
            warnings.warn(
                "BatchNorm under torchrun without SyncBatchNorm "
                f"({'--sync_bn is off' if self.device.type == 'cuda' else 'CPU processes'}): "
                "each process normalises its own part of the batch, so the run differs from "
                "one process with the same global batch",
                UserWarning,
                stacklevel=2,
            )
        self.student = task.student
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student = nn.parallel.DistributedDataParallel(task.student, device_ids=ids)

        groups = task.param_groups()
        if config.optimizer == "adamw":
            # fused: one kernel for the whole update of every parameter (CPU and CUDA). PyTorch
            # picks its default (the per-parameter loop on a CPU, foreach on CUDA) unless asked;
            # for the ~100 small tensors of a ViT on a CPU, fused is the fastest of the three
            # and agrees with them to float32 rounding (see benchmarks/bench_step.py).
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, fused=True)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=0.9, foreach=True)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None

        global_batch = config.batch_size_per_gpu * self.dist.world_size
        base_lr = config.lr * global_batch / 256.0 if task.scale_lr else config.lr
        if config.min_lr > base_lr:
            warnings.warn(
                f"min_lr={config.min_lr:g} is above the peak learning rate {base_lr:g} (lr="
                f"{config.lr:g}{' x global batch / 256' if task.scale_lr else ''}): the lr will "
                "rise after warm-up instead of decaying",
                UserWarning,
                stacklevel=2,
            )
        self.lr_schedule = cosine_schedule(
            base_lr,
            config.min_lr,
            config.epochs,
            self.niter_per_ep,
            warmup_epochs=config.warmup_epochs,
        )
        self.wd_schedule = cosine_schedule(
            config.weight_decay, config.weight_decay_end, config.epochs, self.niter_per_ep
        )
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.checkpoint_path = self.output_dir / CHECKPOINT_NAME

    # ----------------------------------------------------------------- checks and state

    @staticmethod
    def _check_config(config: TrainConfig) -> None:
        positive = {"epochs": config.epochs, "batch_size_per_gpu": config.batch_size_per_gpu}
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= config.warmup_epochs <= config.epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, epochs={config.epochs}], got "
                f"{config.warmup_epochs!r}"
            )
        for name in ("lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad"):
            value = getattr(config, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if config.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
        if config.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {config.num_workers!r}")

    def state_dict(self, epoch_done: int) -> dict[str, Any]:
        """The checkpoint after ``epoch_done`` full epochs (``epoch`` is the next to run)."""
        rng = [get_rng_state()]
        if self.dist.distributed:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        state = dict(self.task.state_dict())
        state.update(
            optimizer=self.optimizer.state_dict(),
            fp16_scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=epoch_done,
            step=epoch_done * self.niter_per_ep,
            rng=rng,
            args=plain_config(asdict(self.config)),
            recipe=self.task.name,
            world_size=self.dist.world_size,
        )
        return state

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.checkpoint_path)
        if ckpt.get("recipe") not in (None, self.task.name):
            raise ValueError(
                f"--resume: {str(self.checkpoint_path)!r} was written by the "
                f"{ckpt.get('recipe')!r} recipe, not {self.task.name!r}"
            )
        saved = ckpt.get("args", {})
        changed = {
            k: (saved[k], v)
            for k, v in plain_config(asdict(self.config)).items()
            if k in saved and saved[k] != v and k not in ("resume", "progress", "plots")
        }
        try:
            self.task.load_state_dict(ckpt)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:  # other shapes, keys or groups
            differ = ", ".join(f"--{k} {old!r} then, {new!r} now" for k, (old, new) in
                               changed.items())
            raise ValueError(
                f"--resume: the checkpoint {str(self.checkpoint_path)!r} does not fit this "
                f"model ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                + (f"Settings that differ: {differ}. " if differ else "")
                + "Resume with the run's settings, or start a new --output_dir."
            ) from None
        if self.scaler is not None and ckpt.get("fp16_scaler"):
            self.scaler.load_state_dict(ckpt["fp16_scaler"])
        rng = ckpt.get("rng") or []
        if rng:
            set_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        self.start_epoch = int(ckpt["epoch"])
        if changed and self.is_main:
            tqdm.write(f"resume: settings differ from the checkpoint (saved, now): {changed}")
        if self.is_main:
            # Forget log lines written after the checkpoint: they are about to be redone.
            step0 = self.start_epoch * self.niter_per_ep
            for name, key, limit in (
                (STEP_LOG, "it", step0),
                (EPOCH_LOG, "epoch", self.start_epoch),
            ):
                path = self.output_dir / name
                kept = [r for r in _read_jsonl(path) if int(r.get(key, -1)) < limit]
                path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            self.history = _read_jsonl(self.output_dir / EPOCH_LOG)

    @torch.no_grad()
    def _rank_weight_spread(self) -> float:
        """Largest difference between ranks of the checkpointed weights' checksums.

        Every rank must hold the same student (DDP) and teacher (EMA of identical students);
        0.0 confirms it. Each entry of ``task.state_dict()`` that is a state dict contributes
        the float64 sum of its floating tensors, except BatchNorm running statistics: without
        SyncBatchNorm each rank updates them from its own part of the batch (DDP broadcasts
        rank 0's at the start of every forward, and rank 0 writes the checkpoint).
        """
        sums = []
        for value in self.task.state_dict().values():
            if isinstance(value, Mapping):
                sums.append(
                    sum(
                        float(t.double().sum())
                        for k, t in value.items()
                        if isinstance(t, torch.Tensor)
                        and t.is_floating_point()
                        and not str(k).endswith(("running_mean", "running_var"))
                    )
                )
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, sums)
        return max(
            abs(a - b) for other in gathered for a, b in zip(gathered[0], other, strict=True)
        )

    def _write(self, name: str, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.output_dir / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------- training

    def fit(self) -> dict[str, Any]:
        """Run (or continue) training; return the last epoch's record.

        Raises:
            NonFiniteLossError: the loss became NaN or Inf (the checkpoint of the last
                finished epoch is left as it was).
            FileNotFoundError: ``resume`` was asked but there is no checkpoint.
            ValueError: ``output_dir`` already holds a checkpoint and ``resume`` is off, or
                the checkpoint is corrupt or foreign.
        """
        cfg = self.config
        if self.is_main:
            if self.output_dir.exists() and not self.output_dir.is_dir():
                raise ValueError(f"--output_dir {str(self.output_dir)!r} is a file, not a folder")
            self.output_dir.mkdir(parents=True, exist_ok=True)
        du.barrier()
        if cfg.resume:
            if not self.checkpoint_path.is_file():
                raise FileNotFoundError(
                    f"--resume: no checkpoint at {str(self.checkpoint_path)!r}; run once "
                    "without --resume to start this run"
                )
            self._resume()
        elif self.checkpoint_path.exists():
            raise ValueError(
                f"{str(self.checkpoint_path)!r} already exists; pass --resume to continue that "
                "run or choose another --output_dir"
            )
        elif self.is_main:
            for name in (STEP_LOG, EPOCH_LOG):
                (self.output_dir / name).unlink(missing_ok=True)
            (self.output_dir / "config.json").write_text(
                json.dumps(plain_config(asdict(cfg)), indent=2) + "\n"
            )
        du.barrier()

        show = cfg.progress and self.is_main
        if show:
            tqdm.write(
                f"{self.task.name}: {len(self.train_set)} images, {self.niter_per_ep} steps per "  # type: ignore[arg-type]
                f"epoch x {cfg.epochs} epochs, global batch "
                f"{cfg.batch_size_per_gpu * self.dist.world_size}, peak lr "
                f"{self.lr_schedule.max():.3g}, {self.dist.world_size} process(es) on "
                f"{self.device}; writing to {self.output_dir}"
                + (f" (resumed at epoch {self.start_epoch})" if self.start_epoch else "")
            )
        record: dict[str, Any] = self.history[-1] if self.history else {}
        epochs_bar = tqdm(
            range(self.start_epoch, cfg.epochs),
            desc=f"{self.task.name} epochs",
            disable=not show,
            initial=self.start_epoch,
            total=cfg.epochs,
        )
        try:
            for epoch in epochs_bar:
                record = self._train_one_epoch(epoch, show)
                self.task.student.eval()
                if self.is_main:
                    wall, cpu = time.perf_counter(), time.process_time()
                    with torch.no_grad():
                        record.update(self.task.evaluate(epoch))
                    record["eval_time_s"] = time.perf_counter() - wall
                    record["eval_cpu_time_s"] = time.process_time() - cpu
                self.task.train_mode()
                if self.dist.distributed:
                    record["rank_weight_spread"] = self._rank_weight_spread()
                du.barrier()
                state = self.state_dict(epoch + 1)  # collective on every rank
                if self.is_main:
                    save_checkpoint(self.checkpoint_path, state)
                    if cfg.saveckp_freq and (epoch + 1) % cfg.saveckp_freq == 0:
                        save_checkpoint(self.output_dir / f"checkpoint{epoch:04d}.pth", state)
                    self._write(EPOCH_LOG, record)
                    self.history.append(record)
                    epochs_bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in record.items() if isinstance(v, float)},
                        refresh=False,
                    )
                du.barrier()
        finally:
            epochs_bar.close()
            if cfg.plots and self.is_main:
                self._plot()
        return record

    def _train_one_epoch(self, epoch: int, show: bool) -> dict[str, Any]:
        cfg = self.config
        self.sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)  # type: ignore[attr-defined]
        self.task.train_mode()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # a task may leave a metric out of some steps
        start, cpu_start = time.perf_counter(), time.process_time()
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not show,
            total=self.niter_per_ep,
        )
        for i, batch in enumerate(bar):
            it = epoch * self.niter_per_ep + i
            step_start = time.perf_counter()
            metrics = self.train_step(batch, epoch, i, it)
            metrics["step_time_s"] = time.perf_counter() - step_start
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            record = {
                "epoch": epoch,
                "it": it,
                **{k: _finite_or_none(v) for k, v in metrics.items()},
            }
            self._write(STEP_LOG, record)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", refresh=False)
            for callback in self.callbacks:
                callback(self, record)
        bar.close()
        means = {f"train_{k}": v / counts[k] for k, v in sums.items()}
        return {
            "epoch": epoch,
            "it": (epoch + 1) * self.niter_per_ep,
            "epoch_time_s": time.perf_counter() - start,
            "epoch_cpu_time_s": time.process_time() - cpu_start,
            **means,
        }

    def train_step(self, batch: Any, epoch: int, i: int, it: int) -> dict[str, float]:
        """One iteration on ``batch`` (batch ``i`` of ``epoch``, global iteration ``it``).

        Sets lr / weight decay, runs the task's forward and loss, checks the loss is finite,
        back-propagates, clips, drops frozen last-layer gradients, steps the optimiser and
        calls :meth:`Task.after_optimizer_step`. Returns the step's metrics (``loss``, ``lr``,
        ``wd`` and the task's).

        Raises:
            NonFiniteLossError: the loss is NaN or Inf (nothing was updated).
        """
        cfg = self.config
        lr, wd = float(self.lr_schedule[it]), float(self.wd_schedule[it])
        for g, group in enumerate(self.optimizer.param_groups):
            group["lr"] = lr
            if g == 0:  # only the regularised group is decayed
                group["weight_decay"] = wd
        ctx = StepContext(
            epoch=epoch,
            it=it,
            batch_index=i,
            niter_per_ep=self.niter_per_ep,
            epochs=cfg.epochs,
            student=self.student,
            device=self.device,
            lr=lr,
            wd=wd,
        )
        with autocast_context(cfg.precision, self.device):
            loss, metrics = self.task.training_step(batch, ctx)
        loss_value = du.all_reduce_mean(loss.detach().float())
        if not math.isfinite(loss_value):
            where = f"step {it} (epoch {epoch + 1}/{cfg.epochs}, batch {i + 1}/{self.niter_per_ep})"
            kept = (
                f"the last good checkpoint, {str(self.checkpoint_path)!r}, was left as it was"
                if self.checkpoint_path.is_file()
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLossError(
                f"training stopped: the loss is {loss_value} at {where}; {kept}. Lower --lr, "
                "lengthen --warmup_epochs, keep --clip_grad on, or check the data for NaNs."
            )
        self.optimizer.zero_grad(set_to_none=True)
        student = self.task.student
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.clip_grad:
            clip_gradients(student, cfg.clip_grad, return_norms=False)
        cancel_gradients_last_layer(epoch, student, cfg.freeze_last_layer)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            metrics = {**metrics, **self.task.after_optimizer_step(ctx)}
        return {"loss": loss_value, "lr": lr, "wd": wd, **{k: float(v) for k, v in metrics.items()}}

    def _plot(self) -> None:
        from dinolab.train.plots import plot_run

        try:
            plot_run(self.output_dir, title=self.task.name)
        except Exception as err:  # a plotting failure must never lose a finished run
            tqdm.write(f"warning: could not write the plots to {self.output_dir}: {err!r}")
