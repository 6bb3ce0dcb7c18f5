"""The rows of the paper's Table 1, matched up to a positive factor and an additive constant.

Each row says: for this mu and psi, the spectral atom equals base_scale * phi(E psi) + base_offset.
A target c * atom + k then keeps the row's phi (so strengths mean what they mean in
the paper) and reports c * base_scale and k as dropped constants; a negative c flips phi.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..distributions import Distribution, Gaussian, Hypercube, Lebesgue, Sphere, t
from ..measure import Domain, Measure, SampleGroup, phi_symbols
from ..spectral import D, EProd, ESum, lam, reductions
from . import Decline, Request, Strategy, affine_in, make_measure, relation, sign_of, tuple_text
from .moments import MAX_ORDER

NAME = "table1"
SUMMARY = "Table 1 of the paper: trace (sphere), Frobenius (Gaussian), det / log det (Lebesgue), prod(1 - s l)"

t1, t2 = phi_symbols(2)
_POSITIVE_DEFINITE = Domain(lower=0.0, strict_lower=True, reason="the Gaussian integral needs H > 0")


@dataclass(frozen=True)
class Row:
    """atom = base_scale * phi(integral psi d mu) + base_offset, on ``domain``."""

    name: str
    atom: sp.Expr
    phi: sp.Expr
    psi: tuple[sp.Expr, ...]
    distribution: Distribution
    base_scale: sp.Expr
    why: str
    base_offset: sp.Expr = sp.Integer(0)
    domain: Domain = Domain()
    assumptions: tuple[str, ...] = ()
    exact: bool = True


def _lebesgue_rows(request: Request) -> tuple[Row, ...]:
    """det / log det through int exp(-Q) dv = (2 pi)^(d/2) det(H)^(-1/2).

    det_sampling="lebesgue" samples the Lebesgue measure exactly, by importance from
    N(0, I/L) under the stated lower bound L on the spectrum; "hypercube" is the paper's
    Det-SAM, which samples a cube and only approximates the identity.
    """
    if request.det_sampling == "hypercube":
        a = request.half_width
        # E_cube[exp(-Q)] = (2a)^(-d) * (integral over the cube), and the cube integral tends to
        # (2 pi)^(d/2) det(H)^(-1/2) as a grows: an approximation, not an identity.
        # E_cube[exp(-Q)] = 1 - a^2 tr(H)/6 + O(a^4), so phi = t^-2 gives R = 1 + a^2 tr(H)/3 + O(a^4).
        mu: Distribution = Hypercube(a)
        scale = (2 * sp.pi) ** D / (2 * sp.Rational(str(a))) ** (2 * D)
        common = dict(domain=_POSITIVE_DEFINITE, exact=False, assumptions=(
            "H positive definite",
            f"the optimizer samples Uniform([-{a:g}, {a:g}]^d) (the paper's Det-SAM); its R tracks det(H) only "
            f"when a^2 l_min >> 1: for a^2 l << 1 R - 1 = a^2 tr(H)/3 + O(a^4), a trace regularizer; on "
            "singular H it tracks the product of the non-zero eigenvalues"))
    else:
        low = request.lower_bound
        mu, scale = Lebesgue(low), (2 * sp.pi) ** D
        common = dict(domain=Domain(lower=low, reason=f"the stated lower bound l_i >= {low:g} (--lower-bound)"),
                      exact=True, assumptions=(
            f"H >= {low:g} I (the stated lower bound): the importance sampler N(0, I/{low:g}) has finite "
            f"variance while every l_i > {low / 2:g}; one sample's relative variance is "
            f"prod_i c_i / sqrt(2 c_i - 1) - 1 with c_i = l_i / {low:g}, exponential in d unless H is near {low:g} I",))
    common.update(psi=(sp.exp(-t),), distribution=mu)
    why = "int exp(-Q) dv = (2 pi)^(d/2) det(H)^(-1/2) (Gaussian integral)"
    determinant = Row("determinant", EProd(lam), t1**-2, base_scale=scale, why=why, **common)
    log_determinant = Row("log-determinant", ESum(sp.log(lam)), -2 * sp.log(t1), base_scale=sp.Integer(1),
                          base_offset=sp.log(scale), why=why, **common)
    if request.d is not None and request.d <= MAX_ORDER and request.det_sampling == "lebesgue":
        return (log_determinant,)  # the moments strategy writes det exactly in Gaussian moments
    return determinant, log_determinant


def rows(request: Request) -> tuple[Row, ...]:
    """The Table 1 rows for this request (the det rows depend on the sampling option)."""
    return (
        Row("trace", ESum(lam), t1, (t,), Sphere(), base_scale=2 * D,
            why="for v uniform on the sphere E[v v^T] = I/d, so E[Q] = tr(H)/(2d)"),
        Row("Frobenius", ESum(lam**2), 2 * (t2 - t1**2), (t, t**2), Gaussian(), base_scale=sp.Integer(1),
            why="for v ~ N(0, I): E[Q] = p1/2 and E[Q^2] = p1^2/4 + p2/2, so 2(E[Q^2] - E[Q]^2) = p2"),
        *_lebesgue_rows(request),
    )


def _from_row(request: Request, row: Row, c: sp.Expr, k: sp.Expr) -> Measure:
    sign = sign_of(c)
    scale = sp.simplify(sign * c * row.base_scale)
    offset = sp.simplify(k + c * row.base_offset)
    steps = (
        f"target = {sp.sstr(request.target)}",
        f"Table 1 ({row.name}): {row.why}",
        f"{sp.sstr(row.atom)} = " + ("" if row.base_scale == 1 else f"{sp.sstr(row.base_scale)} * ") + "phi"
        + (f" + {sp.sstr(row.base_offset)}" if row.base_offset != 0 else "")
        + f" with phi = {sp.sstr(row.phi)}, psi = {tuple_text(row.psi)}, mu = {row.distribution.describe()}",
        relation(scale, sign, offset),
    )
    return make_measure(
        request, phi=sign * row.phi, psi=row.psi,
        groups=(SampleGroup(row.distribution, tuple(range(len(row.psi)))),),
        strategy=NAME, steps=steps, scale=scale, offset=offset,
        assumptions=row.assumptions, domain=row.domain, exact=row.exact,
    )


def derive(request: Request) -> Measure:
    for row in rows(request):
        fit = affine_in(request.target, row.atom)
        if fit is not None:
            return _from_row(request, row, *fit)
    # The last row, prod(1 - sigma l), has a free sigma: the MGF strategy builds it.
    from .mgf import shifted_determinant

    atoms = reductions(request.target)
    if len(atoms) == 1:
        (atom,) = atoms
        fit = affine_in(request.target, atom)
        if fit is not None and isinstance(atom, EProd):
            measure = shifted_determinant(request, atom, power=sp.Integer(1), fit=fit, strategy=NAME)
            if measure is not None:
                return measure
    raise Decline("not c * (sum(l), sum(l**2), prod(l), sum(log(l)) or prod(1 - s*l)) + k")



STRATEGIES = (Strategy(NAME, SUMMARY, derive),)
