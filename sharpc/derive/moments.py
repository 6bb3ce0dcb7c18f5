"""Polynomials in power sums through Gaussian moments (cumulants).

For v ~ N(0, I) the cumulants of Q = 1/2 v^T H v are kappa_k = (k-1)!/2 * p_k, and
cumulants are polynomials in the raw moments E[Q], ..., E[Q^k]. So any polynomial in
p_1..p_K is a polynomial phi of psi = (t, t^2, ..., t^K) over one shared Gaussian group.

With a concrete d every symmetric polynomial in l_1..l_d qualifies too: SymPy's
``symmetrize`` writes it in elementary symmetric polynomials, and Newton's identities
turn those into power sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp
from sympy.polys.polyfuncs import symmetrize

from ..cumulants import cumulants_from_raw
from ..distributions import Gaussian, t
from ..errors import DerivationError
from ..limits import MAX_PHI_TERMS, expanded_terms
from ..measure import Measure, SampleGroup, phi_symbols
from ..spectral import (
    Eig,
    EMax,
    EMin,
    EProd,
    ESum,
    eigenvalue_symbols,
    expand_spectrum,
    lam,
    power_sum_order,
    reductions,
)
from . import Decline, Request, Strategy, make_measure, tuple_text

NAME = "moments"
SUMMARY = "polynomials in power sums p_k (any d) or symmetric polynomials (concrete d) via cumulants"

#: Highest moment used; E[Q^K] estimators get heavy-tailed quickly beyond this.
MAX_ORDER = 12
#: Monomials of an explicit polynomial in l_1..l_d that symmetrize may rewrite (prod(1 + l + l**2) at d = 8 has 6561).
MAX_SYMMETRIZE_TERMS = 1000


def _newton_elementary(k_max: int, p: Sequence[sp.Expr]) -> list[sp.Expr]:
    """[e_0, ..., e_k_max] in power sums p[1..]: k e_k = sum_i (-1)^(i-1) e_(k-i) p_i."""
    e = [sp.Integer(1)]
    for k in range(1, k_max + 1):
        e.append(sp.expand(sum((-1) ** (i - 1) * e[k - i] * p[i] for i in range(1, k + 1)) / k))
    return e


def symmetric_in_power_sums(poly: sp.Expr, eigenvalues: Sequence[sp.Symbol]) -> sp.Expr:
    """A symmetric polynomial in ``eigenvalues`` rewritten in power-sum atoms p_k."""
    symmetric, remainder, definitions = symmetrize(sp.expand(poly), *eigenvalues, formal=True)
    if sp.expand(remainder) != 0:
        raise DerivationError(
            f"{sp.sstr(poly)} is not symmetric in the eigenvalues (non-symmetric remainder "
            f"{sp.sstr(remainder)}); a sharpness measure can only depend on the spectrum as a multiset")
    d = len(eigenvalues)
    p = [None, *(ESum(lam**k) for k in range(1, d + 1))]
    e = _newton_elementary(d, p)
    return sp.expand(symmetric.xreplace({s: e[k] for k, (s, _) in enumerate(definitions, start=1)}))


def _as_power_sum_polynomial(request: Request) -> tuple[sp.Expr, list[str]]:
    target, notes = request.target, []
    atoms = reductions(target)
    if all(power_sum_order(a) for a in atoms):
        return target, notes
    if request.d is None:
        raise Decline("not a polynomial in power sums sum(l**k); with a concrete --d, "
                      "symmetric polynomials such as prod(l) qualify")
    if target.has(Eig):
        raise Decline("sorted eigenvalues l[k] are not polynomials in the spectrum")
    # Checked before expanding: d-term Max/exp expressions take minutes at d in the thousands.
    if any(isinstance(a, (EMax, EMin)) or not a.body.is_polynomial(lam) for a in atoms):
        raise Decline("max, min and non-polynomial bodies are not polynomials in the spectrum")
    # Checked before making d symbols (d may be 10**12): a sum over the spectrum has d terms, a
    # product degree at least d, so the limits below would decline anyway.
    if request.d > MAX_SYMMETRIZE_TERMS or (request.d > MAX_ORDER and any(isinstance(a, EProd) for a in atoms)):
        raise Decline(f"with d = {request.d} the target is a polynomial of degree or size beyond the limits "
                      f"for symmetrizing it (moments up to E[Q^{MAX_ORDER}], {MAX_SYMMETRIZE_TERMS} monomials)")
    eigenvalues = eigenvalue_symbols(request.d)
    explicit = expand_spectrum(target, eigenvalues)
    if not explicit.is_polynomial(*eigenvalues):
        raise Decline(f"not a polynomial in l_1..l_{request.d}")
    if expanded_terms(explicit, MAX_SYMMETRIZE_TERMS) > MAX_SYMMETRIZE_TERMS:
        raise Decline(f"with d = {request.d} the target expands to over {MAX_SYMMETRIZE_TERMS} monomials in "
                      "l_1..l_d, the limit for symmetrizing it in a few seconds")
    notes.append(f"with d = {request.d}: symmetrize into elementary symmetric polynomials, "
                 "then Newton's identities into power sums")
    return symmetric_in_power_sums(explicit, eigenvalues), notes


def derive(request: Request) -> Measure:
    polynomial, notes = _as_power_sum_polynomial(request)
    orders = {k for a in reductions(polynomial) if (k := power_sum_order(a))}
    order = max(orders, default=1)
    if order > MAX_ORDER:
        raise Decline(f"needs moments up to E[Q^{order}]; the limit is {MAX_ORDER}")
    raw = phi_symbols(order)
    kappas = cumulants_from_raw(raw)
    power_sums = {ESum(lam**k): 2 * kappas[k - 1] / sp.factorial(k - 1) for k in range(1, order + 1)}
    sizes = {atom: len(sp.Add.make_args(value)) for atom, value in power_sums.items()}
    if expanded_terms(polynomial, MAX_PHI_TERMS, sizes) > MAX_PHI_TERMS:
        raise Decline(f"phi in the raw moments would expand to over {MAX_PHI_TERMS} terms (the limit that keeps "
                      "compiling and verifying under a few seconds)")
    phi = sp.expand(polynomial.xreplace(power_sums))
    psi = tuple(t**k for k in range(1, order + 1))
    steps = (
        f"target = {sp.sstr(request.target)}",
        *notes,
        f"as a polynomial in power sums: {sp.sstr(polynomial)}",
        "cumulants of Q under N(0, I): kappa_k = (k-1)!/2 * p_k, so p_k = 2 kappa_k / (k-1)!",
        f"kappa_k in raw moments t_k = E[Q^k], k = 1..{order}; psi = {tuple_text(psi)}",
    )
    return make_measure(request, phi=phi, psi=psi, groups=(SampleGroup(Gaussian(), tuple(range(order))),),
                        strategy=NAME, steps=steps)


STRATEGIES = (Strategy(NAME, SUMMARY, derive),)
