"""The sum strategy: A + B from the measures of A and of B, side by side.

Oracles: the verifier (closed forms and Monte Carlo at random Hessians), and on a quadratic at
its minimum (where Delta = Q exactly) the optimizer's own estimate against NumPy eigenvalues.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _optim_helpers import PLAIN, Quadratic, make_closure, mean_and_se, symmetric

import sharpc
from sharpc import DerivationError

SPECTRUM = np.array([1.5, 0.7, 0.4, -0.3, 0.05])


@pytest.mark.parametrize("expression, options, parts", [
    ("max(l) + sum(l**2)", {}, ["eigenvector", "table1"]),
    ("2*max(l) - min(l) + sum(l**3) - 1", dict(bound=3.0), ["eigenvector", "moments"]),
    ("max(abs(l)) + sum(exp(l))", dict(bound=2.0), ["eigenvector", "chebyshev"]),
])
def test_parts_keep_their_own_measures_and_the_sum_verifies(expression, options, parts):
    measure = sharpc.compile(expression, **options)
    assert measure.strategy == "sum" and measure.d is None
    for strategy in parts:
        assert any(f"({strategy}, psi components" in step for step in measure.steps)
    components = sorted(c for group in measure.groups for c in group.components)
    assert components == list(range(measure.m))  # every psi component in exactly one group
    report = measure.verify(samples=2000)
    assert report.passed and report.cases, report.table()


def test_an_approximate_part_makes_the_sum_approximate_with_its_bound():
    whole = sharpc.compile("max(l) + sum(exp(l))", bound=1.0)
    part = sharpc.compile("sum(exp(l))", bound=1.0)
    assert not whole.exact and whole.error_bound == part.error_bound


@pytest.mark.parametrize("expression, options, expected", [
    ("max(l) + sum(l**2)", dict(bound=2.0), SPECTRUM.max() + (SPECTRUM**2).sum()),
    ("max(l) - min(l) + sum(l) + 4", dict(bound=2.0), SPECTRUM.max() - SPECTRUM.min() + SPECTRUM.sum() + 4),
])
def test_the_optimizers_estimate_is_the_target_on_a_quadratic(expression, options, expected):
    """lr = 0 at the minimum: the eigenvector parts converge, the random part is unbiased."""
    cls = sharpc.compile(expression, **options).optimizer_class()
    quad = Quadratic(symmetric(SPECTRUM))
    opt = cls([quad.x], rho=0.1, strength=1.0, lr=0.0, seed=0, estimator="unbiased", n_samples=4,
              **{**PLAIN, "difference": "antithetic"})
    for _ in range(200):  # the power iterations converge
        opt.step(quad.closure)
    estimates = []
    for _ in range(400):
        opt.step(quad.closure)
        estimates.append(opt.sharpness.item())
    mean, se = mean_and_se(estimates)
    assert abs(mean - expected) <= 4.5 * se + 1e-9, (mean, se, expected)


def test_a_sum_trains_and_its_state_round_trips():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    cls = sharpc.compile("max(l) + sum(l**2)").optimizer_class()
    opt = cls(model.parameters(), lr=0.1, seed=0)

    closure = make_closure(model, x, y)

    losses = [opt.step(closure).item() for _ in range(15)]
    assert losses[-1] < losses[0] and np.isfinite(opt.sharpness.item())
    twin = cls(model.parameters(), lr=0.1, seed=3)
    twin.load_state_dict(opt.state_dict())
    (u,), (twin_u,) = opt._power.state(), twin._power.state()
    assert len(u) == len(twin_u) and all(torch.equal(a, b) for a, b in zip(u, twin_u))


@pytest.mark.parametrize("expression, options, reason", [
    ("prod(l) + sum(l)", {}, "exponential in d"),
    ("max(l) + l[1]", {}, "every term has an extreme"),
    ("max(l) + sum(log(-l))", {}, "the part sum"),
    ("min(l) + sum(log(l))", {}, "no interval"),  # min(l) without --bound needs l <= 0, log(l) needs l > 0
    ("sum(l) + sum(abs(l)) + sum(exp(l)) + sum(sin(l)) + prod(1 - l/10)", dict(bound=1.0), "at most 4"),
])
def test_what_a_sum_cannot_take_is_refused_with_the_reason(expression, options, reason):
    with pytest.raises(DerivationError, match=reason):
        sharpc.compile(expression, **options)


@pytest.mark.parametrize("n_samples", [1, 3])
def test_the_unbiased_estimator_counts_one_sample_for_a_point_mass(n_samples):
    """A tracked eigenvector is one sample whatever n_samples is (a U-statistic over n of them was n times off)."""
    cls = sharpc.compile("max(l) - min(l) + 4", bound=2.0).optimizer_class()
    quad = Quadratic(symmetric(SPECTRUM))
    opt = cls([quad.x], rho=0.1, strength=1.0, lr=0.0, seed=0, estimator="unbiased", n_samples=n_samples,
              **{**PLAIN, "difference": "antithetic"})
    for _ in range(300):
        opt.step(quad.closure)
    assert opt.sharpness.item() == pytest.approx(SPECTRUM.max() - SPECTRUM.min() + 4, abs=1e-6)


@pytest.mark.parametrize("which, shift, psi, expected", [
    ("top", 5.0, 1, 1.0), ("bottom", 5.0, 1, -1.5), ("magnitude", 0.0, 2, 2.25), ("top", 0.0, 1, -1.5),
])
def test_the_exact_integral_of_a_tracked_eigenvector_is_psi_at_the_eigenvalue_it_converges_to(which, shift, psi,
                                                                                              expected):
    """Power iteration on sign H + shift I finds the eigenvalue largest in magnitude there (shift 0: -3 wins)."""
    from sharpc.distributions import Eigenvector, t
    from sharpc.reference import expectation

    value = expectation(Eigenvector(which, shift), t**psi, [1.0, 2.0, -3.0])
    assert float(value) == pytest.approx(expected)
