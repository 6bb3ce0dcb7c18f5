"""Spectral sums and products through the Gaussian moment generating function.

For v ~ N(0, I): E[exp(sigma Q)] = prod_i (1 - sigma l_i)^(-1/2) while sigma l_i < 1, so

    prod_i (1 + s l_i)^a   = E[exp(-s Q)]^(-2a)       (phi = t^(-2a))
    sum_i log(1 + s l_i)   = -2 log E[exp(-s Q)]      (phi = -2 log t)

for any d, symbolic or not. The estimator's variance is finite only when
1 + 2 s l_i > 0 for every i, which becomes the measure's domain.
"""

from __future__ import annotations

import sympy as sp

from ..distributions import Gaussian, t
from ..measure import Domain, Measure, SampleGroup, phi_symbols
from ..spectral import D, EProd, ESum, lam, reductions
from . import Decline, Request, Strategy, affine_in, make_measure, relation, sign_of

NAME = "mgf"
SUMMARY = "Gaussian MGF: c * prod(1 + s*l)**a + k and c * sum(log(a0 + b*l)) + k"

(t1,) = phi_symbols(1)


def _linear_body(body: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
    """(a0, b) when body == a0 + b*lam with numeric a0 != 0 and b != 0."""
    if not body.is_polynomial(lam):
        return None
    poly = sp.Poly(body, lam)
    if poly.degree() != 1:
        return None
    b, a0 = poly.all_coeffs()
    if not (a0.is_number and b.is_number and a0.is_real and b.is_real) or a0 == 0:
        return None
    return a0, b


def _domain(sigma: sp.Expr) -> Domain:
    bound = float(1 / (2 * sigma))
    reason = "finite estimator variance needs 1 - 2*sigma*l_i > 0 (the identity needs 1 - sigma*l_i > 0)"
    if sigma > 0:
        return Domain(upper=bound * (1 - 1e-9), reason=reason)
    return Domain(lower=bound, strict_lower=True, reason=reason)


def _gaussian_exp_measure(request: Request, sigma: sp.Expr, phi: sp.Expr, c: sp.Expr, offset: sp.Expr,
                          why: str, strategy: str) -> Measure:
    sign = sign_of(c)
    domain = _domain(sigma)
    steps = (
        f"target = {sp.sstr(request.target)}",
        f"for v ~ N(0, I): E[exp(sigma Q)] = prod(1 - sigma*l)**(-1/2) with sigma = {sp.sstr(sigma)}",
        why,
        relation(sign * c, sign, offset),
    )
    return make_measure(
        request, phi=sign * phi, psi=(sp.exp(sigma * t),), groups=(SampleGroup(Gaussian(), (0,)),),
        strategy=strategy, steps=steps, scale=sign * c, offset=offset,
        assumptions=(f"{domain.describe()} ({domain.reason})",), domain=domain,
    )


def shifted_determinant(request: Request, atom: sp.Expr, power: sp.Expr, fit: tuple[sp.Expr, sp.Expr],
                        strategy: str = NAME) -> Measure | None:
    """c * prod(1 + s*l)**power + k, or None when ``atom`` is not prod(1 + s*l)."""
    linear = _linear_body(atom.body)
    if linear is None or linear[0] != 1:
        return None
    sigma = -linear[1]
    c, k = fit
    exponent = sp.sstr(-2 * power)
    why = f"so {sp.sstr(atom)}**{sp.sstr(power)} = E[exp(sigma Q)]**{exponent}: phi = t1**{exponent}"
    return _gaussian_exp_measure(request, sigma, t1 ** (-2 * power), c, k, why, strategy)


def _power_fit(target: sp.Expr, atom: sp.Expr) -> tuple[sp.Expr, sp.Expr, sp.Expr] | None:
    """(c, a, k) with target == c * atom**a + k."""
    y = sp.Dummy("y", positive=True)
    c, a, k = (sp.Wild(name, exclude=[y]) for name in "cak")
    match = target.xreplace({atom: y}).match(c * y**a + k)
    if not match or reductions(target.xreplace({atom: y})) or match[c] == 0 or match[a] == 0:
        return None
    return match[c], match[a], match[k]


def derive(request: Request) -> Measure:
    atoms = reductions(request.target)
    if len(atoms) != 1:
        raise Decline("needs exactly one spectral sum or product")
    (atom,) = atoms
    if isinstance(atom, EProd):
        fit = _power_fit(request.target, atom)
        if fit is not None:
            c, power, k = fit
            measure = shifted_determinant(request, atom, power, (c, k))
            if measure is not None:
                return measure
    if isinstance(atom, ESum) and isinstance(atom.body, sp.log):
        linear = _linear_body(atom.body.args[0])
        fit = affine_in(request.target, atom)
        if linear is not None and fit is not None and linear[0] > 0:
            a0, b = linear
            c, k = fit
            sigma = -b / a0
            why = "so sum(log(1 - sigma*l)) = -2 log E[exp(sigma Q)]: phi = -2*log(t1)"
            if a0 != 1:
                why += f"; log({sp.sstr(a0)} + ...) contributes the constant d*log({sp.sstr(a0)})"
            return _gaussian_exp_measure(request, sigma, -2 * sp.log(t1), c, k + c * D * sp.log(a0), why, NAME)
    raise Decline("not c * prod(1 + s*l)**a + k or c * sum(log(a0 + b*l)) + k with a0 > 0")


STRATEGIES = (Strategy(NAME, SUMMARY, derive),)
