"""Derivation strategies: target -> Measure, tried in a documented order.

Each strategy module lists its :class:`Strategy` entries in ``STRATEGIES``; a strategy's
``derive(request) -> Measure`` raises :class:`Decline` with a reason when the target is not
of its form. The registry order is the order of preference, cheapest exact form first:

    dirac        Theorem 7 for targets in the Hessian matrix H (Dirac measures)
    table1       the paper's Table 1 rows (trace, Frobenius, det / log det, prod(1 - s l))
    mgf          Gaussian moment generating function: sum(log(1 - s l)), prod(1 - s l)**a
    moments      polynomials in power sums (any d) or symmetric polynomials (concrete d)
    universal    Theorem 6 for any function of the spectrum (concrete d, |l_i| <= bound),
                 choosing the lower-variance construction; ``vandermonde`` and
                 ``power-roots`` force one (they are never tried automatically)
    chebyshev    sum(f(l)) for continuous f on [-bound, bound] and any d, approximately:
                 a Chebyshev polynomial of f, then the moments strategy
    surrogate    max(l), min(l), max(abs(l)) for any d, approximately: p-norms of power sums
    sum          A + B where the strategies above represent A and B: both measures side by side
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import sympy as sp

from ..domains import infer_domain
from ..errors import DerivationError
from ..limits import MAX_PHI_TERMS, expanded_terms, too_large_at
from ..measure import Measure
from ..spectral import Eig, EMax, EMin, EProd, ESum, is_matrix_target, lam, reductions, substitute_d


class Decline(Exception):
    """A strategy does not apply to this target; the message says why."""


@dataclass(frozen=True)
class Request:
    """What the user asked for: the parsed target and the compile options."""

    source: str
    target: sp.Expr
    d: int | None = None
    det_sampling: str = "lebesgue"
    half_width: float = 1.0
    lower_bound: float = 1.0
    bound: float | None = None
    force: bool = False
    #: Approximating strategies: a fixed polynomial degree, else the one minimizing
    #: bias^2 + variance/budget at spectrum length ``size`` (d when it is given).
    degree: int | None = None
    budget: int = 16
    size: int | None = None


class Strategy(NamedTuple):
    """A named derivation; ``auto`` strategies are tried in order when none is forced.

    ``matrix`` strategies take targets in the Hessian matrix H, the others targets in its
    eigenvalues: each kind declines the other's targets before looking at them.
    """

    name: str
    summary: str
    derive: Callable[[Request], Measure]
    auto: bool = True
    matrix: bool = False


def affine_in(target: sp.Expr, atom: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
    """(c, k) with target == c * atom + k and c, k free of spectral atoms, else None."""
    y = sp.Dummy("y")
    replaced = target.xreplace({atom: y})
    if reductions(replaced) or expanded_terms(replaced, MAX_PHI_TERMS) > MAX_PHI_TERMS:
        return None  # other atoms remain, or too large to be c * atom + k for a readable c
    slope = sp.expand(sp.diff(replaced, y))
    if slope.has(y) or slope == 0:
        return None
    return slope, sp.expand(replaced.subs(y, 0))


def extremes_as_reductions(request: Request, refusal: str) -> sp.Expr:
    """The target with l[0] written max(l) and l[-1] (l[d-1]) min(l); another l[k] is declined
    with ``refusal`` (it may name k)."""
    target = request.target
    for eig in target.atoms(Eig):
        k = int(eig.args[0])
        if k == 0:
            target = target.xreplace({eig: EMax(lam)})
        elif k == -1 or (request.d is not None and k == request.d - 1):
            target = target.xreplace({eig: EMin(lam)})
        else:
            raise Decline(refusal.format(k=k))
    return target


def sign_of(factor: sp.Expr) -> int:
    """+1 or -1 for a factor whose sign SymPy can decide for every d >= 1."""
    if factor.is_positive:
        return 1
    if factor.is_negative:
        return -1
    raise Decline(f"cannot decide the sign of the factor {sp.sstr(factor)} for every d")


def tuple_text(exprs: tuple[sp.Expr, ...]) -> str:
    """psi as people write it: ``t`` for one component, ``(t, t**2)`` for several."""
    text = ", ".join(map(sp.sstr, exprs))
    return text if len(exprs) == 1 else f"({text})"


def relation(scale: sp.Expr, sign: int, offset: sp.Expr) -> str:
    """The derivation's last line: how the target relates to S = phi(E psi)."""
    text = "S" if sign > 0 else "-S"
    if scale != 1:
        text = f"{sp.sstr(scale)} * ({text})" if sign < 0 else f"{sp.sstr(scale)} * S"
    if offset != 0:
        text += f" + {sp.sstr(offset)}"
    return f"target = {text}" + (" (phi carries the sign)" if sign < 0 else "")


