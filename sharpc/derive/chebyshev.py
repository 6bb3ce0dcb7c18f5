"""Spectral sums sum_i f(l_i) for any d: a Chebyshev polynomial of f, then cumulants.

Theorem 6 needs a concrete, small d. For a continuous f and a spectrum with |l_i| <= bound,
a polynomial p of degree K with sup |f - p| <= eps on [-bound, bound] gives
|sum f(l_i) - sum p(l_i)| <= d * eps, and sum p(l_i) = sum_k a_k p_k is linear in the power
sums: the moments strategy compiles it exactly, for symbolic d. Chebyshev interpolation
(NumPy) is within a factor of about 2 + (2/pi) log K of the best polynomial of degree K.

The degree trades bias against variance: a higher K shrinks eps but needs E[Q^K], whose
estimator's variance grows like (d * bound^2)^K. Unless ``degree`` is given, the strategy
picks the K minimizing bias^2 + variance / budget, the variance computed exactly (delta
method) on spectra at the bound, at d (or ``size`` when d is symbolic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import sympy as sp
from numpy.polynomial import Chebyshev, Polynomial

from ..cumulants import linear_estimator_variance
from ..measure import Domain, Measure
from ..spectral import D, ESum, lam, power_sum_order, reductions
from . import Decline, Request, Strategy, moments
from .universal import discontinuity

NAME = "chebyshev"
SUMMARY = "sum(f(l)) for continuous f on [-bound, bound], any d: Chebyshev polynomial of f, then moments"
#: Highest degree: the moments strategy's highest raw moment.
MAX_DEGREE = moments.MAX_ORDER
#: Spectrum length for the bias/variance trade-off when d is symbolic and no size is given.
DEFAULT_SIZE = 10_000
#: Points on which sup |f - p| is measured.
GRID = 20_001


@dataclass(frozen=True)
class Fit:
    """A polynomial for f on [-bound, bound]: coefficients of l**0..l**K and a bound on sup |f - p|."""

    degree: int
    coefficients: tuple[float, ...]
    error: float


def fit(f: Callable[[np.ndarray], np.ndarray], bound: float, degree: int) -> Fit:
    """Chebyshev interpolant of ``f`` of the given degree, in the power basis, with its error.

    The error is the largest |f - p| on a uniform grid plus (h/2) max|(f - p)'|, the most
    |f - p| can grow between grid points h apart (the slope estimated on the grid).
    """
    series = Chebyshev.interpolate(f, degree, domain=[-bound, bound])
    power = series.convert(kind=Polynomial, domain=[-bound, bound], window=[-bound, bound])
    coefficients = np.zeros(degree + 1)
    coefficients[: len(power.coef)] = power.coef
    size = np.abs(coefficients) * bound ** np.arange(degree + 1)
    coefficients[size < 1e-13 * size.max(initial=0.0)] = 0.0  # rounding residue of exact zeros
    # 12 significant digits, so the coefficients are short exact rationals for SymPy (the
    # certificate cancels exactly) and the error below is that of the rounded polynomial.
    coefficients = np.array([float(f"{c:.12g}") for c in coefficients])
    grid = np.linspace(-bound, bound, GRID)
    values = np.broadcast_to(f(grid), grid.shape)
    residual = values - Polynomial(coefficients)(grid)
    error = float(np.max(np.abs(residual)) + np.max(np.abs(np.diff(residual))) / 2)
    return Fit(degree, tuple(float(c) for c in coefficients), error)


def probe_power_sums(size: int, bound: float, count: int) -> list[list[float]]:
    """p_1..p_count on spectra at the bound (all +bound, all -bound, half each): the variance probes."""
    half = size // 2
    return [[size * bound**k for k in range(1, count + 1)],
            [size * (-bound) ** k for k in range(1, count + 1)],
            [(size - half + (-1) ** k * half) * bound**k for k in range(1, count + 1)]]


def linear_coefficients(expr: sp.Expr) -> dict[sp.Expr, sp.Expr] | None:
    """{atom: c} with expr == k + sum c * atom over its spectral atoms, or None if it is not affine."""
    dummies = {atom: sp.Dummy() for atom in reductions(expr)}
    replaced = expr.xreplace(dummies)
    coefficients = {atom: sp.diff(replaced, y) for atom, y in dummies.items()}
    if any(c.has(*dummies.values()) for c in coefficients.values()):
        return None
    return coefficients


def power_sum_weights(polynomial: sp.Expr, size: int) -> list[float]:
    """w_1..w_K with polynomial == const + sum_k w_k p_k, at d = size."""
    orders = {power_sum_order(a): c for a, c in linear_coefficients(polynomial).items()}
    top = max(orders, default=1)
    return [float(orders[k].subs(D, size)) if k in orders else 0.0 for k in range(1, top + 1)]


@dataclass(frozen=True)
class Candidate:
    """One degree's polynomial target, with its error bound and estimator variance at the probe size."""

    degree: int
    polynomial: sp.Expr
    bias: float
    variance: float
    fits: tuple[Fit, ...]

    def risk(self, budget: int) -> float:
        return self.bias**2 + self.variance / budget


