"""Test-session settings shared by every test module."""

import os

# Tiny tensors on a 2-core machine: extra intra-op threads only add contention (measured ~10x
# slower tests with the default thread count while the other core is busy).
os.environ.setdefault("OMP_NUM_THREADS", "1")
