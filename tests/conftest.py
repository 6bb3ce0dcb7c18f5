"""Test-session settings shared by every test module."""

import os

import pytest
from hypothesis import settings

# Tiny tensors on a 2-core machine: extra intra-op threads only add contention (measured ~10x
# slower tests with the default thread count while the other core is busy).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# CI replays the same examples every run (a red CI must mean a regression, not a new draw);
# local runs keep exploring new random examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Also when torch was imported before this file set the variable (e.g. by a plugin)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
