"""Independent numerical oracles for integrals of psi(Q), Q = 1/2 v^T H v.

None of these use sharpc's cumulant algebra or closed forms: moments come from the
multinomial expansion with chi-square moments, the rest from numerical quadrature.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
from scipy import integrate


def gaussian_moment(spectrum, k: int) -> float:
    """E[Q^k] for v ~ N(0, I): Q = 1/2 sum l_i x_i with x_i = z_i^2 independent, E[x^j] = (2j-1)!!."""
    xs = sp.symbols(f"x0:{len(spectrum)}")
    poly = sp.Poly(sp.expand((sp.Rational(1, 2) * sum(sp.Float(l, 30) * x for l, x in zip(spectrum, xs))) ** k), *xs)
    total = 0.0
    for powers, coeff in poly.terms():
        total += float(coeff) * math.prod(sp.factorial2(2 * j - 1) if j else 1 for j in powers)
    return total


def gaussian_expectation(spectrum, psi) -> float:
    """E[psi(Q)] for v ~ N(0, I) by quadrature over the chi-square variables (d <= 2)."""
    if len(spectrum) == 1:
        f = lambda z: psi(0.5 * spectrum[0] * z * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        return integrate.quad(f, -40, 40, limit=200, points=[0.0])[0]
    f = lambda z2, z1: psi(0.5 * (spectrum[0] * z1 * z1 + spectrum[1] * z2 * z2)) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)
    return integrate.dblquad(f, -12, 12, -12, 12)[0]


def sphere_expectation(spectrum, psi) -> float:
    """E[psi(Q)] for v uniform on the circle (d = 2) by quadrature over the angle."""
    f = lambda a: psi(0.5 * (spectrum[0] * math.cos(a) ** 2 + spectrum[1] * math.sin(a) ** 2))
    return integrate.quad(f, 0, 2 * math.pi)[0] / (2 * math.pi)


def lebesgue_integral(spectrum, psi) -> float:
    """int psi(Q) dv over R^d (d <= 2) by quadrature."""
    if len(spectrum) == 1:
        return integrate.quad(lambda v: psi(0.5 * spectrum[0] * v * v), -np.inf, np.inf)[0]
    f = lambda y, x: psi(0.5 * (spectrum[0] * x * x + spectrum[1] * y * y))
    return integrate.dblquad(f, -40, 40, -40, 40)[0]
