"""dinolab: DINO-style self-supervised learning and knowledge distillation, to learn and to use.

Subpackages (imported on first use, so ``import dinolab`` stays cheap):

* :mod:`dinolab.schedules` and :mod:`dinolab.ema`: cosine schedules and the EMA teacher update;
* :mod:`dinolab.models`: ViT and ResNet backbones, the DINO head, multi-crop and student-teacher
  wrappers, the knowledge-distillation networks, official checkpoint loading;
* :mod:`dinolab.data`: multi-crop augmentation, iBOT masking, bundled and torchvision data sets;
* :mod:`dinolab.losses`: DINO, iBOT, KoLeo, CLS-token, SPD Log-Euclidean, KD, SimCLR, MoCo, BYOL;
* :mod:`dinolab.eval`: k-NN and linear-probe evaluation, feature extraction, collapse monitors;
* :mod:`dinolab.train`: the training engine and its recipes; :mod:`dinolab.cli`: the command line;
* :mod:`dinolab.widgets`: the lessons' interactive explorers (a figure redrawn by sliders).
"""

from __future__ import annotations

import importlib
from typing import Any

# The one place the version is written: pyproject.toml reads it ([tool.setuptools.dynamic]).
__version__ = "0.1.0"

_SUBMODULES = {
    "schedules", "ema", "models", "data", "losses", "eval", "train", "grading", "cli", "widgets",
}

__all__ = sorted(_SUBMODULES | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"dinolab.{name}")
    raise AttributeError(f"module 'dinolab' has no attribute {name!r}")
