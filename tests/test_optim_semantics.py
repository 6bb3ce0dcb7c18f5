"""What strength, rho and the other hyperparameters mean, checked against closed forms.

A cubic loss L(x) = 1/2 x^T A x + sum(c x^3) / 6 has H(x) = A + diag(c x), so its targets
and their gradients are closed-form: grad tr H = c and grad |H|_F^2 = 2 c (diag A + c x).
Its fourth derivative vanishes, so the antithetic Delta is exactly v^T H(x) v / 2 and the
expected update must be grad L + strength * grad target up to Monte Carlo error alone.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _optim_helpers import PLAIN, frobenius, make_closure, mean_and_se, symmetric, tiny_mlp, trace_sphere

import sharpc
from sharpc import OptimizerError
from sharpc.optim import FrobSAM, TraceSAM, optimizer_class
from sharpc.runtime import DEFAULT_RADIUS

A = symmetric([1.5, 0.7, -0.4, 0.2], seed=4)
C = np.array([0.8, -0.5, 0.3, 0.6])
X = np.array([0.4, -0.3, 0.2, 0.5])


class Cubic:
    def __init__(self):
        self.A, self.c = torch.tensor(A), torch.tensor(C)
        self.x = torch.nn.Parameter(torch.tensor(X))

    def closure(self):
        loss = 0.5 * self.x @ self.A @ self.x + (self.c * self.x**3).sum() / 6
        loss.backward()
        return loss

    def grad_loss(self) -> np.ndarray:
        return A @ X + C * X**2 / 2


def expected_update(build, strength, steps, **options):
    cubic = Cubic()
    opt = optimizer_class(build())([cubic.x], lr=0.0, seed=0, strength=strength, relative=False, **options)
    grads = []
    for _ in range(steps):
        opt.step(cubic.closure)
        grads.append(cubic.x.grad.numpy().copy())
    return cubic, *mean_and_se(grads)


@pytest.mark.parametrize("build, grad_target, options", [
    (trace_sphere, lambda: C, dict(rho=0.3, n_samples=4)),
    (frobenius, lambda: 2 * C * (np.diag(A) + C * X), dict(rho=0.3, n_samples=4)),
])
def test_antithetic_expected_update_is_grad_loss_plus_strength_grad_target(build, grad_target, options):
    strength = 0.05
    cubic, mean, se = expected_update(build, strength, 400, difference="antithetic", **options)
    expected = cubic.grad_loss() + strength * grad_target()
    assert np.all(np.abs(mean - expected) < 5 * se + 1e-9), (mean, expected, se)


def test_one_sided_frobenius_update_carries_the_gradient_term():
    """One-sided Delta = g.v/rho + Q feeds psi = t**2 a |g|**2 / rho**2 term: its mean update is off."""
    strength = 0.05
    cubic, mean, se = expected_update(frobenius, strength, 300, difference="one-sided", rho=0.3, n_samples=4)
    expected = cubic.grad_loss() + strength * 2 * C * (np.diag(A) + C * X)
    assert np.any(np.abs(mean - expected) > 10 * se)


def test_hyperparameters_live_in_param_groups_and_follow_a_schedule():
    model, x, y = tiny_mlp()
    closure = make_closure(model, x, y, record := [])
    opt = TraceSAM(model.parameters(), lr=0.1, rho=0.2, seed=0, **PLAIN)
    assert {"rho", "strength", "relative", "n_samples", "estimator", "difference", "adaptive", "eta"} \
        <= opt.defaults.keys() <= opt.param_groups[0].keys() | {"params"}
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
    for step in range(3):
        record.clear()
        opt.step(closure)
        clean, perturbed = record
        radius = torch.cat([(p - q).reshape(-1) for p, q in zip(perturbed, clean)]).norm().item()
        assert radius == pytest.approx(0.2 * 0.5**step, rel=1e-5)  # the sphere has radius rho
        scheduler.step()
        for group in opt.param_groups:  # a rho schedule, the way schedulers anneal lr
            group["rho"] = 0.2 * 0.5 ** (step + 1)


def test_state_dict_saves_and_restores_the_hyperparameters():
    model, x, y = tiny_mlp()
    closure = make_closure(model, x, y)
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0)
    opt.step(closure)
    opt.param_groups[0].update(rho=0.123, strength=0.456)
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["rho"] == 0.123 and saved["phi_psi_sam"]["magnitude"]["count"] == 1
    fresh = FrobSAM(model.parameters(), lr=0.1, seed=1)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["rho"] == 0.123 and fresh.param_groups[0]["strength"] == 0.456
    torch.testing.assert_close(fresh._estimator.magnitude.total, opt._estimator.magnitude.total)


def test_per_group_rho_and_strength():
    """Each group moves at its own rho; a group with strength 0 gets the plain gradient."""
    model, x, y = tiny_mlp()
    first, last = list(model[0].parameters()), list(model[-1].parameters())
    record = []
    opt = TraceSAM([{"params": first, "rho": 0.1}, {"params": last, "rho": 0.3, "strength": 0.0}],
                   lr=0.0, seed=0, **PLAIN)
    opt.step(make_closure(model, x, y, record))
    clean, perturbed = record
    offsets = [p - q for p, q in zip(perturbed, clean)]
    v_first = torch.cat([o.reshape(-1) for o in offsets[:2]]) / 0.1
    v_last = torch.cat([o.reshape(-1) for o in offsets[2:]]) / 0.3
    assert torch.cat([v_first, v_last]).norm().item() == pytest.approx(1.0, rel=1e-5)  # one sphere sample
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    plain = [p.grad.clone() for p in last]
    opt.step(make_closure(model, x, y))
    for p, g in zip(last, plain):
        torch.testing.assert_close(p.grad, g)


def test_relative_strength_divides_by_the_running_magnitude_of_the_target():
    """relative=True with strength s takes the same step as relative=False with s / |target| (first step)."""
    steps = {}
    for relative in (False, True):
        model, x, y = tiny_mlp(dtype=torch.float64)
        opt = TraceSAM(model.parameters(), lr=0.1, seed=3, strength=0.2, relative=relative)
        opt.step(make_closure(model, x, y))
        steps[relative] = (torch.cat([p.grad.reshape(-1) for p in model.parameters()]), opt.sharpness)
    model, x, y = tiny_mlp(dtype=torch.float64)
    closure = make_closure(model, x, y)
    opt = TraceSAM(model.parameters(), lr=0.1, seed=3, strength=0.2 / abs(steps[True][1].item()), relative=False)
    opt.step(closure)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), steps[True][0])


@pytest.mark.parametrize("target, same_as, options", [
    ("sum(l) + 5", "sum(l)", {}),
    ("2*sum(l) - 3", "sum(l)", {}),
    ("sum(exp(l))", "sum(exp(l) - 1)", dict(bound=2.0, size=100)),  # Chebyshev: d + c1 p1 + c2 p2
])
def test_relative_strength_ignores_constants_in_the_target(target, same_as, options):
    """relative=True divides by |target - target at H = 0|: adding or scaling by constants changes
    no step (sum(exp(l)) would otherwise be divided by about d and do nothing on a network)."""
    steps = []
    for expression in (target, same_as):
        model, x, y = tiny_mlp(dtype=torch.float64)
        cls = sharpc.compile(expression, **options).optimizer_class()
        opt = cls(model.parameters(), lr=0.1, seed=3, strength=0.2, relative=True, clip=None)
        for _ in range(3):
            opt.step(make_closure(model, x, y))
        steps.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-9, atol=1e-12)


def test_defaults_are_scale_aware():
    """Without rho, |rho v| is DEFAULT_RADIUS of the parameters' norm: E|v| = sqrt(d) (Gaussian), 1 (sphere)."""
    model, _, _ = tiny_mlp()
    norm = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm().item()
    d = sum(p.numel() for p in model.parameters())
    assert TraceSAM(model.parameters()).param_groups[0]["rho"] == pytest.approx(DEFAULT_RADIUS * norm)
    assert FrobSAM(model.parameters()).param_groups[0]["rho"] == pytest.approx(DEFAULT_RADIUS * norm / d**0.5)
    group = FrobSAM(model.parameters()).param_groups[0]
    assert (group["difference"], group["relative"], group["n_samples"]) == ("antithetic", True, 2)
    # strength per unit of log(target): divided by the degree, since grad log sum(l**k) grows like k
    assert group["strength"] == pytest.approx(TraceSAM(model.parameters()).param_groups[0]["strength"] / 2)
    fourth = sharpc.compile("sum(l**4)").optimizer_class()
    assert fourth.recommended["strength"] == pytest.approx(TraceSAM.recommended["strength"] / 4)
    # heavy-tailed estimates of E[Q^4]: twice the U-statistic's minimum sample count (measured)
    assert fourth(model.parameters()).param_groups[0]["n_samples"] == 2 * fourth.ustat_order == 8
    assert "n_samples" not in FrobSAM.recommended


