"""Checks used inside the exercises' test cells, with feedback a learner can act on.

Each check raises ``AssertionError`` with a message that names what was checked, what was
expected and what the learner's code gave; it returns None when the check holds. The
grader shows that message as the feedback of a failed check, and nbgrader's autograder
scores the cell 0.

Examples:
    >>> import torch
    >>> check_close(torch.tensor(1.0), torch.tensor(1.0), "a scalar")
    >>> check_close(torch.tensor(1.5), torch.tensor(1.0), "my_loss(x)")
    Traceback (most recent call last):
        ...
    AssertionError: my_loss(x): expected 1, your code gave 1.5 (difference 0.5, allowed 0.00011)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "check",
    "check_close",
    "check_shape",
    "check_raises",
    "check_no_grad",
    "check_choice",
    "answer_digest",
]


def _fail(what: str, message: str, hint: str = "") -> None:
    text = f"{what}: {message}" if what else message
    if hint:
        text += f"\nHint: {hint}"
    raise AssertionError(text)


def _describe(x: Any) -> str:
    """Short description of a value for messages: type, shape, dtype."""
    if isinstance(x, torch.Tensor):
        return f"a torch.Tensor of shape {tuple(x.shape)} ({x.dtype})"
    if isinstance(x, np.ndarray):
        return f"a NumPy array of shape {x.shape} ({x.dtype})"
    return f"a {type(x).__name__}"


def _as_float64(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(what, f"expected numbers, your code gave {_describe(x)}: {x!r:.200}")
        raise  # unreachable: _fail always raises


def check(condition: bool, message: str, hint: str = "") -> None:
    """Fail with ``message`` (and an optional hint) unless ``condition`` holds."""
    if not condition:
        _fail("", message, hint)


def check_shape(got: Any, shape: Sequence[int], what: str, hint: str = "") -> None:
    """The learner's value is a tensor (or array) of exactly ``shape``."""
    if got is None:
        _fail(what, f"expected shape {tuple(shape)}, your code returned None "
                    "(is a `return` missing?)", hint)
    if not hasattr(got, "shape"):
        _fail(what, f"expected a tensor of shape {tuple(shape)}, your code gave {_describe(got)}",
              hint)
    if tuple(got.shape) != tuple(shape):
        _fail(what, f"expected shape {tuple(shape)}, your code gave shape {tuple(got.shape)}",
              hint)


def check_close(
    got: Any,
    expected: Any,
    what: str,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hint: str = "",
) -> None:
    """``got`` equals the reference ``expected`` within ``atol + rtol * |expected|``.

    Tensors must come back as tensors of the same shape (a loss is a 0-d tensor, so that
    ``backward()`` works); plain numbers and NumPy arrays are compared by value.

    Args:
        got: the learner's result.
        expected: the reference result (from ``dinolab`` or an exact formula).
        what: what was computed, e.g. ``"simclr_loss(z1, z2, temperature=0.5)"``.
        atol: absolute tolerance.
        rtol: relative tolerance.
        hint: a line of advice shown with the failure.
    """
    if got is None:
        _fail(what, f"your code returned None; expected {_describe(expected)} "
                    "(is a `return` missing?)", hint)
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            _fail(what, f"expected {_describe(expected)}, your code returned {_describe(got)} "
                        "(keep the result a tensor so gradients can flow)", hint)
        if tuple(got.shape) != tuple(expected.shape):
            _fail(what, f"expected shape {tuple(expected.shape)}, your code gave shape "
                        f"{tuple(got.shape)}", hint)
    g = _as_float64(got, what)
    e = _as_float64(expected, what)
    if g.shape != e.shape:
        _fail(what, f"expected shape {e.shape}, your code gave shape {g.shape}", hint)
    bad_nan = np.isnan(g) & ~np.isnan(e)
    if bad_nan.any():
        _fail(what, f"your code gave NaN in {int(bad_nan.sum())} of {g.size} values where a "
                    "number was expected (a log of 0, or 0/0?)", hint)
    diff = np.abs(g - e)
    diff = np.where(np.isnan(g) & np.isnan(e), 0.0, diff)
    diff = np.where(np.isposinf(g) & np.isposinf(e) | np.isneginf(g) & np.isneginf(e), 0.0, diff)
    allowed = atol + rtol * np.abs(e)
    over = diff > allowed
    if not over.any():
        return
    if g.ndim == 0:
        _fail(what, f"expected {float(e):.6g}, your code gave {float(g):.6g} "
                    f"(difference {float(diff):.2g}, allowed {float(allowed):.2g})", hint)
    worst = np.unravel_index(int(np.argmax(np.where(over, diff - allowed, -np.inf))), g.shape)
    _fail(
        what,
        f"{int(over.sum())} of {g.size} values differ from the reference; at index "
        f"{tuple(int(i) for i in worst)} expected {e[worst]:.6g}, your code gave {g[worst]:.6g} "
        f"(largest difference {float(diff.max()):.2g}; allowed atol={atol:g}, rtol={rtol:g})",
        hint,
    )


def check_raises(
    fn: Callable[[], Any], exception: type[BaseException], what: str, hint: str = ""
) -> None:
    """Calling ``fn()`` raises ``exception`` (e.g. ValueError for bad input)."""
    try:
        fn()
    except exception:
        return
    except Exception as exc:
        _fail(what, f"expected {exception.__name__}, your code raised "
                    f"{type(exc).__name__}: {exc}", hint)
    _fail(what, f"expected {exception.__name__}, your code raised nothing", hint)


def check_no_grad(tensor: torch.Tensor, what: str, hint: str = "") -> None:
    """No gradient reached ``tensor`` (a teacher output, a stop-gradient target)."""
    if tensor.grad is not None and bool(tensor.grad.abs().sum() > 0):
        _fail(what, "expected no gradient to reach it, but it received one "
                    f"(gradient norm {float(tensor.grad.norm()):.3g})", hint)


def answer_digest(question: str, answer: str) -> str:
    """Salted digest of a quiz answer, so the key in a test cell does not read as the answer."""
    text = f"dinolab-quiz:{question}:{str(answer).strip().lower()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_choice(
    answers: Any, question: str, digest: str, choices: str = "abcd", hint: str = ""
) -> None:
    """The learner's answer to a multiple-choice ``question`` is the right letter.

    Args:
        answers: the learner's ``{"q1": "b", ...}`` dictionary.
        question: the key of this question, e.g. ``"q1"``.
        digest: :func:`answer_digest` of the right letter.
        choices: the valid letters.
        hint: what to re-read when the answer is wrong.
    """
    if not isinstance(answers, dict):
        _fail("quiz", f"expected a dict like {{'q1': 'a', ...}}, your code gave "
                      f"{_describe(answers)}")
    if question not in answers:
        _fail(question, f"no answer given; expected one of {', '.join(choices)} under the key "
                        f"{question!r}")
    answer = str(answers[question]).strip().lower()
    if len(answer) != 1 or answer not in choices:
        _fail(question, f"expected one letter among {', '.join(choices)}, got "
                        f"{answers[question]!r}")
    if answer_digest(question, answer) != digest:
        _fail(question, f"{answer!r} is not the right answer", hint)
