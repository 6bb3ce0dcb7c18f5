"""The direct step (sharpc.runtime.direct) against the general step it specializes: bit-identical.

Each configuration runs the same steps twice from the same state, once with the direct step
and once with ``specialize = False``; parameters, losses, estimates, momentum buffers and the
perturbation generator must agree exactly, not within a tolerance.
"""

from __future__ import annotations

import pytest
import torch

import sharpc
from _optim_helpers import (frobenius, make_closure, shifted_det, tiny_mlp, trace_product_two_groups,
                            trace_sphere)
from sharpc.optim import SAM, FrobSAM, TraceSAM, optimizer_class

STEPS = 4
SGD = dict(lr=0.05, momentum=0.9)

CONFIGURATIONS = {
    "SAM": (lambda: SAM, {}),
    "FrobSAM defaults (unbiased, antithetic, clip, relative)": (lambda: FrobSAM, {}),
    "FrobSAM plug-in, one-sided, n=3": (lambda: FrobSAM, dict(estimator="plugin", difference="one-sided", n_samples=3,
                                                              relative=False, clip=None)),
    "TraceSAM, control variate": (lambda: TraceSAM, dict(difference="control")),
    "sphere": (lambda: optimizer_class(trace_sphere()), dict(n_samples=2)),
    "hypercube (shifted determinant)": (lambda: optimizer_class(shifted_det(2.0)), dict(n_samples=3)),
    "two sample groups": (lambda: optimizer_class(trace_product_two_groups()), dict(n_samples=2)),
    "plug-in Frobenius, clip": (lambda: optimizer_class(frobenius()), dict(estimator="plugin", clip=0.5)),
}


def run(make_class, options: dict, specialize: bool, model_options: dict | None = None, closure_of=make_closure,
        nonfinite: str = "raise"):
    model, x, y = tiny_mlp(**(model_options or {}))
    opt = make_class()(model.parameters(), seed=3, model=model, nonfinite=nonfinite, **options, **SGD)
    opt.specialize = specialize
    closure = closure_of(model, x, y)
    torch.manual_seed(11)  # dropout masks come from the global RNG
    losses, estimates = [], []
    for _ in range(STEPS):
        losses.append(opt.step(closure))
        estimates.append(opt.sharpness)
    return model, opt, losses, estimates


def assert_identical(direct, general) -> None:
    (model_a, opt_a, losses_a, estimates_a), (model_b, opt_b, losses_b, estimates_b) = direct, general
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(losses_a + estimates_a, losses_b + estimates_b):  # (a skipped step's may be NaN)
        assert torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    for (_, a), (_, b) in zip(sorted(state_a["state"].items()), sorted(state_b["state"].items())):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert torch.equal(state_a["phi_psi_sam"]["generator_state"], state_b["phi_psi_sam"]["generator_state"])
    assert opt_a.skipped_steps == opt_b.skipped_steps
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert (p.grad is None) == (q.grad is None)
        assert p.grad is None or torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_the_direct_step_is_bit_identical_to_the_general_step(name):
    make_class, options = CONFIGURATIONS[name]
    direct = run(make_class, options, specialize=True)
    assert direct[1].step_kind == "direct"
    assert_identical(direct, run(make_class, options, specialize=False))


@pytest.mark.parametrize("model_options", [dict(batchnorm=True), dict(dropout=0.3)])
def test_running_statistics_and_replayed_dropout_are_identical(model_options):
    direct = run(lambda: FrobSAM, {}, True, model_options)
    assert direct[1].step_kind == "direct"
    assert_identical(direct, run(lambda: FrobSAM, {}, False, model_options))


def test_an_unreached_parameter_and_a_closure_that_zeroes_gradients_itself():
    def closure_of(model, x, y):
        unused = model[0].bias  # every pass leaves it without a gradient

        def closure():
            model.zero_grad()  # .grad becomes None: backward allocates new tensors
            loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, model[0].weight).tanh()
                                                     @ model[2].weight.T + model[2].bias, y)
            loss.backward()
            assert unused.grad is None
            return loss
        return closure

    direct = run(lambda: FrobSAM, {}, True, closure_of=closure_of)
    assert direct[0][0].bias.grad is None
    assert_identical(direct, run(lambda: FrobSAM, {}, False, closure_of=closure_of))


def test_skipped_steps_are_identical():
    def closure_of(model, x, y):
        calls = [0]

        def closure():
            calls[0] += 1
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if calls[0] in (5, 7):  # a perturbed pass of the second step, the clean pass of the third
                loss = loss * float("nan")
            loss.backward()
            return loss
        return closure

    direct = run(lambda: FrobSAM, dict(n_samples=2, difference="one-sided"), True, closure_of=closure_of,
                 nonfinite="skip")
    assert direct[1].skipped_steps == 2
    assert_identical(direct, run(lambda: FrobSAM, dict(n_samples=2, difference="one-sided"), False,
                                 closure_of=closure_of, nonfinite="skip"))


def test_a_failed_direct_step_restores_parameters_and_generator():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), seed=0, **SGD)
    closure = make_closure(model, x, y)
    opt.step(closure)
    before = [p.detach().clone() for p in model.parameters()]
    generator = opt.generator.get_state()
    calls = [0]

    def failing():
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("out of memory, say")
        return closure()

    with pytest.raises(Exception, match="perturbed point 1 of 2.*restored"):
        opt.step(failing)
    assert opt.step_kind == "direct"
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert torch.equal(opt.generator.get_state(), generator)


@pytest.mark.parametrize("setup, reason", [
    (lambda m: FrobSAM(m.parameters(), memory="lean"), "lean"),
    (lambda m: FrobSAM([{"params": [m[0].weight], "rho": 0.1}, {"params": list(m.parameters())[1:]}]),
     "per-group rho"),
    (lambda m: FrobSAM([{"params": [m[0].weight]}, {"params": list(m.parameters())[1:], "perturb": False}]),
     "not perturbed"),
    (lambda m: FrobSAM(m.parameters(), adaptive=True), "adaptive"),
    (lambda m: optimizer_class(sharpc.compile("max(l)"))(m.parameters()), "eigenvector"),
])
def test_configurations_the_direct_step_does_not_cover_run_the_general_step(setup, reason):
    model, x, y = tiny_mlp()
    opt = setup(model)
    assert opt.step_kind.startswith("general: ") and reason in opt.step_kind

    def closure():  # (memory="lean" asks for losses alone first)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    opt.step(closure)
    assert torch.isfinite(opt.sharpness)


def test_a_schedule_or_new_parameters_rebuild_the_direct_step():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), seed=0, **SGD)
    closure = make_closure(model, x, y)
    opt.step(closure)
    first = opt._direct[1]
    opt.step(closure)
    assert opt._direct[1] is first  # built once
    opt.param_groups[0]["rho"] *= 0.5
    opt.step(closure)
    second = opt._direct[1]
    assert second is not first and second.rho == opt.param_groups[0]["rho"]
    extra = torch.nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra], "rho": opt.param_groups[0]["rho"]})
    assert opt.step_kind == "direct" and opt._direct[1] is not second and any(p is extra for p in opt._direct[1].params)
