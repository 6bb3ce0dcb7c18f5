"""Exact integrals of psi(Q) at a numeric spectrum, by routes independent of the derivations.

The verifier compares a measure's phi at these *exact* integrals with the target, so its
identity check has no sampling noise at all; a Monte Carlo estimate with heavy tails (Q^8
under a Gaussian) can then no longer fail a correct measure. Every route works in the
eigenbasis of H, where Q = 1/2 sum_i l_i z_i^2, at 50 significant digits (mpmath):

* Gaussian, psi a polynomial: moments of a sum of independent scaled chi-square(1) variables
  (E z^(2a) = (2a - 1)!!), convolved coordinate by coordinate with the binomial theorem;
* Gaussian, psi = exp(s t): the chi-square MGF, E exp(s l z^2/2) = (1 - s l)^(-1/2);
* Sphere, psi a polynomial: v = z/|z| with |z| independent of v, so E_sphere Q^k = E_gauss Q^k / E|z|^(2k);
* Lebesgue, psi = exp(-c t): the one-dimensional Gaussian integral sqrt(2 pi/(c l_i)) per axis;
* a point mass: psi at the point.

``second_moment`` gives E[(w psi)^2] under the verifier's sampler for the same distributions,
so the sampling check knows its exact standard deviation instead of estimating it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import mpmath
import sympy as sp

from .distributions import Adaptive, DiracAt, Distribution, Eigenvector, Gaussian, Lebesgue, Sphere, t

#: Significant digits of every reference computation.
DIGITS = 50


def _terms(psi: sp.Expr) -> list[tuple[sp.Expr, int | None, sp.Expr | None]] | None:
    """psi as (coefficient, power k or None, exp rate s or None) terms, or None if neither form."""
    terms = []
    for term in sp.Add.make_args(sp.expand(psi, power_exp=False)):
        coeff, basis = term.as_independent(t, as_Add=False)
        if not coeff.is_number:
            return None
        if basis == 1:
            terms.append((coeff, 0, None))
        elif basis == t or (basis.is_Pow and basis.base == t and basis.exp.is_Integer and basis.exp > 0):
            terms.append((coeff, int(basis.as_base_exp()[1]), None))
        elif isinstance(basis, sp.exp) and (basis.args[0] / t).is_number and not (basis.args[0] / t).has(t):
            terms.append((coeff, None, basis.args[0] / t))
        else:
            return None
    return terms


def _mp(number: sp.Expr) -> mpmath.mpf:
    """A SymPy constant at the working precision."""
    return mpmath.mpf(str(sp.N(number, DIGITS)))


def _moment(spectrum: list, k: int) -> mpmath.mpf:
    """E Q^k from one cached table per spectrum (the verifier asks for many k at the same spectrum)."""
    return _moment_table(tuple(spectrum), max(k, _TABLE_ORDER))[k]


#: Moments computed at once per spectrum: psi up to t^12 and its square.
_TABLE_ORDER = 24


@lru_cache(maxsize=64)
def _moment_table(spectrum: tuple, k_max: int) -> list[mpmath.mpf]:
    with mpmath.workdps(DIGITS):
        return gaussian_moments(spectrum, k_max)


def gaussian_moments(spectrum: Sequence[mpmath.mpf], k_max: int) -> list[mpmath.mpf]:
    """[E Q^0, ..., E Q^k_max] for Q = 1/2 sum l_i z_i^2, z ~ N(0, I): chi-square moments, convolved."""
    moments = [mpmath.mpf(1)] + [mpmath.mpf(0)] * k_max
    for value in spectrum:
        half = value / 2
        axis = [mpmath.mpf(1)]  # E (l z^2/2)^a = (l/2)^a (2a - 1)!!
        for a in range(1, k_max + 1):
            axis.append(axis[-1] * half * (2 * a - 1))
        moments = [mpmath.fsum(math.comb(k, j) * moments[j] * axis[k - j] for j in range(k + 1))
                   for k in range(k_max + 1)]
    return moments


def _gaussian_mgf(spectrum: Sequence[mpmath.mpf], rate: mpmath.mpf) -> mpmath.mpf:
    if any(rate * value >= 1 for value in spectrum):
        return mpmath.inf
    return mpmath.fprod((1 - rate * value) ** mpmath.mpf(-0.5) for value in spectrum)


def _sphere_norm_moment(d: int, k: int) -> mpmath.mpf:
    """E |z|^(2k) = d (d + 2) ... (d + 2k - 2) for z ~ N(0, I_d)."""
    return mpmath.fprod(d + 2 * j for j in range(k))


def _lebesgue_integral(spectrum: Sequence[mpmath.mpf], rate: mpmath.mpf, shift: mpmath.mpf = 0) -> mpmath.mpf:
    """integral of exp(rate Q + shift |v|^2/2) dv = prod_i sqrt(2 pi / (-rate l_i - shift)), or inf."""
    curvatures = [-rate * value - shift for value in spectrum]
    if any(c <= 0 for c in curvatures):
        return mpmath.inf
    return mpmath.fprod(mpmath.sqrt(2 * mpmath.pi / c) for c in curvatures)


def expectation(distribution: Distribution, psi: sp.Expr, spectrum: Sequence[float]) -> mpmath.mpf | None:
    """The exact integral of psi(Q) d mu at this spectrum, or None when no route applies."""
    with mpmath.workdps(DIGITS):
        return _integral(distribution, psi, [mpmath.mpf(float(x)) for x in spectrum])


def _integral(distribution: Distribution, psi: sp.Expr, spectrum: list) -> mpmath.mpf | None:
    if isinstance(distribution, Adaptive):  # the spectrum is already that of diag|x| H diag|x|
        distribution = distribution.base
    if isinstance(distribution, DiracAt):
        return None  # read off H's entries, not the spectrum: the Monte Carlo case is exact
    if isinstance(distribution, Eigenvector):  # the converged u: Q = l / 2 at the eigenvalue it finds
        found = max(spectrum, key=lambda x: abs(distribution.sign * x + distribution.shift))
        return mpmath.mpf(_mp_function(psi)(found / 2))
    terms = _terms(psi)
    if terms is None:
        return None
    total = mpmath.mpf(0)
    for coeff, k, rate in terms:
        value = _term(distribution, spectrum, k, None if rate is None else _mp(rate))
        if value is None:
            return None
        total += _mp(coeff) * value
    return total


@lru_cache(maxsize=64)
def _mp_function(psi: sp.Expr):
    """psi as an mpmath function (our own expression in t: no user text reaches lambdify)."""
    return sp.lambdify(t, psi, "mpmath")


def _term(distribution: Distribution, spectrum: list, k: int | None, rate: mpmath.mpf | None):
    d = len(spectrum)
    if isinstance(distribution, Gaussian):
        return _moment(spectrum, k) if k is not None else _gaussian_mgf(spectrum, rate)
    if isinstance(distribution, Sphere) and k is not None:
        return _moment(spectrum, k) / _sphere_norm_moment(d, k)
    if isinstance(distribution, Lebesgue) and rate is not None and rate < 0:
        return _lebesgue_integral(spectrum, rate)
    return None


def second_moment(distribution: Distribution, psi: sp.Expr, spectrum: Sequence[float]) -> mpmath.mpf | None:
    """E[(w psi(Q))^2] under the verifier's sampler for ``distribution`` (mc_sample), or None.

    For a probability measure w = 1 and this is the integral of psi^2. The Lebesgue sampler is
    N(0, I/L) with w = (2 pi / L)^(d/2) exp(L |v|^2 / 2), L = ``distribution.lower``.
    """
    base = distribution.base if isinstance(distribution, Adaptive) else distribution
    if not isinstance(base, Lebesgue):
        return expectation(distribution, sp.expand(psi**2), spectrum)
    terms = _terms(psi)
    if terms is None or any(rate is None for _, _, rate in terms):
        return None
    with mpmath.workdps(DIGITS):
        values = [mpmath.mpf(float(x)) for x in spectrum]
        shift = mpmath.mpf(base.lower)  # the sampler's precision L, as in Lebesgue.mc_sample
        scale = (2 * mpmath.pi / shift) ** (mpmath.mpf(len(values)) / 2)
        total = mpmath.mpf(0)
        for c1, _, r1 in terms:
            for c2, _, r2 in terms:
                total += _mp(c1 * c2) * scale * _lebesgue_integral(values, _mp(r1 + r2), shift=shift)
        return total
