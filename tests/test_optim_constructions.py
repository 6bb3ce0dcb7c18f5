"""Optimizers for the Theorem 6/7 and adaptive measures, on quadratic oracles.

For L(x) = 1/2 (x - x0)^T A (x - x0) at x = x0, (L(x0 + rho v) - L(x0)) / rho^2 = 1/2 v^T A v
exactly, so the sharpness estimate converges to S(x; phi, psi, mu) for any rho.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import sharpc
from sharpc.derive import Request, derive
from sharpc.distributions import DiracAt, Gaussian, t
from sharpc.measure import Measure, SampleGroup, phi_symbols
from sharpc.spectral import HEntry, hessian_matrix


def quadratic(a: torch.Tensor, x0: torch.Tensor):
    x = torch.nn.Parameter(x0.clone())

    def closure():
        y = x - x0
        loss = 0.5 * y @ a @ y
        loss.backward()
        return loss
    return x, closure


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(-0.8, 1.5, d, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize("target", [HEntry(0, 1) ** 2, (hessian_matrix(3) ** 2).trace(), hessian_matrix(3).det()])
def test_dirac_measures_read_the_hessian_exactly(target):
    measure = derive(Request(str(target), target, d=3))
    a = spd(3, 0)
    x, closure = quadratic(a, torch.zeros(3, dtype=torch.float64))
    opt = measure.optimizer_class()([x], rho=0.1, strength=0.0, lr=0.0)
    opt.step(closure)
    expected = float(target.subs({HEntry(i, j): a[i, j].item() for i in range(3) for j in range(i, 3)}))
    assert opt.sharpness.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_point_groups_take_one_sample_and_random_groups_n():
    """Per-group sample counts: H[0, 0] (a Dirac point) + sum(l**2) (Gaussian) with n_samples = 3."""
    t1, t2, t3 = phi_symbols(3)  # Q(e_0) = H_00 / 2; 2 (E[Q^2] - E[Q]^2) = p2 under N(0, I)
    measure = Measure(source="H[0, 0] + sum(l**2)", target=sp.Integer(0), d=2, phi=2 * t1 + 2 * (t3 - t2**2),
                      psi=(t, t, t**2), groups=(SampleGroup(DiracAt((0,)), (0,)), SampleGroup(Gaussian(), (1, 2))),
                      strategy="by-hand", steps=())
    a = spd(2, 1)
    x, closure = quadratic(a, torch.zeros(2, dtype=torch.float64))
    calls = []

    def counted():
        calls.append(1)
        return closure()

    opt = measure.optimizer_class()([x], rho=0.1, strength=0.0, n_samples=3, lr=0.0, seed=0,
                                    difference="one-sided", estimator="plugin")
    estimates = []
    for _ in range(120):
        calls.clear()
        opt.step(counted)
        assert len(calls) == 1 + 1 + 3  # the clean pass, the point once, three Gaussian samples
        estimates.append(opt.sharpness.item())
    mean, se = np.mean(estimates), np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    p2 = (np.linalg.eigvalsh(a.numpy()) ** 2).sum()
    expected = a[0, 0].item() + p2 * 2 / 3  # the plug-in covariance has mean (n - 1) / n of p2
    assert abs(mean - expected) < 5 * se, (mean, expected, se)


@pytest.mark.slow  # ~12 s
def test_spectral_max_optimizer_tracks_the_top_eigenvalue():
    measure = sharpc.compile("max(l)", d=3, bound=2)
    a = spd(3, 2)
    x, closure = quadratic(a, torch.zeros(3, dtype=torch.float64))
    opt = measure.optimizer_class()([x], rho=0.05, strength=0.0, n_samples=4000, lr=0.0, seed=0,
                                    difference="one-sided", estimator="plugin")
    values = []
    for _ in range(10):
        opt.zero_grad()
        opt.step(closure)
        values.append(opt.sharpness.item())
    top = torch.linalg.eigvalsh(a).max().item()
    assert np.mean(values) == pytest.approx(top, abs=0.1)


@pytest.mark.slow  # ~6 s
def test_adaptive_measure_sees_the_rescaled_hessian():
    """S for mu_x = law of |x| v is the target on diag|x| A diag|x|, and so is the estimate."""
    measure = sharpc.compile("sum(l**2)", invariant="scale")
    a = spd(4, 3)
    x0 = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
    x, closure = quadratic(a, x0)
    opt = measure.optimizer_class()([x], rho=0.05, strength=0.0, n_samples=2, lr=0.0, eta=0.0, seed=0)
    values = []
    for _ in range(1500):
        opt.zero_grad()
        opt.step(closure)
        values.append(opt.sharpness.item())
    scaled = torch.diag(x0.abs()) @ a @ torch.diag(x0.abs())
    expected = (torch.linalg.eigvalsh(scaled) ** 2).sum().item()
    stderr = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values) - expected) < 4 * stderr
    assert abs(expected - (torch.linalg.eigvalsh(a) ** 2).sum().item()) > 10 * stderr


@pytest.mark.parametrize("expression, options, d", [
    ("max(l)", dict(d=3, bound=2), 3), ("mean(abs(l))", dict(d=4, bound=1), 4),
    ("H[0, 1]**2", dict(d=3), 3), ("prod(l)", dict(invariant="scale"), 4),
])
def test_issue_four_targets_train(expression, options, d):
    """The issue's 'done when' commands: each compiles, verifies and takes finite training steps."""
    measure = sharpc.compile(expression, **options)
    assert measure.verify(samples=2000).certified is not False
    a = spd(d, 4)
    x, closure = quadratic(a, torch.zeros(d, dtype=torch.float64))
    with torch.no_grad():
        x.add_(0.3)
    opt = measure.optimizer_class()([x], rho=0.05, strength=0.01, lr=0.05, seed=0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        losses.append(opt.step(closure).item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