def _affine_sums(target: sp.Expr) -> tuple[dict[sp.Expr, sp.Expr], list[sp.Expr]]:
    """Coefficients c of target = k + sum c * ESum(f), and the bodies f that need approximating."""
    atoms = reductions(target)
    if not atoms or any(not isinstance(a, ESum) for a in atoms):
        raise Decline("not a combination of spectral sums sum(f(l))")
    coefficients = linear_coefficients(target)
    if coefficients is None:
        raise Decline("spectral sums enter non-linearly; only c1 * sum(f1(l)) + c2 * sum(f2(l)) + k is approximated")
    smooth = [a for a in atoms if power_sum_order(a) is None]
    if not smooth:
        raise Decline("a polynomial in power sums needs no approximation (the moments strategy)")
    for atom in smooth:
        jump = discontinuity(atom.body)
        if jump is not None or atom.body.free_symbols != {lam}:
            raise Decline(f"f(l) = {sp.sstr(atom.body.subs(lam, sp.Symbol('l')))} is not a continuous function of l")
    return coefficients, smooth


def _numeric_body(body: sp.Expr, bound: float) -> Callable[[np.ndarray], np.ndarray]:
    # Our own SymPy expression in lam only (built by the parser's whitelist), never user text.
    f = sp.lambdify(lam, body, "numpy")
    with np.errstate(all="ignore"):
        values = np.broadcast_to(f(np.linspace(-bound, bound, GRID)), (GRID,))
    if not np.all(np.isfinite(values)) or np.iscomplexobj(values):
        raise Decline(f"f(l) = {sp.sstr(body.subs(lam, sp.Symbol('l')))} is not finite and real on "
                      f"[-{bound:g}, {bound:g}]")
    return f


def candidates(request: Request, size: int) -> list[Candidate]:
    """The polynomial target, its bias bound and its variance for each allowed degree."""
    coefficients, smooth = _affine_sums(request.target)
    bodies = [_numeric_body(atom.body, request.bound) for atom in smooth]
    kept = max((power_sum_order(a) or 0 for a in coefficients), default=0)
    degrees = [request.degree] if request.degree is not None else range(1, MAX_DEGREE + 1)
    found = []
    for degree in degrees:
        fits = tuple(fit(f, request.bound, degree) for f in bodies)
        polynomial = request.target.xreplace({
            atom: ESum(sum(sp.Rational(repr(c)) * lam**k for k, c in enumerate(f.coefficients) if c))
            for atom, f in zip(smooth, fits)})
        bias = sum(abs(float(coefficients[a].subs(D, size))) * size * f.error for a, f in zip(smooth, fits))
        weights = power_sum_weights(polynomial, size)
        order = max(len(weights), kept)
        variance = max(linear_estimator_variance(weights, p)
                       for p in probe_power_sums(size, request.bound, 2 * len(weights)))
        if order <= MAX_DEGREE:
            found.append(Candidate(degree, polynomial, bias, variance, fits))
    return found


def error_bound(request: Request, chosen: Candidate) -> sp.Expr:
    """sum over approximated sums of |c| * d * sup|f - p|, in d."""
    coefficients, smooth = _affine_sums(request.target)
    bound = sum(sp.Abs(coefficients[a]) * D * sp.Float(f.error, 4) for a, f in zip(smooth, chosen.fits))
    return sp.simplify(bound if request.d is None else bound.subs(D, request.d))


def _choice_text(found: Sequence[Candidate], chosen: Candidate, size: int, budget: int) -> str:
    table = "; ".join(f"K={c.degree}: bias {c.bias:.3g}, var {c.variance:.3g}" for c in found)
    return (f"degree K = {chosen.degree} minimizes bias^2 + variance/n at d = {size}, n = {budget} "
            f"samples per step ({table})")


def derive(request: Request) -> Measure:
    if request.bound is None:
        raise Decline("approximating sum(f(l)) needs --bound (|l_i| <= bound)")
    if request.degree is not None and not 1 <= request.degree <= MAX_DEGREE:
        raise Decline(f"degree {request.degree} is outside 1..{MAX_DEGREE} (the highest moment E[Q^K] used)")
    size = request.d or request.size or DEFAULT_SIZE
    found = candidates(request, size)
    if not found:
        raise Decline(f"needs moments above E[Q^{MAX_DEGREE}]")
    chosen = min(found, key=lambda c: c.risk(request.budget))
    exact = moments.derive(replace(request, target=chosen.polynomial))
    bound = error_bound(request, chosen)
    domain = Domain(lower=-request.bound, upper=request.bound,
                    reason=f"|l_i| <= {request.bound:g} (the polynomial approximates f there)")
    why = ("degree fixed by the caller" if request.degree is not None
           else _choice_text(found, chosen, size, request.budget))
    steps = (
        f"target = {sp.sstr(request.target)}",
        f"on [-{request.bound:g}, {request.bound:g}], f is replaced by its Chebyshev interpolant p of degree "
        f"{chosen.degree}: sup|f - p| <= "
        + ", ".join(f"{f.error:.3g}" for f in chosen.fits) + f" (grid of {GRID:,} points plus a slope margin)",
        why,
        f"approximation error |target - S| <= {sp.sstr(bound)} (|c| * d * sup|f - p| per sum)",
        f"per-sample variance of the estimate at d = {size}, spectra at the bound: {chosen.variance:.3g}",
        *exact.steps[1:],
    )
    return replace(exact, target=request.target, approximant=chosen.polynomial, exact=False, strategy=NAME,
                   steps=steps, domain=domain, error_bound=bound, variance_per_sample=chosen.variance,
                   assumptions=(f"|l_i| <= {request.bound:g}",
                                f"approximation: |target - S| <= {sp.sstr(bound)}"))


STRATEGIES = (Strategy(NAME, SUMMARY, derive),)
