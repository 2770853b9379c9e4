"""Shared pytest set-up: deterministic seeds and a small thread count on the 2-core CI machine."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after it: training tests use it (``pytestmark =
    pytest.mark.usefixtures("one_thread")``), since two threads per process thrash when several
    test processes share the 2-core CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
