"""The optimizer against independent mathematics.

Quadratics L = 1/2 y^T A y (y = x - x0) make every expectation closed-form: at y = 0,
Delta = (L(x0 + rho v) - L(x0)) / rho**2 = Q(v) exactly, so the sharpness estimate must
converge to the target at eig(A); the Frobenius update has expectation A y + 4 s A^2 y
(unbiased estimator) for every n >= 2. Tolerances come from Monte Carlo standard errors.
Algorithm 3 and textbook SAM are transcribed plainly from the paper.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import sympy as sp
import torch

from _optim_helpers import (PLAIN, Quadratic, frobenius, mean_and_se, shifted_det, symmetric, third_power_sum,
                            trace_gaussian, trace_plus_d, trace_product_two_groups, trace_sphere)
from sharpc.distributions import Gaussian, t
from sharpc.emit import power_sum_symbol, unbiased_estimator
from sharpc.measure import Measure, SampleGroup, phi_symbols
from sharpc.optim import SAM, optimizer_class

EIGS = np.array([1.5, 0.7, -0.4, 0.2])


def sharpness_history(measure, A, steps, **options):
    quad = Quadratic(A)
    options = {**PLAIN, **options}
    opt = optimizer_class(measure)([quad.x], rho=options.pop("rho", 0.3), strength=1.0, lr=0.0, seed=0, **options)
    values = []
    for _ in range(steps):
        opt.step(quad.closure)
        values.append(opt.sharpness.item())
    return values


# ----------------------------------------------------------------------------- sharpness at y = 0
@pytest.mark.parametrize("name, build, n, steps", [
    ("trace on the sphere", trace_sphere, 16, 150),
    ("Frobenius", frobenius, 8, 300),
    ("third power sum", third_power_sum, 12, 300),
    ("two independent groups", trace_product_two_groups, 8, 150),
    ("trace plus d (an offset)", trace_plus_d, 16, 150),
])
def test_unbiased_sharpness_converges_to_the_target(name, build, n, steps):
    """opt.sharpness is the target as written: the dropped scale and offset are folded back."""
    A = symmetric(EIGS)
    d = len(EIGS)
    expected = {"trace on the sphere": EIGS.sum(),
                "Frobenius": (EIGS**2).sum(),
                "third power sum": (EIGS**3).sum(),
                "two independent groups": EIGS.sum() ** 2,
                "trace plus d (an offset)": EIGS.sum() + d}[name]
    mean, se = mean_and_se(sharpness_history(build(), A, steps, n_samples=n))
    assert abs(mean - expected) < 5 * se + 1e-12, (name, mean, expected, se)


@pytest.mark.slow  # ~6-10 s of Monte Carlo on 2 cores
def test_shifted_determinant_plugin_converges_up_to_its_delta_method_bias():
    sigma, n = 0.2, 32
    eigs = np.array([1.2, 0.5, -0.8])  # sigma * l_max = 0.24 < 1/2: finite variance
    mean, se = mean_and_se(sharpness_history(shifted_det(sigma), symmetric(eigs), 150, n_samples=n))
    mu = np.prod(1 - sigma * eigs) ** -0.5                # E[exp(sigma Q)]
    var = np.prod(1 - 2 * sigma * eigs) ** -0.5 - mu**2   # Var[exp(sigma Q)]
    bias = 3 * mu**-4 * var / n                            # phi = t^-2: phi''/2 * Var / n
    assert abs(mean - (np.prod(1 - sigma * eigs) + bias)) < 5 * se


@pytest.mark.slow  # ~6-10 s of Monte Carlo on 2 cores
def test_unbiased_estimator_is_unbiased_where_the_plugin_is_not():
    """n = 2: E[plugin] = 2 Var(Q) (n-1)/n = p2 / 2, while E[U] = p2."""
    A = symmetric(EIGS[:3])
    p2 = (EIGS[:3] ** 2).sum()
    unbiased, se_u = mean_and_se(sharpness_history(frobenius(), A, 1500, n_samples=2, estimator="unbiased"))
    plugin, se_p = mean_and_se(sharpness_history(frobenius(), A, 1500, n_samples=2, estimator="plugin"))
    assert abs(unbiased - p2) < 4 * se_u
    assert abs(plugin - p2 / 2) < 4 * se_p
    assert p2 - plugin > 10 * se_p


# ----------------------------------------------------------------------------- expected update
@pytest.mark.parametrize("estimator, factor", [("unbiased", 1.0), ("plugin", 3 / 4)])
def test_frobenius_expected_update_is_A_y_plus_4_strength_A2_y(estimator, factor):
    """E[g] = A y + 4 s c A^2 y with c = 1 (U-statistic) or (n-1)/n (plug-in covariance), n = 4."""
    A = symmetric(EIGS, seed=1)
    y = np.array([0.3, -0.2, 0.1, 0.25])
    quad = Quadratic(A, y=y)
    strength = 0.5
    opt = optimizer_class(frobenius())([quad.x], rho=1.0, strength=strength, n_samples=4, estimator=estimator,
                                       lr=0.0, seed=3, **PLAIN)
    grads = []
    for _ in range(1500):
        opt.step(quad.closure)
        grads.append(quad.x.grad.numpy().copy())
    mean, se = mean_and_se(grads)
    expected = A @ y + 4 * strength * factor * A @ A @ y
    assert np.all(np.abs(mean - expected) < 5 * se), (mean, expected, se)


# ----------------------------------------------------------------------------- the paper's algorithms
def _smooth_loss(w: torch.Tensor) -> torch.Tensor:
    """A non-quadratic loss of a flat parameter vector (no sharpc involved)."""
    return torch.log(torch.cosh(w[:3] @ torch.tensor([1.0, -2.0, 0.5], dtype=w.dtype) - 0.3)) + 0.1 * (w**4).sum()


def _loss_and_grad(w: torch.Tensor) -> tuple[float, torch.Tensor]:
    w = w.detach().clone().requires_grad_()
    loss = _smooth_loss(w)
    loss.backward()
    return loss.item(), w.grad


def _record_step(opt, w):
    points = []

    def closure():
        points.append(w.detach().clone())
        loss = _smooth_loss(w)
        loss.backward()
        return loss

    opt.step(closure)
    return points


def test_frob_sam_matches_a_transcription_of_algorithm_3():
    """Algorithm 3 (objective L + rho**2 R, i.e. strength = rho**2), fed the optimizer's own samples."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    rho, n = 0.05, 5
    opt = optimizer_class(frobenius())([w], rho=rho, strength=rho**2, n_samples=n, lr=0.0, seed=11, **PLAIN)
    x, *perturbed = _record_step(opt, w)
    L0, g0 = _loss_and_grad(x)
    L = [_loss_and_grad(p)[0] for p in perturbed]
    G = [_loss_and_grad(p)[1] for p in perturbed]
    g = (g0
         + 4 * sum(L[i] * G[i] for i in range(n)) / ((n - 1) * rho**2)
         - 4 * sum(L) / ((n - 1) * rho) * sum(G) / (n * rho))
    torch.testing.assert_close(w.grad, g, rtol=1e-7, atol=1e-9)


