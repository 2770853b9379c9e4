"""Losses of the course, one module per idea.

* :mod:`~dinolab.losses.dino`: :class:`DINOLoss` (official DINO, optional DINOv2 Sinkhorn-Knopp)
  and :func:`sinkhorn_knopp`;
* :mod:`~dinolab.losses.ibot`: :class:`iBOTPatchLoss`, DINOv2's masked-patch loss;
* :mod:`~dinolab.losses.koleo`: :class:`KoLeoLoss`, DINOv2's uniformity regulariser;
* :mod:`~dinolab.losses.cls_token`: :class:`CLSTokenLoss`, CLS-feature distillation;
* :mod:`~dinolab.losses.spd`: the Log-Euclidean SPD loss (:func:`spd_matrix`, :func:`spd_log`,
  :func:`log_euclidean_distance`, :class:`SPDLogEuclideanLoss`);
* :mod:`~dinolab.losses.gram`: DINOv3's Gram anchoring, :class:`GramLoss` and
  :func:`gram_matrix`;
* :mod:`~dinolab.losses.kd`: Hinton distillation, :class:`DistillKL` and :func:`kd_loss`;
* :mod:`~dinolab.losses.contrastive`: :func:`simclr_loss`, :class:`MoCoQueue`,
  :func:`moco_loss`, :class:`MoCo`, :func:`byol_loss`.
"""

from __future__ import annotations

from dinolab.losses.cls_token import CLSTokenLoss
from dinolab.losses.contrastive import MoCo, MoCoQueue, byol_loss, moco_loss, simclr_loss
from dinolab.losses.dino import DINOLoss, sinkhorn_knopp
from dinolab.losses.gram import GramLoss, gram_matrix
from dinolab.losses.ibot import iBOTPatchLoss
from dinolab.losses.kd import DistillKL, kd_loss
from dinolab.losses.koleo import KoLeoLoss
from dinolab.losses.spd import (
    SPDLogEuclideanLoss,
    log_euclidean_distance,
    spd_log,
    spd_matrix,
)

__all__ = [
    "CLSTokenLoss",
    "DINOLoss",
    "DistillKL",
    "GramLoss",
    "KoLeoLoss",
    "MoCo",
    "MoCoQueue",
    "SPDLogEuclideanLoss",
    "byol_loss",
    "gram_matrix",
    "iBOTPatchLoss",
    "kd_loss",
    "log_euclidean_distance",
    "moco_loss",
    "simclr_loss",
    "sinkhorn_knopp",
    "spd_log",
    "spd_matrix",
]
