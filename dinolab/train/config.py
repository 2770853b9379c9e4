"""The settings every recipe shares (:class:`TrainConfig`), one command-line flag each.

Names and meanings follow official DINO's flags. :mod:`dinolab.cli` builds the parser from the
fields' ``help`` metadata; recipes subclass :class:`TrainConfig` with their own fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self

__all__ = ["TrainConfig"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Settings every recipe shares; names and meanings follow official DINO's flags.

    Recipes subclass it with their own fields and defaults. Each field's ``help`` metadata is
    the command line's help text (:mod:`dinolab.cli` builds the parser from these fields).
    """

    output_dir: str = field(
        default="runs/run",
        metadata=_help(
            "Directory for checkpoint.pth, log_steps.jsonl, log_epochs.jsonl and the PNG plots. "
            "Use a new one per run; --resume continues the run found there."
        ),
    )
    epochs: int = field(
        default=10,
        metadata=_help(
            "Number of training epochs. Schedules (lr, weight decay, momentum) span all of them, "
            "so changing it changes every step, not only the length."
        ),
    )
    batch_size_per_gpu: int = field(
        default=64,
        metadata=_help(
            "Images per process and step (the global batch is this times the number of "
            "processes). Lower it if memory runs out; the lr is scaled with the global batch."
        ),
    )
    lr: float = field(
        default=5e-4,
        metadata=_help(
            "Peak learning rate at the end of warm-up, for a global batch of 256: the rate used "
            "is lr * global_batch / 256 (linear scaling rule) when the recipe scales it."
        ),
    )
    min_lr: float = field(
        default=1e-6,
        metadata=_help(
            "Learning rate the cosine schedule decays towards by the last step. Not scaled "
            "with the batch (as in official DINO): keep it below the scaled peak lr, or the lr "
            "rises after warm-up."
        ),
    )
    warmup_epochs: int = field(
        default=2,
        metadata=_help(
            "Epochs of linear learning-rate warm-up from 0 (official DINO: 10 of 100). Raise it "
            "if the loss spikes early."
        ),
    )
    optimizer: str = field(
        default="adamw",
        metadata={
            "help": "Optimiser: adamw (DINO's choice for ViTs) or sgd (momentum 0.9).",
            "choices": ("adamw", "sgd"),
        },
    )
    weight_decay: float = field(
        default=0.04,
        metadata=_help("Initial weight decay; never applied to biases or 1-D parameters (norms)."),
    )
    weight_decay_end: float = field(
        default=0.4,
        metadata=_help("Final weight decay of the cosine schedule (official DINO: 0.04 -> 0.4)."),
    )
    clip_grad: float = field(
        default=3.0,
        metadata=_help(
            "Maximal L2 norm of each parameter's gradient (per-parameter clipping as official "
            "DINO); 0 disables clipping."
        ),
    )
    freeze_last_layer: int = field(
        default=1,
        metadata=_help(
            "Epochs during which the head's last layer receives no update; freezing it "
            "early helps training; raise it if the loss does not go down."
        ),
    )
    precision: str = field(
        default="fp32",
        metadata={
            "help": "Numeric precision: fp32, bf16 (autocast, CPUs and GPUs that support it) or "
            "fp16 (CUDA only, autocast with a gradient scaler). bf16 pays on a CPU with native "
            "bf16 (lscpu lists avx512_bf16 or amx_bf16) when large matrix products dominate "
            "the step: on a 2-core AMD EPYC with avx512_bf16, ViT-S/16 at 224 px (forward and "
            "backward) ran about 2x faster and a vit_course step (width 128) about 1.4x, but a "
            "step of the default vit_micro (width 96) about 10 percent slower "
            "(benchmarks/bench_precision.py measures it on your machine). Without native bf16 "
            "it is emulated and slower. Losses agree with fp32 to about 1e-3, not bit for bit.",
            "choices": ("fp32", "bf16", "fp16"),
        },
    )
    sync_bn: bool = field(
        default=True,
        metadata=_help(
            "Under torchrun on GPUs, turn the trained models' BatchNorm layers into "
            "SyncBatchNorm, so they normalise over the global batch as official DINO does. "
            "PyTorch has no SyncBatchNorm on CPUs: there (gloo) each process normalises its "
            "own part of the batch. Models without BatchNorm are unaffected."
        ),
    )
    seed: int = field(
        default=0,
        metadata=_help(
            "Random seed for initialisation, data order and augmentations; a run is repeatable "
            "for a given seed and number of processes."
        ),
    )
    num_workers: int = field(
        default=0,
        metadata=_help(
            "Data-loader worker processes per training process. 0 loads in the main process "
            "(best on a 2-core laptop); raise it on machines with spare cores."
        ),
    )
    device: str = field(
        default="auto",
        metadata=_help(
            "cpu, cuda, mps (Apple GPUs, one process; untested here) or auto (CUDA when "
            "available, never MPS). Under torchrun each process uses GPU LOCAL_RANK."
        ),
    )
    saveckp_freq: int = field(
        default=0,
        metadata=_help(
            "Also keep checkpoint{epoch:04}.pth every this many epochs (0: only the latest "
            "checkpoint.pth, which is rewritten after every epoch)."
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_help(
            "Continue the run in --output_dir from its checkpoint.pth (it must exist). Without "
            "it, a run refuses to overwrite an existing checkpoint."
        ),
    )
    progress: bool = field(
        default=True,
        metadata=_help("Show tqdm progress bars (--no-progress to hide them, e.g. in logs)."),
    )
    plots: bool = field(
        default=True, metadata=_help("Write the PNG plots into --output_dir at the end of the run.")
    )

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Self:
        """The configuration a checkpoint's ``"args"`` (or ``config.json``) describes.

        Keys this class does not know (another recipe's, a newer version's) are dropped and
        JSON lists become tuples; missing keys keep their defaults.

        Examples:
            >>> TrainConfig.from_args({"epochs": 3, "unknown": 1}).epochs
            3
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()
                      if k in names})
