"""max(l), min(l), max(abs(l)) at any d: a point mass at the extreme eigenvector, by power iteration.

Oracles: NumPy eigenvalues (the estimate on a quadratic converges to the extreme eigenvalue,
the step's own pair being the power iteration), autograd of the finite-difference estimate
with the optimizer's u held fixed (one step is gradient descent on it), and the verifier
with a mutated phi.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy as sp
import torch
from _optim_helpers import PLAIN, Quadratic, make_closure, symmetric, tiny_mlp

import sharpc
from sharpc import OptimizerError

MIXED = np.array([1.5, 0.7, 0.4, -0.3, 0.05])      # the top eigenvalue is also the largest in magnitude
NEGATIVE_HEAVY = np.array([0.6, 0.2, -0.1, -1.4])  # the largest in magnitude is negative


@pytest.mark.parametrize("expression, options, spectrum, expected", [
    ("max(l)", {}, np.abs(MIXED), np.abs(MIXED).max()),
    ("max(l)", dict(bound=2.0), NEGATIVE_HEAVY, NEGATIVE_HEAVY.max()),
    ("min(l)", dict(bound=2.0), MIXED, MIXED.min()),
    ("max(abs(l))", {}, NEGATIVE_HEAVY, 1.4),
    ("3*l[0] - 1", dict(bound=2.0), MIXED, 3 * MIXED.max() - 1),
    ("-l[-1]", dict(bound=2.0), NEGATIVE_HEAVY, 1.4),
    # several extremes: one power iteration per eigenvector group
    ("max(l) - min(l)", dict(bound=2.0), MIXED, MIXED.max() - MIXED.min()),
    ("l[0] + 2*l[-1] - 1", dict(bound=2.0), NEGATIVE_HEAVY, NEGATIVE_HEAVY.max() + 2 * NEGATIVE_HEAVY.min() - 1),
    ("max(abs(l)) - max(l)", dict(bound=2.0), NEGATIVE_HEAVY, 1.4 - NEGATIVE_HEAVY.max()),
])
@pytest.mark.parametrize("difference", ["antithetic", "one-sided"])
def test_the_estimate_converges_to_the_extreme_eigenvalue(expression, options, spectrum, expected, difference):
    """At a quadratic's minimum Delta = Q exactly, so the power iteration and S = 2 Q(u) are exact."""
    cls = sharpc.compile(expression, **options).optimizer_class()
    quad = Quadratic(symmetric(spectrum))
    opt = cls([quad.x], rho=0.1, strength=1.0, lr=0.0, seed=0, **{**PLAIN, "difference": difference})
    for _ in range(300):
        opt.step(quad.closure)
    assert opt.sharpness.item() == pytest.approx(expected, abs=1e-6)


def tracked_u(opt) -> list:
    """The power iteration's current u, for an optimizer with one eigenvector group."""
    (iteration,) = opt._power.by_group.values()
    return iteration.u


def cubic(x: torch.Tensor) -> torch.Tensor:
    c = torch.linspace(0.5, 2.0, len(x), dtype=x.dtype)
    return (c * x**2 / 2 + x**3 / 6 + x[0] * x[-1]).sum()


def test_a_step_is_gradient_descent_on_the_estimate_with_u_held_fixed():
    """grad = g0 + strength * grad_x [L(x + rho u) + L(x - rho u) - 2 L(x)] / rho**2 (phi = 2 t)."""
    rho, strength = 0.05, 0.7
    cls = sharpc.compile("max(l)").optimizer_class()
    x = torch.nn.Parameter(torch.linspace(-0.4, 0.6, 7, dtype=torch.float64))
    opt = cls([x], lr=1.0, rho=rho, strength=strength, seed=1, **{**PLAIN, "difference": "antithetic"})

    def closure():
        loss = cubic(x)
        loss.backward()
        return loss

    for _ in range(3):  # u is now an iterate, not the random start
        opt.step(closure)
    x0, (u,) = x.detach().clone(), [t.clone() for t in tracked_u(opt)]
    opt.step(closure)
    y = x0.clone().requires_grad_()
    estimate = (cubic(y + rho * u) + cubic(y - rho * u) - 2 * cubic(y)) / rho**2  # 2 Delta, antithetic
    (grad,) = torch.autograd.grad(cubic(y) + strength * estimate, y)
    torch.testing.assert_close(x.detach(), x0 - grad, rtol=1e-10, atol=1e-12)


