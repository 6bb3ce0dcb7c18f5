"""Moments and cumulants of Q = 1/2 v^T H v for v ~ N(0, I_d), in power sums.

The cumulant generating function is K(s) = -1/2 sum_i log(1 - s l_i), so the k-th
cumulant is kappa_k = (k-1)!/2 * p_k with p_k = sum_i l_i**k. Raw moments and cumulants
convert into each other by the usual recursion; both directions live here so the
moment strategy (cumulants -> phi) and the verifier (psi -> closed form) agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

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


def linear_estimator_variance(weights: Sequence[float], power_sums: Sequence[float]) -> float:
    """Per-sample variance of the moments estimator of sum_k w_k p_k (delta method, exact arithmetic).

    The estimator is phi(sample means of Q, ..., Q^K) with phi = sum_k w_k 2 kappa_k / (k-1)!
    and kappa_k the cumulant polynomial in the raw moments, so its variance per sample is
    g^T Cov(Q^j, Q^k) g with g = grad phi, Cov = mu_(j+k) - mu_j mu_k. ``power_sums`` holds
    p_1..p_2K. Fractions keep the large cancelling moments exact (mu_24 ~ (d*bound/2)^24).
    """
    order = len(weights)
    p = [Fraction(x) for x in power_sums[: 2 * order]]
    if len(p) < 2 * order:
        raise ValueError(f"need power sums p_1..p_{2 * order}")
    kappas = [math.factorial(k - 1) * p[k - 1] / 2 for k in range(1, 2 * order + 1)]
    mus = [Fraction(1)]
    for n in range(1, 2 * order + 1):
        mus.append(sum(math.comb(n - 1, j - 1) * kappas[j - 1] * mus[n - j] for j in range(1, n + 1)))
    # Forward-mode Jacobian of kappa_1..kappa_K in mu_1..mu_K (the inverse recursion).
    jacobian: list[list[Fraction]] = []
    for n in range(1, order + 1):
        row = [Fraction(int(j == n - 1)) for j in range(order)]
        for j in range(1, n):
            c = math.comb(n - 1, j - 1)
            row = [r - c * (jacobian[j - 1][i] * mus[n - j] + kappas[j - 1] * int(i == n - j - 1))
                   for i, r in enumerate(row)]
        jacobian.append(row)
    g = [sum(Fraction(weights[k]) * 2 / math.factorial(k) * jacobian[k][i] for k in range(order))
         for i in range(order)]
    variance = sum(g[i] * g[j] * (mus[i + j + 2] - mus[i + 1] * mus[j + 1])
                   for i in range(order) for j in range(order))
    return float(variance)
