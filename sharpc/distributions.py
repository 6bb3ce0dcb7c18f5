"""Perturbation distributions mu: how to sample them, and what they integrate to.

Each distribution knows three things about itself, so no other module special-cases it:

* ``sample`` draws an ``(n, d)`` torch tensor for the optimizer (torch is imported lazily:
  the compile path must not pay for it);
* ``closed_form(psi)`` gives the integral of psi(1/2 v^T H v) d mu(v) as a spectral
  expression when one is known (the verifier's symbolic certificate);
* ``mc_sample`` draws numpy samples with importance weights (all ones for probability
  measures) for the verifier's Monte Carlo check.

``invariances`` names the groups G with g.mu = mu (Theorem 11): a G-invariant mu gives
a G-invariant sharpness measure whatever phi and psi are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import sympy as sp

from .cumulants import gaussian_raw_moment
from .spectral import D, EProd, lam

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

#: The scalar argument of psi.
t = sp.Symbol("t", real=True)


def _monomial_terms(psi: sp.Expr) -> list[tuple[sp.Expr, sp.Expr]]:
    """Split psi into (coefficient, basis term) pairs with t-free coefficients."""
    return [term.as_independent(t, as_Add=False) for term in sp.Add.make_args(sp.expand(psi, power_exp=False))]


def _exp_rate(basis: sp.Expr) -> sp.Expr | None:
    """s when basis == exp(s*t) with s a t-free constant."""
    if isinstance(basis, sp.exp):
        rate = sp.simplify(basis.args[0] / t)
        if not rate.has(t):
            return rate
    return None


def _power(basis: sp.Expr) -> int | None:
    """k when basis == t**k for a positive integer k (1 counts: t**1)."""
    if basis == t:
        return 1
    if basis.is_Pow and basis.base == t and basis.exp.is_Integer and basis.exp > 0:
        return int(basis.exp)
    if basis == 1:
        return 0
    return None


@dataclass(frozen=True)
class Distribution:
    """Base class: a (Borel) measure on R^d, independent of d until sampled."""

    name: ClassVar[str] = "distribution"
    invariances: ClassVar[tuple[str, ...]] = ()
    #: A point mass: one sample is the whole distribution.
    deterministic: ClassVar[bool] = False
    #: Total mass 1, so ``sample`` draws the measure itself (not, like Lebesgue, a stand-in).
    probability: ClassVar[bool] = True

    def describe(self) -> str:
        return self.name

    def sample(self, n: int, d: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def mc_sample(self, n: int, d: int, rng: np.random.Generator,
                  spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples v (n, d) and weights w (n,) with E[w psi(Q(v))] = integral of psi(Q) d mu."""
        raise NotImplementedError

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """The weight of each row of ``sample`` (1 for a probability measure), as the optimizer computes it."""
        return np.ones(len(rows))

    def closed_form(self, psi: sp.Expr) -> sp.Expr | None:
        """The integral of psi(1/2 v^T H v) d mu(v) in spectral atoms, or None if unknown."""
        return None


@dataclass(frozen=True)
class Gaussian(Distribution):
    """Standard normal N(0, I_d): moments from cumulants, exp(s Q) from the MGF."""

    name: ClassVar[str] = "gaussian"
    invariances: ClassVar[tuple[str, ...]] = ("orthogonal O(d)",)

    def describe(self) -> str:
        return "N(0, I_d)"

    def sample(self, n, d, *, generator=None, device=None, dtype=None):
        from .runtime import sample_rows

        return sample_rows("gaussian", n, d, generator=generator, device=device, dtype=dtype)

    def mc_sample(self, n, d, rng, spectrum):
        return rng.standard_normal((n, d)), np.ones(n)

    def closed_form(self, psi):
        total = sp.Integer(0)
        for coeff, basis in _monomial_terms(psi):
            k = _power(basis)
            rate = _exp_rate(basis)
            if k is not None:
                total += coeff * (gaussian_raw_moment(k) if k else 1)
            elif rate is not None:
                # E[exp(s Q)] = prod_i (1 - s l_i)^(-1/2), valid while s * l_i < 1.
                total += coeff * EProd(1 - rate * lam) ** sp.Rational(-1, 2)
            else:
                return None
        return total


