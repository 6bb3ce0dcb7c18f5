"""The documented range of every compile and verify option, checked in one place.

The API (``sharpc.compile``, ``Measure.verify``) and the CLI share these checks, so an
out-of-range value is always a one-line :class:`SharpcError` and never reaches NumPy or
SymPy as ``inf``, a negative seed, or a sample count whose arrays do not fit in memory.
"""

from __future__ import annotations

import math
import numbers

from .errors import SharpcError

#: Largest number of eigenvalues (perturbed parameters) a target may name.
MAX_D = 10**12
#: |l_i| <= bound: beyond this range the universality nodes 1/(2 bound) lose all precision.
BOUND_RANGE = (1e-6, 1e6)
#: Half-width of the hypercube for determinant measures (det_sampling="hypercube").
HALF_WIDTH_RANGE = (1e-6, 1e6)
#: The stated lower bound L on the spectrum for the Lebesgue determinant rows (importance sampler N(0, I/L)).
LOWER_BOUND_RANGE = (1e-6, 1e6)
#: Monte Carlo samples per case: at least 2 for a variance, at most what 5 s and 1 GiB allow.
SAMPLES_RANGE = (2, 1_000_000)
#: Seeds NumPy and torch both accept.
SEED_RANGE = (0, 2**63 - 1)
#: Largest --degree (approximation order), --budget (samples per step) and --size (assumed d).
APPROXIMATION_RANGE = {"degree": 64, "budget": 10**9, "size": MAX_D}


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else a SharpcError naming the option and its range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise SharpcError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_float(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a finite float in [low, high], else a SharpcError naming the option and its range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SharpcError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not (math.isfinite(number) and low <= number <= high):
        raise SharpcError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return number
