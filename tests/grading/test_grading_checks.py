"""dinolab.grading.checks: the checks of the exercises' test cells and their messages."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dinolab.grading.checks import (
    answer_digest,
    check,
    check_choice,
    check_close,
    check_no_grad,
    check_raises,
    check_shape,
)


def test_check_close_accepts_values_within_tolerance() -> None:
    check_close(torch.tensor(1.0 + 5e-6), torch.tensor(1.0), "loss")  # |d| 5e-6 < 1e-5 + 1e-4
    check_close(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-6]), "array")
    check_close(0.5, 0.5, "a float")
    check_close(torch.tensor([float("nan")]), torch.tensor([float("nan")]), "NaN where expected")


def test_check_close_scalar_message_names_expected_and_given() -> None:
    with pytest.raises(AssertionError) as err:
        check_close(torch.tensor(2.5), torch.tensor(2.0), "my_loss(x)", hint="look at the mean")
    message = str(err.value)
    assert message.startswith("my_loss(x): expected 2, your code gave 2.5")
    assert "difference 0.5" in message
    assert message.endswith("Hint: look at the mean")


def test_check_close_tensor_message_points_at_the_worst_entry() -> None:
    expected = torch.zeros(2, 3)
    got = expected.clone()
    got[1, 2] = 0.75
    with pytest.raises(AssertionError, match=r"1 of 6 values differ.*index \(1, 2\) expected 0, "
                                             r"your code gave 0.75"):
        check_close(got, expected, "probs")


@pytest.mark.parametrize(
    ("got", "pattern"),
    [
        (None, "your code returned None"),
        (1.0, "expected a torch.Tensor of shape \\(\\) .*returned a float"),
        (torch.zeros(3), "expected shape \\(\\), your code gave shape \\(3,\\)"),
        (torch.tensor(float("nan")), "NaN in 1 of 1 values"),
    ],
)
def test_check_close_explains_wrong_kinds_of_result(got: object, pattern: str) -> None:
    with pytest.raises(AssertionError, match=pattern):
        check_close(got, torch.tensor(0.0), "loss")


def test_check_shape_and_check() -> None:
    check_shape(torch.zeros(2, 3), (2, 3), "x")
    with pytest.raises(AssertionError, match="expected shape \\(3, 2\\), your code gave shape"):
        check_shape(torch.zeros(2, 3), (3, 2), "x")
    with pytest.raises(AssertionError, match="returned None"):
        check_shape(None, (1,), "x")
    check(True, "unused")
    with pytest.raises(AssertionError, match="^broken\nHint: fix it$"):
        check(False, "broken", hint="fix it")


def test_check_raises() -> None:
    def bad() -> None:
        raise ValueError("no")

    check_raises(bad, ValueError, "f")
    with pytest.raises(AssertionError, match="expected ValueError, your code raised nothing"):
        check_raises(lambda: None, ValueError, "f")
    with pytest.raises(AssertionError, match="expected KeyError, your code raised ValueError: no"):
        check_raises(bad, KeyError, "f")


def test_check_no_grad() -> None:
    teacher = torch.zeros(3, requires_grad=True)
    check_no_grad(teacher, "teacher")              # never used: no gradient
    (teacher * 2).sum().backward()
    with pytest.raises(AssertionError, match="expected no gradient to reach it"):
        check_no_grad(teacher, "teacher")


def test_answer_digest_is_a_salted_sha256_prefix() -> None:
    expected = hashlib.sha256(b"dinolab-quiz:q3:b").hexdigest()[:16]  # written out independently
    assert answer_digest("q3", "b") == expected
    assert answer_digest("q3", " B ") == expected                       # case and spaces ignored
    assert answer_digest("q4", "b") != expected                         # salted by question


def test_check_choice_feedback() -> None:
    key = answer_digest("q1", "c")
    check_choice({"q1": "C"}, "q1", key)
    with pytest.raises(AssertionError, match="q1: 'a' is not the right answer\nHint: reread"):
        check_choice({"q1": "a"}, "q1", key, hint="reread")
    with pytest.raises(AssertionError, match="no answer given"):
        check_choice({}, "q1", key)
    with pytest.raises(AssertionError, match="expected one letter among a, b, c, d, got 'e'"):
        check_choice({"q1": "e"}, "q1", key)
    with pytest.raises(AssertionError, match="expected a dict"):
        check_choice(["c"], "q1", key)