def test_step_wide_settings_must_agree_across_groups_at_step_time():
    model, x, y = tiny_mlp()
    opt = FrobSAM([{"params": model[0].parameters()}, {"params": model[-1].parameters()}], lr=0.1)
    opt.param_groups[1]["difference"] = "control"
    with pytest.raises(OptimizerError, match="difference shapes the whole step"):
        opt.step(make_closure(model, x, y))


def test_clip_bounds_the_regularizer_gradient_by_the_loss_gradient():
    model, x, y = tiny_mlp(dtype=torch.float64)
    closure = make_closure(model, x, y)
    opt = FrobSAM(model.parameters(), lr=0.0, seed=0, strength=1e6, clip=0.5, relative=False)
    opt.step(closure)
    combined = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad()
    closure()
    g0 = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert (combined - g0).norm().item() == pytest.approx(0.5 * g0.norm().item(), rel=1e-9)  # clipped to the bound
    grads = {}
    for clip in (None, 1e12):  # a bound that never binds changes nothing
        model, x, y = tiny_mlp(dtype=torch.float64)
        FrobSAM(model.parameters(), lr=0.0, seed=0, strength=0.01, clip=clip).step(make_closure(model, x, y))
        grads[clip] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(grads[None], grads[1e12], rtol=1e-12, atol=1e-15)  # the same, up to rounding