def test_plugin_matches_a_transcription_of_algorithm_2():
    """Algorithm 2 with m = 1 for prod(1 - l/5): phi = t^-2, psi = exp(t/5), derivatives by hand."""
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    rho, n, strength = 0.1, 4, 0.3
    opt = optimizer_class(shifted_det(0.2))([w], rho=rho, strength=strength * rho**2, n_samples=n, lr=0.0, seed=5,
                                            **PLAIN)
    x, *perturbed = _record_step(opt, w)
    L0, g0 = _loss_and_grad(x)
    delta = [(_loss_and_grad(p)[0] - L0) / rho**2 for p in perturbed]
    G = [_loss_and_grad(p)[1] for p in perturbed]
    mean_psi = sum(math.exp(0.2 * dl) for dl in delta) / n
    dphi = -2 * mean_psi**-3
    g = g0 + strength * dphi * sum(0.2 * math.exp(0.2 * delta[i]) * (G[i] - g0) for i in range(n)) / n
    torch.testing.assert_close(w.grad, g, rtol=1e-7, atol=1e-10)
    assert opt.sharpness.item() == pytest.approx(mean_psi**-2, rel=1e-10)


def test_sam_preset_is_textbook_sam():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    x = w.detach().clone()
    rho = 0.05
    _, g = _loss_and_grad(x)
    expected = _loss_and_grad(x + rho * g / g.norm())[1]
    SAM([w], rho=rho, strength=1.0, lr=0.0).step(lambda: _closure(w))
    torch.testing.assert_close(w.grad, expected, rtol=1e-10, atol=1e-12)


def test_adaptive_sam_preset_is_asam():
    """ASAM (Kwon et al., 2021): e = rho T^2 g / |T g| with T = |x| + eta."""
    torch.manual_seed(3)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    x = w.detach().clone()
    rho, eta = 0.5, 0.01
    _, g = _loss_and_grad(x)
    T = x.abs() + eta
    expected = _loss_and_grad(x + rho * T**2 * g / (T * g).norm())[1]
    SAM([w], rho=rho, strength=1.0, adaptive=True, eta=eta, lr=0.0).step(lambda: _closure(w))
    torch.testing.assert_close(w.grad, expected, rtol=1e-10, atol=1e-12)


def _closure(w):
    loss = _smooth_loss(w)
    loss.backward()
    return loss


