# Lets `pytest` grade this folder: each autograded check of the notebook becomes a test item.
from dinolab.grading.pytest_plugin import pytest_collect_file  # noqa: F401
