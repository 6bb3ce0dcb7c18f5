"""sharpc: compile a sharpness measure of the loss Hessian into a (phi, psi, mu)-SAM optimizer.

    >>> import sharpc
    >>> measure = sharpc.compile("sum(l**2)")      # parse -> derive
    >>> measure.verify().passed                     # certificate + Monte Carlo
    True
    >>> FrobSAM = measure.optimizer_class()         # emit (needs torch)

Importing sharpc does not import torch: compiling and verifying use SymPy and NumPy only.
"""

from __future__ import annotations

from typing import Any

from .derive import REGISTRY as STRATEGIES
from .derive import Request, derive
from .errors import DerivationError, OptimizerError, ParseError, SharpcError
from .measure import Domain, Measure, SampleGroup
from .options import (
    APPROXIMATION_RANGE,
    BOUND_RANGE,
    HALF_WIDTH_RANGE,
    LOWER_BOUND_RANGE,
    MAX_D,
    check_float,
    check_int,
)
from .parse import parse

__all__ = [
    "compile", "compile_optimizer", "parse", "Measure", "SampleGroup", "Domain", "STRATEGIES",
    "SharpcError", "ParseError", "DerivationError", "OptimizerError",
]
__version__ = "0.1.0"


def compile(expression: str, *, d: int | None = None, strategy: str | None = None,
            det_sampling: str = "lebesgue", half_width: float = 1.0, lower_bound: float = 1.0,
            bound: float | None = None, invariant: str | None = None, force: bool = False,
            degree: int | None = None, budget: int = 16, size: int | None = None) -> Measure:  # noqa: A001
    """Parse a target in the Hessian eigenvalues ``l`` and derive its (phi, psi, mu).

    Args:
        expression: e.g. ``"sum(l**2)"``; the language is described in ``sharpc compile --help`` and docs/language.md.
        d: the number of eigenvalues (1 to 10**12), when it is fixed (otherwise symbolic and bound to the
            number of perturbed parameters by the optimizer).
        strategy: force one strategy by name (``sharpc.STRATEGIES``) instead of the first that applies.
        det_sampling: ``"lebesgue"`` (exact: the Lebesgue measure, sampled by importance from
            N(0, I / lower_bound)) or ``"hypercube"`` (the paper's Det-SAM: uniform on
            ``[-half_width, half_width]^d``, an approximation).
        half_width: the hypercube's half-width for ``det_sampling="hypercube"``, in [1e-6, 1e6].
        lower_bound: a stated lower bound L <= l_i on the spectrum for ``det_sampling="lebesgue"``,
            in [1e-6, 1e6]; the importance sampler's variance is finite while every l_i > L/2.
        bound: a bound |l_i| <= bound on the spectrum, in [1e-6, 1e6]; the universality strategies need it.
        invariant: ``"scale"`` asks for a measure invariant under positive diagonal rescalings
            that leave the loss invariant (the adaptive measure mu_x = law of |x| * v).
        force: allow constructions above their documented cost limits (Theorem 7 with many entries).
        degree: the polynomial degree (or p-norm order) of the approximating strategies
            (``chebyshev``, ``surrogate``); by default the one minimizing bias^2 + variance/budget.
        budget: samples per optimizer step assumed when choosing the degree.
        size: the number of eigenvalues assumed when choosing the degree while ``d`` is symbolic
            (the model's parameter count; default 10,000).
    """
    if d is not None:
        d = check_int("d", d, 1, MAX_D)
    if det_sampling not in ("lebesgue", "hypercube"):
        raise SharpcError(f"det_sampling must be 'lebesgue' or 'hypercube', got {det_sampling!r}")
    half_width = check_float("half_width", half_width, *HALF_WIDTH_RANGE)
    lower_bound = check_float("lower_bound", lower_bound, *LOWER_BOUND_RANGE)
    if invariant not in (None, "scale"):
        raise SharpcError(f"invariant must be 'scale' (or None), got {invariant!r}")
    if bound is not None:
        bound = check_float("bound", bound, *BOUND_RANGE)
    for name, value in (("degree", degree), ("budget", budget), ("size", size)):
        if value is not None:
            check_int(name, value, 1, APPROXIMATION_RANGE[name])
    target = parse(expression, d=d)
    request = Request(expression, target, d=d, det_sampling=det_sampling, half_width=half_width,
                      lower_bound=lower_bound, bound=bound, force=force, degree=degree, budget=budget, size=size)
    measure = derive(request, strategy)
    return measure.adaptive() if invariant == "scale" else measure


def compile_optimizer(expression: str, *, name: str | None = None, **compile_options: Any):
    """``compile(expression, **compile_options).optimizer_class(name)`` in one call."""
    return compile(expression, **compile_options).optimizer_class(name=name)