# ----------------------------------------------------------------------------- antithetic rates
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_antithetic_sampling_raises_the_order_of_the_rho_bias(seed):
    """At a critical point of L = 1/2 x^T A x + sum(c x^3)/6 + sum(q x^4)/24, with the same samples
    for every rho: Delta - Q = rho C(v) + rho^2 D(v) (slope 1) but rho^2 D(v) when antithetic (slope 2)."""
    A = torch.tensor(symmetric([1.0, 0.5, -0.3]))
    c = torch.tensor([1.0, -0.7, 0.4], dtype=torch.float64)
    q = torch.tensor([0.8, 0.6, 1.1], dtype=torch.float64)
    rhos = [0.01, 0.005, 0.0025, 0.00125]

    def bias(rho, antithetic):
        w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        points = []

        def closure():
            points.append(w.detach().clone())
            loss = 0.5 * w @ A @ w + (c * w**3).sum() / 6 + (q * w**4).sum() / 24
            loss.backward()
            return loss

        opt = optimizer_class(trace_gaussian())([w], rho=rho, strength=1.0, n_samples=6, lr=0.0, seed=seed,
                                                **{**PLAIN, "difference": "antithetic" if antithetic else "one-sided"})
        opt.step(closure)
        v = torch.stack(points[1::2] if antithetic else points[1:]) / rho
        exact = torch.einsum("ni,ij,nj->n", v, A, v).mean()  # 2 Q = the target's estimate, same samples, rho -> 0
        return abs(opt.sharpness.item() - exact.item())

    slope = {a: np.polyfit(np.log(rhos), np.log([bias(r, a) for r in rhos]), 1)[0] for a in (False, True)}
    assert 0.85 < slope[False] < 1.15, slope
    assert 1.9 < slope[True] < 2.1, slope


def test_antithetic_and_control_deltas_cancel_the_gradient_term_on_a_quadratic():
    """Off the critical point Delta = g.v/rho + Q, but the antithetic and control Deltas are Q exactly."""
    quad = Quadratic(symmetric(EIGS), y=[0.5, -0.5, 0.2, 0.1])
    for difference, points in (("antithetic", slice(1, None, 2)), ("control", slice(1, None))):
        quad.points.clear()
        opt = optimizer_class(trace_gaussian())([quad.x], rho=0.01, strength=1.0, n_samples=3, lr=0.0, seed=0,
                                                relative=False, difference=difference)
        opt.step(quad.closure)
        v = (torch.stack(quad.points[points]) - quad.points[0]) / 0.01
        Q = 0.5 * torch.einsum("ni,ij,nj->n", v, quad.A, v)
        assert opt.sharpness.item() == pytest.approx(2 * Q.mean().item(), rel=1e-6), difference  # target = 2 E[Q]


# ----------------------------------------------------------------------------- the U-statistic itself
def _brute_force_u(phi_poly, psi, groups, deltas):
    """Average over distinct index tuples, monomial by monomial (no power sums, no Moebius)."""
    args = phi_symbols(len(psi))
    total = 0.0
    for powers, coeff in sp.Poly(phi_poly, *args).terms():
        term = float(coeff)
        for a, components in enumerate(groups):
            fs = [sp.lambdify(t, psi[l]) for l in components for _ in range(powers[l])]
            n = len(deltas[a])
            tuples = list(itertools.permutations(range(n), len(fs)))
            term *= np.mean([np.prod([f(deltas[a][i]) for f, i in zip(fs, idx)]) for idx in tuples]) if fs else 1.0
        total += term
    return total


@pytest.mark.parametrize("phi, psi, groups", [
    ("2*(t2 - t1**2)", ("t", "t**2"), [(0, 1)]),
    ("t1**2*t2 + 3*t3 - t1*t3", ("t", "t**2", "t + 1"), [(0, 1, 2)]),
    ("t1**2 * t2 - 2*t1", ("t**2 - t", "3*t"), [(0,), (1,)]),
])
def test_u_statistic_equals_the_average_over_distinct_tuples(phi, psi, groups):
    t1, t2, t3 = phi_symbols(3)
    env = {"t": t, "t1": t1, "t2": t2, "t3": t3}
    psi_exprs = tuple(sp.sympify(p, locals=env) for p in psi)
    m = Measure(source=phi, target=sp.Integer(0), d=None, phi=sp.sympify(phi, locals=env), psi=psi_exprs,
                groups=tuple(SampleGroup(Gaussian(), g) for g in groups), strategy="test", steps=())
    ustat, _ = unbiased_estimator(m)
    rng = np.random.default_rng(0)
    n = 5
    deltas = [rng.standard_normal(n) for _ in groups]
    values = {power_sum_symbol(a, k): float((deltas[a] ** k).sum()) for a, k in ustat.power_sums}
    got = float(ustat.expr.subs(values).subs(sp.Symbol("n", positive=True, integer=True), n))
    assert got == pytest.approx(_brute_force_u(m.phi, psi_exprs, groups, deltas), rel=1e-9)
