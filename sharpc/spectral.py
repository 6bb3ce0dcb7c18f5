"""The target language's SymPy vocabulary: reductions over the Hessian spectrum.

A target is an ordinary SymPy expression whose only spectral pieces are the
reductions below, each applied to a *body* written in the generic eigenvalue
``lam``. ``ESum(lam**2)`` is sum_i l_i**2 and ``EProd(1 - lam/10)`` is
prod_i (1 - l_i/10), for a spectrum of length ``d`` (the symbol ``D`` unless the
user gives a number).

The reductions canonicalize on construction (linearity of sums, multiplicativity
of products), so ``sum(2*l**2 + 1)`` and ``2*sum(l**2) + d`` are the same object.
Every strategy then reads atoms such as ``ESum(lam**k)`` off one canonical form
instead of re-deriving those rules itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

#: The generic eigenvalue inside a reduction's body.
lam = sp.Symbol("lambda", real=True)
#: The number of eigenvalues (perturbed parameters) when not given.
D = sp.Symbol("d", positive=True, integer=True)
#: The perturbation radius, for scales that depend on it (SAM's target is rho**2 * R).
RHO = sp.Symbol("rho", positive=True)


def _expand_poly(body: sp.Expr) -> sp.Expr:
    """Expand products and integer powers only: exp(a + b) and logs stay as written."""
    return sp.expand(body, power_exp=False, power_base=False, log=False, multinomial=True, mul=True)


class _Reduction(sp.Function):
    """A reduction of one body over the spectrum; subclasses define the algebra."""

    nargs = 1
    is_real = True

    @property
    def body(self) -> sp.Expr:
        return self.args[0]

    def _sympystr(self, printer) -> str:
        return f"{self.label}({printer.doprint(self.body.subs(lam, _L_PRINT))})"


# Printing bodies with the user's own letter reads better than "lambda".
_L_PRINT = sp.Symbol("l")


class ESum(_Reduction):
    """sum_i body(l_i): linear in its body, so constants and sums are pulled out."""

    label = "sum"

    @classmethod
    def eval(cls, body):
        if not body.has(lam):
            return body * D
        body = _expand_poly(body)
        if body.is_Add:
            return sp.Add(*(cls(term) for term in body.args))
        coeff, rest = body.as_independent(lam, as_Add=False)
        if coeff != 1:
            return coeff * cls(rest)
        return None


class EProd(_Reduction):
    """prod_i body(l_i): multiplicative, with linear bodies normalized to 1 + s*l."""

    label = "prod"

    @classmethod
    def eval(cls, body):
        if not body.has(lam):
            return body**D
        if body.is_Mul:
            return sp.Mul(*(cls(factor) for factor in body.args))
        if body.is_Pow and body.exp.is_Integer:  # prod(x**e) = prod(x)**e needs an integer e
            return cls(body.base) ** body.exp
        if isinstance(body, sp.exp):
            return sp.exp(ESum(body.args[0]))
        if body.is_Add:
            poly = sp.Poly(body, lam) if body.is_polynomial(lam) else None
            if poly is not None and poly.degree() == 1:
                slope, const = poly.all_coeffs()
                if const != 0 and const != 1:
                    return const**D * cls(1 + (slope / const) * lam)
        return None


class EMax(_Reduction):
    """max_i body(l_i)."""

    label = "max"

    @classmethod
    def eval(cls, body):
        if not body.has(lam):
            return body
        return None


class EMin(_Reduction):
    """min_i body(l_i)."""

    label = "min"

    @classmethod
    def eval(cls, body):
        if not body.has(lam):
            return body
        return None


class Eig(sp.Function):
    """The k-th largest eigenvalue, k = 0, 1, ... (negative k counts from the smallest)."""

    nargs = 1
    is_real = True
    is_number = False  # a numeric argument does not make it a number: it depends on H

    def _sympystr(self, printer) -> str:
        return f"l[{printer.doprint(self.args[0])}]"


REDUCTIONS: tuple[type[_Reduction], ...] = (ESum, EProd, EMax, EMin)


def reductions(expr: sp.Expr) -> set[sp.Expr]:
    """All spectral atoms (reductions and sorted eigenvalues) in ``expr``."""
    return set(expr.atoms(*REDUCTIONS, Eig))


def power_sum(k: int) -> sp.Expr:
    """p_k = sum_i l_i**k, in canonical form."""
    return ESum(lam**k)


def eigenvalue_symbols(d: int) -> tuple[sp.Symbol, ...]:
    """Explicit real symbols l_1 .. l_d for a concrete spectrum length."""
    return sp.symbols(f"l1:{d + 1}", real=True)


def expand_spectrum(expr: sp.Expr, eigenvalues: Sequence[sp.Expr]) -> sp.Expr:
    """Replace every reduction by its explicit form over ``eigenvalues``.

    Sorted eigenvalues ``Eig(k)`` are only meaningful for numbers: with symbols
    they are left in place (callers that need them substitute sorted values).
    """
    d = len(eigenvalues)
    replacements = {}
    for atom in sorted(reductions(expr), key=sp.default_sort_key):
        if isinstance(atom, Eig):
            continue
        terms = [atom.body.subs(lam, ev) for ev in eigenvalues]
        combine = {ESum: sp.Add, EProd: sp.Mul, EMax: sp.Max, EMin: sp.Min}[type(atom)]
        replacements[atom] = combine(*terms)
    return expr.xreplace(replacements).subs(D, d)


def substitute_d(expr: sp.Expr, d: int | None) -> sp.Expr:
    """Bind the spectrum length when it is known."""
    return expr if d is None else expr.subs(D, d)


class RootEig(sp.Function):
    """The k-th largest root (real part) of s^d + a_1 s^(d-1) + ... + a_d: RootEig(k, a_1, ..., a_d).

    The universality constructions recover prod_i (1 - l_i s) = 1 + a_1 s + ... + a_d s^d
    from integrals; its reversed polynomial has the eigenvalues as roots. Real parts keep the
    map continuous when sampling noise pushes a pair of roots off the real axis.
    """

    is_real = True

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        """Implicit differentiation of p(r) = r^d + sum_j a_j r^(d-j) = 0: dr/da_j = -r^(d-j) / p'(r)."""
        if argindex == 1:
            return sp.Integer(0)
        root, coefficients = self, self.args[1:]
        d = len(coefficients)
        slope = d * root ** (d - 1) + sum((d - j) * a * root ** (d - j - 1) for j, a in enumerate(coefficients, 1))
        return -root ** (d - (argindex - 1)) / slope

    def _sympystr(self, printer) -> str:
        return f"root_{printer.doprint(self.args[0])}({', '.join(map(printer.doprint, self.args[1:]))})"



class HEntry(sp.Function):
    """The Hessian entry H[i, j] (symmetric: stored with i <= j) for matrix targets (Theorem 7)."""

    nargs = 2
    is_real = True

    @classmethod
    def eval(cls, i, j):
        if i.is_Integer and j.is_Integer and i > j:
            return cls(j, i)
        return None

    def _sympystr(self, printer) -> str:
        return f"H[{printer.doprint(self.args[0])}, {printer.doprint(self.args[1])}]"


def hessian_matrix(d: int) -> sp.Matrix:
    """The symmetric matrix of entries HEntry(i, j)."""
    return sp.Matrix(d, d, lambda i, j: HEntry(i, j))


def is_matrix_target(expr: sp.Expr) -> bool:
    return expr.has(HEntry)
