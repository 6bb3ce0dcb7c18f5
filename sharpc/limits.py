"""Work bounds checked *before* SymPy starts a job: estimated terms of an expansion.

SymPy's cost is roughly the number of terms it creates. ``expanded_terms`` bounds that
number for ``sp.expand(expr)`` without expanding, so each place that expands user-sized
expressions (the parser's reductions and matrices, the moments strategy's phi, symmetrize,
the certificate) can refuse in milliseconds with a message naming its limit, instead of
running for minutes. The estimate is an upper bound on the terms before like terms merge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import sympy as sp

from .spectral import D

#: Terms a derived phi (or an expanded intermediate polynomial) may have.
MAX_PHI_TERMS = 3000
#: Bits of the largest numerator or denominator of any exact number built (2**(d/2) at d = 10**12
#: would take SymPy hours to compute exactly, and Python refuses to print it past 4300 digits).
MAX_BITS = 8192


def radicals(expr: sp.Expr) -> tuple[int, int]:
    """(product of nested root denominators, most bits of a number) in ``expr``."""
    if expr.is_Rational:
        return 1, max(expr.p.bit_length(), expr.q.bit_length())
    if expr.is_Pow and expr.exp.is_Rational:
        root, bits = radicals(expr.base)
        return root * expr.exp.q, bits
    parts = [radicals(arg) for arg in expr.args]
    return max((root for root, _ in parts), default=1), max((bits for _, bits in parts), default=0)


def bits_of_power(power: sp.Pow, d: int) -> float:
    """Roughly how many bits the exact value of ``c**(k*D)`` takes at this d (0 if not that)."""
    exponent = power.exp.subs(D, d)
    if not (power.base.is_number and power.exp.has(D) and exponent.is_Rational):
        return 0
    return max(radicals(power.base)[1] - 1, 0) * abs(exponent)  # (-1)**D costs nothing


def too_large_at(expr: sp.Expr, d: int) -> sp.Pow | None:
    """A power c**(k*D) in ``expr`` whose exact value at this d exceeds MAX_BITS, if there is one."""
    return next((p for p in expr.atoms(sp.Pow) if bits_of_power(p, d) > MAX_BITS), None)


def expanded_terms(expr: sp.Expr, cap: int, sizes: Mapping[sp.Expr, int] | None = None) -> int:
    """An upper bound, saturating just above ``cap``, on the terms ``sp.expand(expr)`` makes.

    ``sizes`` counts some atoms as sums of that many terms (a power sum p_k once it is
    written in raw moments, say); every other atom counts 1.
    """
    sizes = sizes or {}
    if expr in sizes:
        return min(sizes[expr], cap + 1)
    if expr.is_Add:
        return min(sum(expanded_terms(arg, cap, sizes) for arg in expr.args), cap + 1)
    if expr.is_Mul:
        count = 1
        for arg in expr.args:
            count = min(count * expanded_terms(arg, cap, sizes), cap + 1)
        return count
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        return _monomials(expanded_terms(expr.base, cap, sizes), int(expr.exp), cap)
    if all(arg.is_Number for arg in expr.args):  # a symbol, a number, H[i, j]
        return 1
    # Functions and other powers are not multiplied out, but their arguments are expanded.
    return max(1, min(sum(expanded_terms(arg, cap, sizes) for arg in expr.args), cap + 1))


def _monomials(k: int, n: int, cap: int) -> int:
    """Monomials of degree n in k terms, C(n + k - 1, n), saturating above cap."""
    count, top, m = 1, max(n, k - 1), min(n, k - 1)
    for i in range(1, m + 1):
        count = count * (top + i) // i
        if count > cap:
            return cap + 1
    return count


def leibniz_terms(d: int, entry_terms: int, cap: int) -> int:
    """Terms of a d x d determinant expanded by Leibniz's formula, saturating above cap."""
    count = math.factorial(d)
    for _ in range(d):
        count = min(count * entry_terms, cap + 1)
    return min(count, cap + 1)
