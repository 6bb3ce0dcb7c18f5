"""max(l), min(l) and max(abs(l)) for any d, approximately: p-norms of power sums.

For x_i >= 0, max(x) <= ||x||_q = (sum x_i^q)^(1/q) <= d^(1/q) max(x). With |l_i| <= bound:

    max(l)      ~ (sum (bound + l_i)^q)^(1/q) - bound   error in [0, (d^(1/q) - 1) * 2 bound]
    min(l)      = -max(-l), the same with bound - l_i   error in [-(d^(1/q) - 1) * 2 bound, 0]
    max(abs(l)) ~ (sum l_i^q)^(1/q), q even             error in [0, (d^(1/q) - 1) * bound]

Each surrogate is a function of the power sums p_1..p_q (binomial expansion), so the moments
strategy compiles it exactly for symbolic d. A larger q shrinks the error but the estimator's
variance grows like (d bound^2)^q: q is chosen like the Chebyshev degree, minimizing
bias^2 + variance / budget. ``l[0]`` and ``l[-1]`` are max(l) and min(l); other sorted
eigenvalues have no surrogate here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp

from ..cumulants import linear_estimator_variance
from ..measure import Domain, Measure
from ..spectral import D, Eig, EMax, EMin, ESum, lam, reductions
from . import Decline, Request, Strategy, affine_in, extremes_as_reductions, moments
from .chebyshev import DEFAULT_SIZE, power_sum_weights

NAME = "surrogate"
SUMMARY = "max(l), min(l), max(abs(l)) for any d via p-norms of power sums (needs --bound)"
MAX_ORDER = moments.MAX_ORDER


@dataclass(frozen=True)
class Norm:
    """max over the spectrum of ``body`` (l, -l or |l|), as a q-norm of ``shift + body``."""

    body: sp.Expr
    shift: float
    even_only: bool

    def inner(self, q: int) -> sp.Expr:
        """sum((shift + body)^q) as a polynomial in power sums (|l|^q = l^q for even q)."""
        base = lam if self.even_only else self.shift + self.body
        return ESum(sp.nsimplify(base) ** q)

    def surrogate(self, q: int) -> sp.Expr:
        return self.inner(q) ** sp.Rational(1, q) - sp.nsimplify(self.shift)

    def reach(self, bound: float) -> float:
        """The largest entry of shift + body on the domain: the error is (d^(1/q) - 1) times this at most."""
        return self.shift + bound

    def probes(self, size: int, bound: float) -> list[list[tuple[int, float]]]:
        """Spectra (multiplicity, eigenvalue) where the variance is measured: where the norm is large."""
        top = bound if self.body != -lam else -bound
        return [[(size, top)], [(size - size // 2, top), (size // 2, -top)], [(1, top), (size - 1, 0.0)]]


def _norm(request: Request) -> tuple[sp.Expr, sp.Expr, Norm]:
    """(c, k, norm) with target = c * max(body) + k."""
    target = extremes_as_reductions(request, "l[{k}] has no surrogate (only l[0] = max(l) and l[-1] = min(l)); "
                                             "it needs Theorem 6 with --d at most 8 and --bound")
    atoms = reductions(target)
    if len(atoms) != 1 or not isinstance(next(iter(atoms)), (EMax, EMin)):
        raise Decline("not c * max(l) + k, c * min(l) + k or c * max(abs(l)) + k")
    (atom,) = atoms
    fit = affine_in(target, atom)
    if fit is None:
        raise Decline("max/min enter non-linearly; only c * max(...) + k is approximated")
    c, k = fit
    sign = 1 if isinstance(atom, EMax) else -1  # min(b) = -max(-b)
    body = sign * atom.body
    if body in (lam, -lam):
        return sign * c, k, Norm(body, request.bound, even_only=False)
    if body == sp.Abs(lam) and sign == 1:
        return c, k, Norm(body, 0.0, even_only=True)
    if body == -sp.Abs(lam):
        raise Decline("no p-norm surrogate for min(abs(l)): the smallest |l| would need negative powers")
    raise Decline(f"no p-norm surrogate for {sp.sstr(atom)}: only max/min of l and max(abs(l))")


@dataclass(frozen=True)
class Candidate:
    """One order q: the surrogate, its error bound and its estimator variance at the probe size."""

    order: int
    surrogate: sp.Expr
    bias: float
    variance: float

    def risk(self, budget: int) -> float:
        return self.bias**2 + self.variance / budget


def _variance(norm: Norm, q: int, c: float, size: int, bound: float) -> float:
    """Delta method: Var(c * L^(1/q)) = (c L^(1/q - 1) / q)^2 Var(L), L = sum (shift + body)^q."""
    inner = norm.inner(q)
    weights = power_sum_weights(inner, size)
    constant = float(sp.sympify(inner.xreplace({a: 0 for a in reductions(inner)})).subs(D, size))
    worst = 0.0
    for spectrum in norm.probes(size, bound):
        p = [sum(m * x**k for m, x in spectrum) for k in range(1, 2 * len(weights) + 1)]
        level = constant + sum(w * pk for w, pk in zip(weights, p))
        slope = c * level ** (1 / q - 1) / q
        worst = max(worst, slope**2 * linear_estimator_variance(weights, p))
    return worst


def derive(request: Request) -> Measure:
    if not request.target.has(EMax, EMin, Eig):
        raise Decline("no max, min or l[k] in the target")
    if request.bound is None:
        raise Decline("the max/min surrogates need --bound (|l_i| <= bound)")
    c, k, norm = _norm(request)
    size = request.d or request.size or DEFAULT_SIZE
    orders = [q for q in range(1, MAX_ORDER + 1) if not (norm.even_only and q % 2)]
    if request.degree is not None:
        if request.degree not in orders:
            raise Decline(f"order q = {request.degree} is not one of {orders}")
        orders = [request.degree]
    scale = abs(float(c.subs(D, size)))
    found = [Candidate(q, k + c * norm.surrogate(q), scale * (size ** (1 / q) - 1) * norm.reach(request.bound),
                       _variance(norm, q, scale, size, request.bound)) for q in orders]
    chosen = min(found, key=lambda cand: cand.risk(request.budget))
    q = chosen.order
    exact = moments.derive(replace(request, target=chosen.surrogate))
    bound = sp.Abs(c) * (D ** sp.Rational(1, q) - 1) * sp.nsimplify(norm.reach(request.bound))
    bound = bound if request.d is None else sp.Float(float(bound.subs(D, request.d)), 4)
    table = "; ".join(f"q={cand.order}: bias {cand.bias:.3g}, var {cand.variance:.3g}" for cand in found)
    steps = (
        f"target = {sp.sstr(request.target)}",
        f"max(x) <= ||x||_q <= d^(1/q) max(x) for x >= 0: surrogate {sp.sstr(chosen.surrogate)} (q = {q})",
        f"q = {q} minimizes bias^2 + variance/n at d = {size}, n = {request.budget} samples per step ({table})"
        if request.degree is None else "order q fixed by the caller",
        f"approximation error |target - S| <= {sp.sstr(bound)} (one-sided: the norm overestimates a max)",
        f"per-sample variance of the estimate at d = {size}, spectra at the bound: {chosen.variance:.3g}",
        *exact.steps[1:],
    )
    domain = Domain(lower=-request.bound, upper=request.bound,
                    reason=f"|l_i| <= {request.bound:g} (the shifted norm needs bound + l_i >= 0)")
    return replace(exact, target=request.target, approximant=chosen.surrogate, exact=False, strategy=NAME,
                   steps=steps, domain=domain, error_bound=bound, variance_per_sample=chosen.variance,
                   assumptions=(f"|l_i| <= {request.bound:g}", f"approximation: |target - S| <= {sp.sstr(bound)}"))


STRATEGIES = (Strategy(NAME, SUMMARY, derive),)
