"""Moments and cumulants of Q = 1/2 v^T H v for v ~ N(0, I_d), in power sums.

The cumulant generating function is K(s) = -1/2 sum_i log(1 - s l_i), so the k-th
cumulant is kappa_k = (k-1)!/2 * p_k with p_k = sum_i l_i**k. Raw moments and cumulants
convert into each other by the usual recursion; both directions live here so the
moment strategy (cumulants -> phi) and the verifier (psi -> closed form) agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

from .spectral import power_sum


def gaussian_cumulant(k: int) -> sp.Expr:
    """kappa_k of Q under the standard Gaussian: (k-1)!/2 * p_k."""
    return sp.factorial(k - 1) / 2 * power_sum(k)


def raw_from_cumulants(kappas: Sequence[sp.Expr]) -> list[sp.Expr]:
    """[mu_1, ..., mu_K] from [kappa_1, ..., kappa_K]: mu_n = sum C(n-1, j-1) kappa_j mu_(n-j)."""
    mus: list[sp.Expr] = [sp.Integer(1)]
    for n in range(1, len(kappas) + 1):
        mus.append(sp.expand(sum(sp.binomial(n - 1, j - 1) * kappas[j - 1] * mus[n - j] for j in range(1, n + 1))))
    return mus[1:]


def cumulants_from_raw(mus: Sequence[sp.Expr]) -> list[sp.Expr]:
    """[kappa_1, ..., kappa_K] from [mu_1, ..., mu_K] (the inverse recursion)."""
    kappas: list[sp.Expr] = []
    full = [sp.Integer(1), *mus]
    for n in range(1, len(mus) + 1):
        lower = sum(sp.binomial(n - 1, j - 1) * kappas[j - 1] * full[n - j] for j in range(1, n))
        kappas.append(sp.expand(full[n] - lower))
    return kappas


def gaussian_raw_moment(k: int) -> sp.Expr:
    """E[Q**k] for v ~ N(0, I_d), as a polynomial in power sums."""
    return raw_from_cumulants([gaussian_cumulant(j) for j in range(1, k + 1)])[k - 1]
