"""Shared pieces of the optimizer tests: measures built by hand and quadratic test losses.

The measures are written out directly (not compiled) so the optimizer oracles do not
depend on the derivation strategies; the expected values come from numpy eigenvalues.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
import torch

from sharpc.distributions import Gaussian, Sphere, t
from sharpc.measure import Measure, SampleGroup, phi_symbols
from sharpc.spectral import D, EProd, ESum, lam


#: The paper's Algorithm 2 as written: absolute strength, one-sided differences.
PLAIN = dict(relative=False, difference="one-sided")


def measure(source, target, phi, psi, distribution, scale=1, offset=0) -> Measure:
    return Measure(source=source, target=target, d=None, phi=phi, psi=tuple(psi),
                   groups=(SampleGroup(distribution, tuple(range(len(psi)))),),
                   strategy="by-hand", steps=(), scale=sp.sympify(scale), offset=sp.sympify(offset))


def frobenius() -> Measure:
    t1, t2 = phi_symbols(2)
    return measure("sum(l**2)", ESum(lam**2), 2 * (t2 - t1**2), (t, t**2), Gaussian())


def trace_sphere() -> Measure:
    (t1,) = phi_symbols(1)
    return measure("sum(l)", ESum(lam), t1, (t,), Sphere(), scale=2 * D)


def trace_plus_d() -> Measure:
    """tr(H) + d = 2d E_sphere[Q] + d: a scale and an offset that both depend on d."""
    (t1,) = phi_symbols(1)
    return measure("sum(l + 1)", ESum(lam + 1), t1, (t,), Sphere(), scale=2 * D, offset=D)


def trace_gaussian() -> Measure:
    """E[Q] = tr(H) / 2 for v ~ N(0, I)."""
    (t1,) = phi_symbols(1)
    return measure("sum(l)", ESum(lam), t1, (t,), Gaussian(), scale=2)


def shifted_det(sigma: float) -> Measure:
    """prod(1 - sigma l) = E[exp(sigma Q)]**(-2) for v ~ N(0, I)."""
    (t1,) = phi_symbols(1)
    s = sp.nsimplify(sigma)
    return measure(f"prod(1 - {sigma}*l)", EProd(1 - s * lam), t1**-2, (sp.exp(s * t),), Gaussian())


def third_power_sum() -> Measure:
    """p_3 = kappa_3 = mu3 - 3 mu1 mu2 + 2 mu1**3 (the third cumulant of Q)."""
    t1, t2, t3 = phi_symbols(3)
    return measure("sum(l**3)", ESum(lam**3), t3 - 3 * t1 * t2 + 2 * t1**3, (t, t**2, t**3), Gaussian())


def trace_product_two_groups() -> Measure:
    """(tr H / 2) * (tr H / (2d)): E_gauss[Q] * E_sphere[Q] over independent sample groups."""
    t1, t2 = phi_symbols(2)
    return Measure(source="sum(l)**2", target=ESum(lam) ** 2, d=None, phi=t1 * t2, psi=(t, t),
                   groups=(SampleGroup(Gaussian(), (0,)), SampleGroup(Sphere(), (1,))),
                   strategy="by-hand", steps=(), scale=4 * D)


def symmetric(eigenvalues, seed: int = 0) -> np.ndarray:
    """Q diag(eigenvalues) Q^T for a random orthogonal Q."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return q @ np.diag(eigenvalues) @ q.T


class Quadratic:
    """L(x) = 1/2 (x - x0)^T A (x - x0) as a parameter and a closure that records its calls."""

    def __init__(self, A: np.ndarray, y=None, dtype=torch.float64, seed: int = 0):
        rng = np.random.default_rng(seed)
        d = len(A)
        self.A = torch.tensor(A, dtype=dtype)
        self.x0 = torch.tensor(rng.standard_normal(d), dtype=dtype)
        y = np.zeros(d) if y is None else np.asarray(y, dtype=float)
        self.x = torch.nn.Parameter(self.x0 + torch.tensor(y, dtype=dtype))
        self.points: list[torch.Tensor] = []

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        y = x - self.x0
        return 0.5 * y @ self.A @ y

    def closure(self) -> torch.Tensor:
        self.points.append(self.x.detach().clone())
        loss = self.loss(self.x)
        loss.backward()
        return loss


def mean_and_se(values) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=float)
    return values.mean(axis=0), values.std(axis=0, ddof=1) / np.sqrt(len(values))


def tiny_mlp(seed: int = 0, dtype=torch.float32, dropout: float = 0.0, batchnorm: bool = False):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(6, 16)]
    if batchnorm:
        layers.append(torch.nn.BatchNorm1d(16))
    layers += [torch.nn.Tanh()]
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    layers.append(torch.nn.Linear(16, 3))
    model = torch.nn.Sequential(*layers).to(dtype)
    x = torch.randn(32, 6, dtype=dtype)
    y = torch.randint(0, 3, (32,))
    return model, x, y


def make_closure(model, x, y, record=None):
    def closure():
        if record is not None:
            record.append([p.detach().clone() for p in model.parameters()])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
