"""Theorem 6: any continuous function of the eigenvalues, for a concrete d and |l_i| <= bound.

Both constructions recover the coefficients of p(s) = prod_i (1 - l_i s) = 1 + a_1 s + ... + a_d s^d
from Gaussian integrals, then the eigenvalues as the roots of s^d + a_1 s^(d-1) + ... + a_d
(``RootEig``, computed from the companion matrix at run time, so phi stays differentiable):

* ``vandermonde`` (the paper's proof): psi_j = exp(sigma_j t) gives E[psi_j] = p(sigma_j)^(-1/2),
  so t_j^(-2) = p(sigma_j), and a Vandermonde solve gives a_1..a_d. The nodes sigma_j are
  Chebyshev points inside |sigma| < 1/(2 bound), where the estimator's variance is finite.
* ``power-roots``: psi_k = t^k gives the raw moments E[Q^k]; cumulants give the power sums,
  Newton's identities the coefficients. No exponentials, but higher moments.

The ``universal`` strategy builds both and keeps the one whose regularizer estimate has the
lower Monte Carlo variance on spectra at the domain bound.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import sympy as sp

from ..cumulants import cumulants_from_raw
from ..distributions import Gaussian, t
from ..measure import Domain, Measure, SampleGroup, phi_symbols
from ..spectral import Eig, RootEig, eigenvalue_symbols, expand_spectrum, lam
from . import Decline, Request, Strategy, make_measure

NAME = "universal"
SUMMARY = "Theorem 6: any function of the spectrum (needs --d and --bound); picks the lower-variance construction"
#: Above this, root recovery from sampled integrals is hopelessly ill-conditioned.
MAX_D = 8
#: Node radius as a fraction of the finite-variance limit 1/(2 bound).
NODE_FRACTION = sp.Rational(9, 10)


def _check(request: Request) -> tuple[int, float]:
    missing = [name for name, value in (("--d", request.d), ("--bound", request.bound)) if value is None]
    if missing:
        raise Decline(f"the universality construction needs {' and '.join(missing)} "
                      "(a concrete dimension and a bound |l_i| <= bound)")
    if request.d > MAX_D:
        raise Decline(f"d = {request.d} exceeds the limit {MAX_D} for recovering eigenvalues from integrals")
    jump = discontinuity(request.target)
    if jump is not None:
        raise Decline(f"Theorem 6 needs a continuous function of the spectrum; "
                      f"{sp.sstr(jump.subs(lam, sp.Symbol('l')))} jumps")
    return request.d, request.bound


#: Functions with jumps: a recovered eigenvalue near the jump flips the estimate at random.
DISCONTINUOUS = (sp.sign, sp.Heaviside, sp.floor, sp.ceiling, sp.Piecewise)


def discontinuity(target: sp.Expr) -> sp.Expr | None:
    """A discontinuous piece of ``target``, or None."""
    return next(iter(sorted(target.atoms(*DISCONTINUOUS), key=sp.default_sort_key)), None)


def chebyshev_nodes(d: int, bound: float) -> list[sp.Rational]:
    """d distinct non-zero rational nodes in (-r, r), r = 0.9/(2 bound): Chebyshev points, zero dropped."""
    radius = NODE_FRACTION / (2 * sp.Rational(str(bound)))
    count = d if d % 2 == 0 else d + 1
    nodes = [radius * sp.Rational(Fraction(math.cos((2 * j - 1) * math.pi / (2 * count))).limit_denominator(1000))
             for j in range(1, count + 1)]
    return sorted(nodes, key=abs, reverse=True)[:d]


def _vandermonde(d: int, bound: float) -> tuple[list[sp.Expr], tuple[sp.Expr, ...], list[str]]:
    nodes = chebyshev_nodes(d, bound)
    u = phi_symbols(d)
    matrix = sp.Matrix(d, d, lambda j, k: nodes[j] ** (k + 1))
    coefficients = list(matrix.inv() * sp.Matrix([u[j] ** -2 - 1 for j in range(d)]))
    condition = float(np.linalg.cond(np.array(matrix.evalf(), dtype=float)))
    notes = [
        f"psi_j = exp(sigma_j t) with Chebyshev nodes sigma = ({', '.join(sp.sstr(n) for n in nodes)}) "
        f"inside |sigma| < 1/(2*bound)",
        "E[exp(sigma Q)]^(-2) = p(sigma) = prod(1 - sigma*l_i), so t_j**(-2) = p(sigma_j)",
        f"solve the Vandermonde system V a = t**(-2) - 1 for p's coefficients (cond(V) = {condition:.3g})",
    ]
    return coefficients, tuple(sp.exp(n * t) for n in nodes), notes


def _power_roots(d: int) -> tuple[list[sp.Expr], tuple[sp.Expr, ...], list[str]]:
    kappas = cumulants_from_raw(phi_symbols(d))
    power_sums = [2 * kappas[k - 1] / sp.factorial(k - 1) for k in range(1, d + 1)]
    elementary = [sp.Integer(1)]
    for k in range(1, d + 1):
        elementary.append(sp.expand(sum((-1) ** (i - 1) * elementary[k - i] * power_sums[i - 1]
                                        for i in range(1, k + 1)) / k))
    coefficients = [(-1) ** k * elementary[k] for k in range(1, d + 1)]
    notes = [
        f"psi_k = t**k, k = 1..{d}: raw moments of Q under N(0, I)",
        "cumulants -> power sums p_k = 2 kappa_k/(k-1)! -> Newton's identities -> coefficients of p",
    ]
    return coefficients, tuple(t**k for k in range(1, d + 1)), notes


CONSTRUCTIONS = {"vandermonde": _vandermonde, "power-roots": lambda d, bound: _power_roots(d)}


def construct(request: Request, construction: str) -> Measure:
    """The Theorem 6 measure for ``request`` with one named construction."""
    d, bound = _check(request)
    coefficients, psi, notes = CONSTRUCTIONS[construction](d, bound)
    roots = [RootEig(k, *coefficients) for k in range(d)]
    # Expand over plain symbols, then put the roots in unevaluated: Max/Min would otherwise
    # compare the roots' large coefficient expressions pairwise (seconds at d = 8).
    placeholders = eigenvalue_symbols(d)
    with sp.evaluate(False):
        explicit = expand_spectrum(request.target, placeholders)
        explicit = explicit.xreplace({e: placeholders[int(e.args[0]) % d] for e in explicit.atoms(Eig)})
        phi = explicit.xreplace(dict(zip(placeholders, roots)))
    domain = Domain(lower=-bound, upper=bound, reason=f"|l_i| <= {bound:g} (the stated domain bound)")
    steps = (
        f"target = {request.target}",
        f"Theorem 6 ({construction}), d = {d}, |l_i| <= {bound:g}",
        *notes,
        "eigenvalues = roots of s^d + a_1 s^(d-1) + ... + a_d (companion matrix), sorted largest first",
        "phi = target evaluated on the recovered sorted eigenvalues",
    )
    return make_measure(request, phi=phi, psi=psi, groups=(SampleGroup(Gaussian(), tuple(range(d))),),
                        strategy=f"{NAME}:{construction}", steps=steps,
                        assumptions=(f"|l_i| <= {bound:g}",), domain=domain)


def derive(request: Request) -> Measure:
    from ..verify import estimator_variance

    _check(request)
    d, bound = request.d, request.bound
    probes = (np.linspace(-bound, bound, d), np.linspace(0.2 * bound, bound, d))
    scored = []
    for construction in CONSTRUCTIONS:
        measure = construct(request, construction)
        variance = max(estimator_variance(measure, spectrum) for spectrum in probes)
        scored.append((variance, construction, measure))
    scored.sort(key=lambda item: (not math.isfinite(item[0]), item[0]))
    variance, _, best = scored[0]
    comparison = ", ".join(f"{name}: {v:.3g}" for v, name, _ in scored)
    return best.with_steps(f"per-sample variance of the estimate at the domain bound — {comparison}; "
                           f"kept the lowest", variance_per_sample=variance)


STRATEGIES = (
    Strategy(NAME, SUMMARY, derive),
    *(Strategy(name, f"Theorem 6 with the {name} construction (needs --d and --bound)",
               lambda request, name=name: construct(request, name), auto=False) for name in CONSTRUCTIONS),
)