def make_measure(request: Request, **fields) -> Measure:
    """A Measure for ``request``, with the spectrum length bound wherever it is known.

    A constant exponential in d, (2 pi)**(d/2) say, is declined where its exact value at this d
    would be too large to compute (SymPy would take hours at d = 10**12): with d left symbolic,
    the optimizer binds it to the parameter count at run time and evaluates it in floating point.
    """
    if request.d is not None:
        for expr in (*(fields.get(key, 0) for key in ("phi", "scale", "offset")), *fields["psi"]):
            power = too_large_at(sp.sympify(expr), request.d)
            if power is not None:
                raise Decline(f"its constant {sp.sstr(power)} is too large to compute exactly at d = {request.d}; "
                              "compile without d (it is bound to the number of perturbed parameters at run time)")
        for key in ("phi", "scale", "offset"):
            if key in fields:
                fields[key] = substitute_d(fields[key], request.d)
        fields["psi"] = tuple(substitute_d(p, request.d) for p in fields["psi"])
    return Measure(source=request.source, target=request.target, d=request.d, **fields)


# The strategies import the helpers above.
from . import chebyshev, eigenvector, matrix, mgf, moments, sums, surrogate, table1, universal  # noqa: E402

#: Strategies in the order ``compile`` tries them.
REGISTRY: dict[str, Strategy] = {
    entry.name: entry for module in (matrix, table1, mgf, moments, universal, eigenvector, chebyshev, surrogate, sums)
    for entry in module.STRATEGIES
}


def _within_target_domain(measure: Measure) -> Measure:
    """The measure restricted to spectra where its target is a finite real (or a DerivationError)."""
    if is_matrix_target(measure.target):
        return measure
    domain = infer_domain(measure.target, measure.domain)
    if domain == measure.domain:
        return measure
    return replace(measure, domain=domain,
                   assumptions=measure.assumptions + (f"{domain.describe()} ({domain.reason})",))


def logs_of_products_as_sums(target: sp.Expr) -> sp.Expr:
    """log(prod(f)) as sum(log(f)), the form the log-det rows match: equal wherever every f > 0,
    the domain the derived measure then states (log det = sum(log(l)) for l > 0)."""
    return target.replace(lambda e: isinstance(e, sp.log) and isinstance(e.args[0], EProd),
                          lambda e: ESum(sp.log(e.args[0].args[0])))


def derive(request: Request, strategy: str | None = None) -> Measure:
    """The first strategy that accepts the target (or the one named), else a DerivationError."""
    request = replace(request, target=logs_of_products_as_sums(request.target))
    matrix_target = is_matrix_target(request.target)
    if strategy is not None:
        if strategy not in REGISTRY:
            raise DerivationError(f"unknown strategy {strategy!r}; choose from {', '.join(REGISTRY)}")
        candidates = [REGISTRY[strategy]]
    else:
        candidates = [entry for entry in REGISTRY.values() if entry.auto and entry.matrix == matrix_target]
    reasons = []
    for entry in candidates:
        try:
            if entry.matrix != matrix_target:
                raise Decline("targets in the matrix H need the dirac strategy" if matrix_target
                              else "takes targets in the matrix H only")
            return _within_target_domain(entry.derive(request))
        except Decline as why:
            reasons.append(f"{entry.name}: {why}")
    raise DerivationError(f"no strategy represents {request.source!r} — " + "; ".join(reasons))