def test_u_is_saved_restored_and_left_alone_by_a_failed_step():
    model, data, target = tiny_mlp(dtype=torch.float64)
    cls = sharpc.compile("max(l)").optimizer_class()
    opt = cls(model.parameters(), lr=0.1, seed=0)

    closure = make_closure(model, data, target)

    for _ in range(3):
        opt.step(closure)
    state = opt.state_dict()
    before = [t.clone() for t in tracked_u(opt)]

    def failing():
        closure()
        raise RuntimeError("boom")

    with pytest.raises(OptimizerError):
        opt.step(failing)
    assert all(torch.equal(a, b) for a, b in zip(tracked_u(opt), before))
    twin_model, _, _ = tiny_mlp(dtype=torch.float64)
    twin_model.load_state_dict(model.state_dict())
    twin = cls(twin_model.parameters(), lr=0.1, seed=5)
    twin.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(tracked_u(twin), before))


@pytest.mark.parametrize("options, reason", [(dict(memory="lean", clip=None), "memory='lean'"),
                                             (dict(adaptive=True), "adaptive")])
def test_what_power_iteration_cannot_do_is_refused(options, reason):
    model, _, _ = tiny_mlp()
    with pytest.raises(OptimizerError, match=reason):
        sharpc.compile("max(l)").optimizer_class()(model.parameters(), lr=0.1, **options)


@pytest.mark.parametrize("expression, options", [("max(l)", {}), ("min(l)", dict(bound=1.0)),
                                                 ("max(abs(l))", {}), ("2*l[0] + 1", {}), ("l[-1]", dict(bound=3.0))])
def test_compiles_at_any_d_and_verifies(expression, options):
    measure = sharpc.compile(expression, **options)
    assert measure.strategy == "eigenvector" and measure.d is None and measure.exact
    report = measure.verify(samples=500)
    assert report.passed and report.cases, report.table()


def test_a_wrong_phi_is_caught():
    measure = sharpc.compile("max(l)")
    (t1,) = measure.phi_args
    report = dataclasses.replace(measure, phi=t1).verify(samples=500)
    assert report.certified is False and not report.passed


def test_without_a_bound_min_needs_a_negative_spectrum():
    assert sharpc.compile("min(l)").domain.upper == 0 and sharpc.compile("max(l)").domain.lower == 0
    assert sp.sstr(sharpc.compile("max(l)", bound=2).domain.lower) == "-2.0"


def test_a_step_skipped_on_the_device_keeps_u_and_the_running_magnitude():
    """nonfinite="skip" with a fused base optimizer decides on the device: u and the relative
    strength's running mean stay as they were where the step was not finite."""
    model, data, target = tiny_mlp(dtype=torch.float64)
    cls = sharpc.compile("max(l)").optimizer_class()
    opt = cls(model.parameters(), lr=0.1, seed=0, nonfinite="skip", fused=True)
    scale = [1.0]

    def closure():
        loss = torch.nn.functional.cross_entropy(model(data), target) * scale[0]
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    u = [t.clone() for t in tracked_u(opt)]
    magnitude = opt._estimator.magnitude
    total, count = magnitude.total.clone(), int(magnitude.count)
    scale[0] = float("nan")
    opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(tracked_u(opt), u))
    assert torch.equal(magnitude.total, total) and int(magnitude.count) == count
    assert opt.skipped_steps == 1
    scale[0] = 1.0
    opt.step(closure)
    assert int(magnitude.count) == count + 1 and not all(torch.equal(a, b) for a, b in zip(tracked_u(opt), u))



def test_several_extremes_keep_one_u_each_through_a_checkpoint():
    """max(l) - min(l) tracks two vectors; both are saved, restored, and left alone by a failed step."""
    model, data, target = tiny_mlp(dtype=torch.float64)
    cls = sharpc.compile("max(l) - min(l)", bound=5.0).optimizer_class()
    opt = cls(model.parameters(), lr=0.1, seed=0)

    closure = make_closure(model, data, target)

    for _ in range(3):
        opt.step(closure)
    top, bottom = ([t.clone() for t in it.u] for it in opt._power.by_group.values())
    assert not all(torch.equal(a, b) for a, b in zip(top, bottom))
    twin_model, _, _ = tiny_mlp(dtype=torch.float64)
    twin = cls(twin_model.parameters(), lr=0.1, seed=5)
    twin.load_state_dict(opt.state_dict())
    for it, saved in zip(twin._power.by_group.values(), (top, bottom)):
        assert all(torch.equal(a, b) for a, b in zip(it.u, saved))

    def failing():
        closure()
        raise RuntimeError("boom")

    with pytest.raises(OptimizerError):
        opt.step(failing)
    for it, saved in zip(opt._power.by_group.values(), (top, bottom)):
        assert all(torch.equal(a, b) for a, b in zip(it.u, saved))


def test_max_and_min_together_need_a_bound():
    with pytest.raises(sharpc.SharpcError, match="need --bound"):
        sharpc.compile("max(l) - min(l)")