@dataclass(frozen=True)
class Sphere(Distribution):
    """Uniform on the unit sphere S^(d-1), normalized over all d coordinates together.

    v = z/|z| with z Gaussian, and |z| is independent of z/|z|, so
    E_sphere[Q^k] = E_gauss[Q^k] / E|z|^(2k) = E_gauss[Q^k] / (d (d+2) ... (d+2k-2)).
    """

    name: ClassVar[str] = "sphere"
    invariances: ClassVar[tuple[str, ...]] = ("orthogonal O(d)",)

    def describe(self) -> str:
        return "Uniform(S^(d-1))"

    def sample(self, n, d, *, generator=None, device=None, dtype=None):
        from .runtime import sample_rows

        return sample_rows("sphere", n, d, generator=generator, device=device, dtype=dtype)

    def mc_sample(self, n, d, rng, spectrum):
        z = rng.standard_normal((n, d))
        return z / np.linalg.norm(z, axis=1, keepdims=True), np.ones(n)

    def closed_form(self, psi):
        total = sp.Integer(0)
        for coeff, basis in _monomial_terms(psi):
            k = _power(basis)
            if k is None:
                return None
            norm_moment = sp.Mul(*(D + 2 * j for j in range(k)))
            total += coeff * (gaussian_raw_moment(k) / norm_moment if k else 1)
        return total


@dataclass(frozen=True)
class Hypercube(Distribution):
    """Uniform on [-a, a]^d: the truncated Lebesgue measure, normalized to mass 1."""

    half_width: float = 1.0
    name: ClassVar[str] = "hypercube"
    invariances: ClassVar[tuple[str, ...]] = ("coordinate permutations", "coordinate sign flips")

    def describe(self) -> str:
        return f"Uniform([-{self.half_width:g}, {self.half_width:g}]^d)"

    def sample(self, n, d, *, generator=None, device=None, dtype=None):
        from .runtime import sample_rows

        return sample_rows("hypercube", n, d, half_width=self.half_width, generator=generator,
                           device=device, dtype=dtype)

    def mc_sample(self, n, d, rng, spectrum):
        return rng.uniform(-self.half_width, self.half_width, (n, d)), np.ones(n)


@dataclass(frozen=True)
class Lebesgue(Distribution):
    """The Lebesgue measure on R^d (not a probability measure), sampled exactly by importance.

    v ~ N(0, I / L) carries the weight w(v) = (2 pi / L)^(d/2) exp(L |v|^2 / 2), the density
    ratio dv / dN, so E[w psi(Q(v))] is the integral of psi(Q) dv exactly, and the optimizer
    draws the same samples and weights (in logs: ``runtime.lebesgue_log_weight``). L is a
    stated lower bound on the spectrum: for psi = exp(-Q) the variance is finite while every
    l_i > L/2, and the relative variance of one sample is prod_i c_i / sqrt(2 c_i - 1) - 1,
    c_i = l_i / L (zero at H = L I, growing exponentially in d for a spread spectrum).
    """

    lower: float = 1.0
    name: ClassVar[str] = "lebesgue"
    #: The estimate's expectation is the Lebesgue integral itself, a function of det H.
    invariances: ClassVar[tuple[str, ...]] = ("volume-preserving linear maps SL^±(d)",)
    probability: ClassVar[bool] = False

    def describe(self) -> str:
        return f"Lebesgue(R^d), importance-sampled from N(0, I/{self.lower:g})"

    def sample(self, n, d, *, generator=None, device=None, dtype=None):
        from .runtime import sample_rows

        return sample_rows("importance", n, d, precision=self.lower, generator=generator, device=device, dtype=dtype)

    def weights(self, rows):
        import torch

        from .runtime import lebesgue_log_weight

        squared = torch.as_tensor(np.sum(np.asarray(rows, dtype=float) ** 2, axis=1))
        return np.exp(lebesgue_log_weight(squared, rows.shape[1], self.lower).numpy())

    def mc_sample(self, n, d, rng, spectrum):
        v = rng.standard_normal((n, d)) / math.sqrt(self.lower)
        log_w = 0.5 * d * math.log(2 * math.pi / self.lower) + 0.5 * self.lower * np.sum(v**2, axis=1)
        return v, np.exp(log_w)

    def closed_form(self, psi):
        total = sp.Integer(0)
        for coeff, basis in _monomial_terms(psi):
            rate = _exp_rate(basis)
            if rate is None or not (rate.is_number and rate < 0):
                return None
            # Gaussian integral: int exp(-c Q) dv = (2 pi / c)^(d/2) det(H)^(-1/2), H > 0.
            total += coeff * (2 * sp.pi / -rate) ** (D / 2) * EProd(lam) ** sp.Rational(-1, 2)
        return total


