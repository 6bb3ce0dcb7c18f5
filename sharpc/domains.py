"""Where a target is a finite real number: a box of spectra, inferred or refused.

``log(sum(l))`` is real only where sum(l) > 0, ``1/sum(l**2)`` only where some l_i != 0. A
measure's domain is a box lower <= l_i <= upper, so this module finds the widest of a few
candidate boxes (all reals, l_i >= 0, l_i > 0) on which every logarithm's argument is provably
positive, every denominator provably non-zero and every fractional power's base provably
non-negative, by SymPy's assumptions on stand-in symbols for the spectral atoms. A target for
which no candidate works is refused in one line, naming the sub-expression.
"""

from __future__ import annotations

import math

import sympy as sp

from .errors import DerivationError
from .measure import Domain
from .spectral import Eig, EProd, ESum, lam, reductions

#: Narrower boxes tried, in order, when the target is not defined on the measure's own domain.
_NARROWER = (
    Domain(lower=0.0, reason="the target needs a non-negative spectrum"),
    Domain(lower=0.0, strict_lower=True, reason="the target needs a positive spectrum"),
)


def _eigenvalue(domain: Domain) -> sp.Expr:
    """A fresh expression ranging over the box exactly, so SymPy's assumptions know its bounds."""
    free = sp.Dummy("p", positive=True) if domain.strict_lower else sp.Dummy("p", nonnegative=True)
    low, high = (None if math.isinf(x) else sp.Rational(repr(x)) for x in (domain.lower, domain.upper))
    if low is None and high is None:
        return sp.Dummy("l", real=True)
    if high is None:
        return low + free
    if low is None:
        return high - sp.Dummy("p", nonnegative=True)
    return low + (high - low) * free / (1 + free)


def _stand_in(atom: sp.Expr, domain: Domain) -> sp.Expr:
    """An expression with the sign facts of ``atom`` when every eigenvalue lies in ``domain``."""
    eigenvalue = _eigenvalue(domain)  # fresh per atom: max(l) - min(l) must not cancel
    if isinstance(atom, Eig):
        return eigenvalue
    body = atom.body.xreplace({lam: eigenvalue})
    if isinstance(atom, (ESum, EProd)):
        return _sign_symbol(body, nonzero_sum=isinstance(atom, ESum))
    return body  # max/min of a body: the body's sign facts hold for the extremum


def _sign_symbol(body: sp.Expr, nonzero_sum: bool) -> sp.Symbol:
    """A fresh symbol carrying what a sum (or product) of terms like ``body`` is known to be."""
    if body.is_positive:
        return sp.Dummy(positive=True)
    if body.is_nonnegative:
        return sp.Dummy(nonnegative=True)
    if body.is_negative:
        return sp.Dummy(negative=True) if nonzero_sum else sp.Dummy(nonzero=True, real=True)
    if body.is_nonpositive:
        return sp.Dummy(nonpositive=True)
    if body.is_nonzero and not nonzero_sum:
        return sp.Dummy(nonzero=True, real=True)
    return sp.Dummy(real=True)


def _problem(expr: sp.Expr) -> sp.Expr | None:
    """The first sub-expression whose argument is not provably in its function's domain."""
    if expr.has(sp.I):  # SymPy already took a root or log of a provably negative argument
        return expr
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.log) and not node.args[0].is_positive:
            return node
        if node.is_Pow and not node.base.is_number:
            exponent = node.exp
            if exponent.is_negative and not node.base.is_nonzero:
                return node
            if not exponent.is_integer and not (node.base.is_positive if exponent.is_negative
                                                  else node.base.is_nonnegative):
                return node
    return None


#: Every real spectrum: where inference starts.
ALL_REAL = Domain()


def infer_domain(target: sp.Expr, domain: Domain = ALL_REAL) -> Domain:
    """``domain`` when ``target`` is a finite real on it, else the first narrower box where it is.

    A DerivationError names the sub-expression when no candidate box works.
    """
    atoms = sorted(reductions(target), key=sp.default_sort_key)
    bodies = [atom.body for atom in atoms if not isinstance(atom, Eig)]
    for candidate in (domain, *(_intersect_or_none(domain, box) for box in _NARROWER)):
        if candidate is None:
            continue
        try:
            outer = target.xreplace({atom: _stand_in(atom, candidate) for atom in atoms})
            inner = [body.xreplace({lam: _eigenvalue(candidate)}) for body in bodies]
        except (ValueError, TypeError):  # Min/Max of stand-ins SymPy cannot order: not provable here
            continue
        if all(_problem(expr) is None for expr in (outer, *inner)):
            return candidate
    raise DerivationError(f"cannot tell on which spectra {sp.sstr(target)} is a finite real number (a log needs a "
                          "positive argument, a denominator a non-zero one, a fractional power a non-negative "
                          "base), even for positive spectra; write the target so that it is defined there, "
                          "e.g. with abs(...) or + 1")


def _intersect_or_none(first: Domain, second: Domain) -> Domain | None:
    try:
        return intersect(first, second)
    except DerivationError:
        return None


def intersect(first: Domain, second: Domain) -> Domain:
    """The box where both hold (the stricter lower bound's strictness wins on ties)."""
    if first.lower != second.lower:
        low = first if first.lower > second.lower else second
        lower, strict = low.lower, low.strict_lower
    else:
        lower, strict = first.lower, first.strict_lower or second.strict_lower
    upper = min(first.upper, second.upper)
    reason = "; ".join(r for r in (first.reason, second.reason) if r)
    if lower > upper or (strict and lower == upper) or math.isnan(lower) or math.isnan(upper):
        raise DerivationError(f"the measure's domain ({first.describe()}) and the target's ({second.describe()}) "
                              "have no spectrum in common")
    return Domain(lower=lower, upper=upper, strict_lower=strict, reason=reason)
