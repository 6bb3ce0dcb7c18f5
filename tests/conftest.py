"""Test-session settings shared by every test module."""

import os

from hypothesis import settings

# Tiny tensors on a 2-core machine: extra intra-op threads only add contention (measured ~10x
# slower tests with the default thread count while the other core is busy).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# CI replays the same examples every run (a red CI must mean a regression, not a new draw);
# local runs keep exploring new random examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