def test_clip_needs_the_sums_memory_mode():
    model, _, _ = tiny_mlp()
    assert FrobSAM(model.parameters(), memory="lean").param_groups[0]["clip"] is None  # the default steps aside
    with pytest.raises(OptimizerError, match="memory='lean' does not keep"):
        FrobSAM(model.parameters(), memory="lean", clip=1.0)
    with pytest.raises(OptimizerError, match="clip must be None or a positive"):
        FrobSAM(model.parameters(), clip=-1.0)


@pytest.mark.parametrize("target", ["sqrt(sum(l**2))", "sum(l)/sum(l**2)"])
def test_plug_in_targets_default_to_the_samples_their_moments_need(target):
    """phi of the sample means (t, t**2) needs two samples: with one, the sample variance is
    exactly 0 and sqrt or a quotient of it is not finite (the default used to be 1)."""
    cls = sharpc.compile(target).optimizer_class()
    assert cls.ustat is None and cls.moment_order == 2
    model, x, y = tiny_mlp(dtype=torch.float64)
    opt = cls(model.parameters(), lr=0.1, seed=0)
    assert opt.param_groups[0]["n_samples"] == 2
    for _ in range(3):
        opt.step(make_closure(model, x, y))
    assert torch.isfinite(opt.sharpness) and opt.sharpness > 0
