"""TensorBoard logging of a training run, as an :class:`~dinolab.train.engine.Engine` callback.

The engine writes every step's metrics to ``log_steps.jsonl`` and every epoch's record to
``log_epochs.jsonl`` whatever happens; :class:`TensorBoardLogger` mirrors the same numbers into
TensorBoard event files beside them, for those who watch runs there (``dinolab train ...
--tensorboard``, then ``tensorboard --logdir runs``). It uses the callback hook the engine
already has (``callback(engine, record)`` after every step), so the engine knows nothing of it:

* ``train/<metric>``: each step's record (loss, lr, wd, the task's metrics), at step ``it``;
* ``epoch/<metric>``: each epoch's record (k-NN accuracy, epoch means, timings), at the global
  step that ends the epoch, so both share one x axis. An epoch's record exists only once the
  engine has evaluated it; the callback writes it at the next step, and :meth:`close` writes the
  last one.

Only the main process writes (rank 0, like the JSON-lines logs). Each engine's events go to
``<output_dir>/tensorboard`` (the ``kd`` recipe's phases, one engine each, get one folder each,
which TensorBoard shows as separate runs). Needs the ``tensorboard`` package (``pip install
'dinolab[tensorboard]'``).

Examples:
    >>> logger = TensorBoardLogger()                                        # doctest: +SKIP
    >>> try:                                                                # doctest: +SKIP
    ...     train_dino(DINOConfig(output_dir="runs/dino"), callbacks=[logger])
    ... finally:
    ...     logger.close()
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardLogger", "TENSORBOARD_DIR"]

#: Sub-folder of a run's output directory that holds its event files.
TENSORBOARD_DIR = "tensorboard"
# Bookkeeping in a record, not metrics.
_NOT_METRICS = ("epoch", "it")


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's module imports the tensorboard package
        raise ImportError(
            "--tensorboard needs the tensorboard package, which is not installed: pip install "
            "'dinolab[tensorboard]' (or pip install tensorboard)"
        ) from err
    return SummaryWriter


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record (NaN losses are logged as null in JSON; skipped here)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k not in _NOT_METRICS
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


class TensorBoardLogger:
    """Engine callback: every step's and epoch's metrics as TensorBoard scalars.

    Args:
        log_dir: folder for the event files; None (default): ``<output_dir>/tensorboard`` of
            each engine that calls it.

    Call :meth:`close` after training (the CLI does) to write the last epoch's record and
    flush the files; the logger is also a context manager that closes on exit.

    Raises:
        ImportError: the ``tensorboard`` package is not installed (raised here, before a run
            starts, rather than after its first step).
    """

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self._writer_class = _summary_writer()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        # Per engine output folder: its writer, the engine, and how many epochs are written.
        self._writers: dict[Path, Any] = {}
        self._engines: dict[Path, Any] = {}
        self._epochs_done: dict[Path, int] = {}

    def folder(self, engine: Any) -> Path:
        """Where ``engine``'s events go."""
        return self.log_dir if self.log_dir is not None else engine.output_dir / TENSORBOARD_DIR

    def __call__(self, engine: Any, record: dict[str, Any]) -> None:
        """Write one step's record (``engine.history``'s new epochs first)."""
        if not engine.is_main:
            return
        key = Path(engine.output_dir)
        if key not in self._writers:
            self._writers[key] = self._writer_class(log_dir=str(self.folder(engine)))
            self._engines[key] = engine
            # A resumed run's earlier epochs were written by the run that trained them.
            self._epochs_done[key] = len(engine.history)
        self._write_epochs(key)
        writer = self._writers[key]
        step = int(record["it"])
        for name, value in _scalars(record).items():
            writer.add_scalar(f"train/{name}", value, step)

    def _write_epochs(self, key: Path) -> None:
        engine, writer = self._engines[key], self._writers[key]
        history = engine.history
        for record in history[self._epochs_done[key]:]:
            step = int(record.get("it", 0))
            for name, value in _scalars(record).items():
                writer.add_scalar(f"epoch/{name}", value, step)
        self._epochs_done[key] = len(history)

    def close(self) -> None:
        """Write the epochs not yet written, flush and close every event file."""
        for key, writer in self._writers.items():
            self._write_epochs(key)
            writer.close()
        self._writers.clear()
        self._engines.clear()
        self._epochs_done.clear()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
