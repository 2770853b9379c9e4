"""The three training recipes; each is a config dataclass, a Task and a ``train_*`` function.

* ``dino`` (:mod:`~dinolab.train.recipes.dino`): self-distillation with an EMA teacher;
* ``kd`` (:mod:`~dinolab.train.recipes.kd`): TeacherNet -> StudentNet knowledge distillation
  with a label-only baseline and EMA students;
* ``distill`` (:mod:`~dinolab.train.recipes.distill`): a small ViT distilled from a frozen
  teacher with DINO + iBOT + KoLeo + CLS-token + SPD losses.

Every field of a config is a command-line flag of ``dinolab train <recipe>`` with the same
name (see :mod:`dinolab.cli`).
"""

from dinolab.train.recipes.common import SSLConfig, SSLData, build_ssl_data, knn_evaluate
from dinolab.train.recipes.dino import DINOConfig, DINOTask, build_student, train_dino
from dinolab.train.recipes.distill import DistillConfig, DistillTask, train_distill
from dinolab.train.recipes.kd import KDConfig, KDTask, SupervisedTask, train_kd

#: recipe name -> (config class, train function), as the CLI's ``train`` sub-commands.
RECIPES = {
    "dino": (DINOConfig, train_dino),
    "kd": (KDConfig, train_kd),
    "distill": (DistillConfig, train_distill),
}

__all__ = [
    "RECIPES",
    "DINOConfig",
    "DINOTask",
    "DistillConfig",
    "DistillTask",
    "KDConfig",
    "KDTask",
    "SSLConfig",
    "SSLData",
    "SupervisedTask",
    "build_ssl_data",
    "build_student",
    "knn_evaluate",
    "train_dino",
    "train_distill",
    "train_kd",
]
