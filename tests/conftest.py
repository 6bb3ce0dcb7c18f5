"""Test-session settings shared by every test module."""

import importlib.util
import os
import sys

import pytest
from hypothesis import settings

# Tiny tensors on a 2-core machine: extra intra-op threads only add contention (measured ~10x
# slower tests with the default thread count while the other core is busy).
os.environ.setdefault("OMP_NUM_THREADS", "1")



def _hide_a_torchvision_that_cannot_load() -> None:
    """Make an installed torchvision that fails to import look absent to transformers and lightning.

    curvlinops (the test-only Hessian oracle) pulls torchvision in through backpack. Next to a
    CPU-only torch, PyPI's torchvision is a CUDA build whose operators cannot load, and
    transformers and torchmetrics import it whenever it is installed. No test uses it, so an
    unloadable one is hidden (``importlib.util.find_spec`` then answers None, as for a package
    that is not there). A torchvision from the same wheel index as torch loads and stays.
    """
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]


_hide_a_torchvision_that_cannot_load()

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
