"""dinolab.losses.gram: DINOv3's Gram anchoring against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dinolab.losses import GramLoss, gram_matrix

# One image, two patches. Student: [1, 0] and [-1, 1] (cosine -1/sqrt 2); teacher, of another
# width: [3, 4, 0] and [4, 3, 0] (cosine 0.96; dot products 25, 25, 24).
STUDENT = torch.tensor([[[1.0, 0.0], [-1.0, 1.0]]])
TEACHER = torch.tensor([[[3.0, 4.0, 0.0], [4.0, 3.0, 0.0]]])
COS = -1 / math.sqrt(2)


def test_default_removes_negative_similarities_on_both_sides():
    # Student Gram [[1, -0.707], [-0.707, 1]] -> [[1, 0], [0, 1]]; teacher [[1, .96], [.96, 1]].
    assert GramLoss()(STUDENT, TEACHER).item() == pytest.approx(2 * 0.96**2 / 4)


def test_without_removal_and_with_only_the_teachers():
    keep = (COS - 0.96) ** 2 * 2 / 4
    assert GramLoss(remove_neg=False)(STUDENT, TEACHER).item() == pytest.approx(keep)
    only_teacher = GramLoss(remove_neg=False, remove_only_teacher_neg=True)
    # The teacher has no negative similarity here: the same value.
    assert only_teacher(STUDENT, TEACHER).item() == pytest.approx(keep)
    # Swapped roles: the teacher's -0.707 becomes 0, the student's 0.96 stays.
    assert only_teacher(TEACHER, STUDENT).item() == pytest.approx(2 * 0.96**2 / 4)
    # ... and the student's own negatives are kept (the official behaviour).
    assert only_teacher(STUDENT, STUDENT.neg().flip(-1)).item() > 0


def test_without_normalisation_the_raw_dot_products_are_compared():
    loss = GramLoss(apply_norm=False, remove_neg=False)(STUDENT, TEACHER)
    # Student [[1, -1], [-1, 2]], teacher [[25, 24], [24, 25]].
    assert loss.item() == pytest.approx(((1 - 25) ** 2 + (2 - 25) ** 2 + 2 * (-1 - 24) ** 2) / 4)


def test_image_level_and_batch_level():
    # Two images of one patch each: alone, each Gram is [[1]] on both sides; over the batch the
    # student's patches are orthogonal, the teacher's identical.
    student = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    assert GramLoss()(student, teacher).item() == 0.0
    assert GramLoss(img_level=False)(student, teacher).item() == pytest.approx(2 / 4)
    assert GramLoss()(student, teacher, img_level=False).item() == pytest.approx(2 / 4)
    assert GramLoss(img_level=False)(student.flatten(0, 1), teacher.flatten(0, 1)).item() == (
        pytest.approx(0.5))


def test_gradient_reaches_the_student_only_through_kept_similarities():
    student = STUDENT.clone().requires_grad_(True)
    GramLoss()(student, TEACHER).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    # The only pair is negative for the student and clipped: no gradient (the diagonal, 1 on
    # both sides, leaves only rounding).
    assert student.grad.abs().max() < 1e-6
    student.grad = None
    GramLoss(remove_neg=False)(student, TEACHER).backward()
    assert student.grad.abs().max() > 0.1


def test_gram_matrix_is_the_cosine_matrix():
    g = gram_matrix(STUDENT)
    torch.testing.assert_close(g, torch.tensor([[[1.0, COS], [COS, 1.0]]]))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="exclude each other"):
        GramLoss(remove_neg=True, remove_only_teacher_neg=True)
    with pytest.raises(ValueError, match=r"img_level=True output_feats must be \[B, N, D\]"):
        GramLoss()(STUDENT[0], TEACHER)
    with pytest.raises(ValueError, match=r"student tokens \(1, 2\) and teacher tokens \(1, 3\)"):
        GramLoss()(STUDENT, torch.randn(1, 3, 5))
