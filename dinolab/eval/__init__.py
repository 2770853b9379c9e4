"""Evaluation of frozen features and health checks of a training run.

* :mod:`~dinolab.eval.features`: :func:`extract_features` runs a backbone over a loader
  (eval mode, no gradients, previous modes restored);
* :mod:`~dinolab.eval.knn`: official DINO's weighted k-NN classifier, :func:`knn_classify`;
* :mod:`~dinolab.eval.linear`: a linear probe on frozen features, :func:`train_linear_probe`;
* :mod:`~dinolab.eval.monitors`: collapse monitors (teacher entropy, KL to the student and to
  the uniform distribution), feature spread and student-teacher parameter divergence;
* :mod:`~dinolab.eval.attention`: the DINO paper's attention metric (CLS attention thresholded
  to 60% of its mass, Jaccard with object masks, :func:`attention_jaccard`), its centre-prior
  baseline, and DINOv2-style PCA colours of patch features (:func:`pca_colors`).

Examples:
    >>> import torch
    >>> from dinolab.eval import knn_classify
    >>> train = torch.eye(3).repeat(4, 1)
    >>> knn_classify(train, torch.arange(3).repeat(4), torch.eye(3), num_classes=3, k=4)
    tensor([0, 1, 2])
"""

from __future__ import annotations

from dinolab.eval.attention import (
    AttentionJaccard,
    attention_jaccard,
    centre_prior,
    centre_prior_jaccard,
    cls_attention,
    cls_to_patch_attention,
    jaccard,
    map_jaccard,
    map_object_mass,
    patch_features,
    pca_colors,
    threshold_attention,
    upsample_patches,
)
from dinolab.eval.features import extract_features
from dinolab.eval.knn import knn_accuracy, knn_classify, knn_votes
from dinolab.eval.linear import LinearClassifier, LinearProbeResult, train_linear_probe
from dinolab.eval.monitors import (
    CosineSpread,
    collapse_metrics,
    cosine_spread,
    feature_std,
    kl_teacher_student,
    kl_to_uniform,
    parameter_divergence,
    teacher_entropy,
)

__all__ = [
    "extract_features",
    "knn_votes",
    "knn_classify",
    "knn_accuracy",
    "LinearClassifier",
    "LinearProbeResult",
    "train_linear_probe",
    "teacher_entropy",
    "kl_to_uniform",
    "kl_teacher_student",
    "collapse_metrics",
    "parameter_divergence",
    "CosineSpread",
    "cosine_spread",
    "feature_std",
    "AttentionJaccard",
    "attention_jaccard",
    "centre_prior",
    "centre_prior_jaccard",
    "cls_attention",
    "cls_to_patch_attention",
    "jaccard",
    "map_jaccard",
    "map_object_mass",
    "patch_features",
    "pca_colors",
    "threshold_attention",
    "upsample_patches",
]