@dataclass(frozen=True)
class DiracAt(Distribution):
    """A point mass at sum_{i in support} e_i (Theorem 7 uses e_i and e_i + e_j).

    Q(e_i + e_j) = 1/2 (H_ii + H_jj + 2 H_ij): integrals against these measures read the
    Hessian's entries directly, with no sampling noise (one sample suffices).
    """

    support: tuple[int, ...] = (0,)
    name: ClassVar[str] = "dirac"
    deterministic: ClassVar[bool] = True

    def describe(self) -> str:
        return "delta(" + " + ".join(f"e_{i}" for i in self.support) + ")"

    def point(self, d: int) -> np.ndarray:
        v = np.zeros(d)
        v[list(self.support)] = 1.0
        return v

    def sample(self, n, d, *, generator=None, device=None, dtype=None):
        import torch

        v = torch.zeros(n, d, device=device, dtype=dtype)
        v[:, list(self.support)] = 1.0
        return v

    def mc_sample(self, n, d, rng, spectrum):
        return np.tile(self.point(d), (n, 1)), np.ones(n)

    def closed_form(self, psi):
        from .spectral import HEntry

        q = sp.Rational(1, 2) * sum(HEntry(i, j) for i in self.support for j in self.support)
        return psi.subs(t, q)


@dataclass(frozen=True)
class Eigenvector(Distribution):
    """A point mass at an extreme unit eigenvector of H, tracked by power iteration.

    ``which`` is "top" (max(l)), "bottom" (min(l)) or "magnitude" (the eigenvalue largest in
    absolute value). The optimizer cannot diagonalize H: it keeps a unit vector u and, every
    step, replaces it by the normalized sign H u + shift u, with H u read off the step's own
    perturbed pair ((g(x + rho u) - g(x - rho u)) / (2 rho), no extra pass). Power iteration
    converges to the eigenvector of sign H + shift I whose eigenvalue is largest in magnitude:
    the top (bottom) one when every l_i >= -shift (<= shift). Like SAM's direction, mu depends
    on x; Q(u) = l/2 holds once u has converged (``at_hessian`` gives the converged u).
    """

    which: str = "top"
    shift: float = 0.0
    name: ClassVar[str] = "eigenvector"
    deterministic: ClassVar[bool] = True

    @property
    def sign(self) -> int:
        return -1 if self.which == "bottom" else 1

    def describe(self) -> str:
        matrix = {"top": "H", "bottom": "-H", "magnitude": "H"}[self.which]
        shifted = f" + {self.shift:g} I" if self.shift else ""
        return f"delta(u), u the {self.which} eigenvector of H (power iteration on {matrix}{shifted})"

    def at_hessian(self, n: int, hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """n copies of the unit vector the power iteration converges to at this H, weight 1."""
        values, vectors = np.linalg.eigh(self.sign * hessian + self.shift * np.eye(len(hessian)))
        u = vectors[:, int(np.argmax(np.abs(values)))]
        return np.tile(u, (n, 1)), np.ones(n)

    def closed_form(self, psi):
        from .spectral import EMax, EMin, lam

        value = {"top": EMax(lam), "bottom": EMin(lam)}.get(self.which)
        return None if value is None else psi.subs(t, value / 2)


@dataclass(frozen=True)
class Dirac(Distribution):
    """A point mass at the normalized gradient (SAM's ascent direction), chosen at step time."""

    name: ClassVar[str] = "dirac(grad/|grad|)"
    invariances: ClassVar[tuple[str, ...]] = ()
    deterministic: ClassVar[bool] = True

    def describe(self) -> str:
        return "delta(grad L / |grad L|)"


@dataclass(frozen=True)
class Adaptive(Distribution):
    """mu_x = law of |x| * v with v ~ base (elementwise): the ASAM idea, for any target.

    Q = 1/2 (|x| v)^T H (|x| v) = 1/2 v^T (D H D) v with D = diag(|x|), so every identity of
    ``base`` holds with H replaced by D H D. A positive diagonal rescaling x -> C x that leaves
    L invariant maps H to C^-1 H C^-1 and D to C D, so D H D, and S, do not change.
    The optimizer multiplies each sample by |x| at step time; sampling here is the base's.
    """

    base: Distribution = Gaussian()
    name: ClassVar[str] = "adaptive"

    @property
    def invariances(self) -> tuple[str, ...]:  # type: ignore[override]
        # The base's own groups act on v, not on x: they do not survive the |x| scaling.
        return ("positive diagonal rescalings x -> C x with L(C x) = L(x)",)

    def describe(self) -> str:
        return f"|x| * v, v ~ {self.base.describe()}"

    def sample(self, n, d, *, generator=None, device=None, dtype=None):
        return self.base.sample(n, d, generator=generator, device=device, dtype=dtype)

    def weights(self, rows):
        return self.base.weights(rows)

    def mc_sample(self, n, d, rng, spectrum):
        return self.base.mc_sample(n, d, rng, spectrum)

    def closed_form(self, psi):
        return self.base.closed_form(psi)


