"""Misuse the step can see: foreign checkpoints, partial backward calls, concurrent steps."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

import sharpc
from sharpc import OptimizerError
from sharpc.optim import SAM, FrobSAM, optimizer_class

from _optim_helpers import flat_params, make_closure, tiny_mlp


def _snapshot(opt) -> tuple:
    """Hyperparameters, momentum buffers (in parameter order), generator state and skip count."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    buffers = [opt.state[p]["momentum_buffer"].clone() for g in opt.param_groups for p in g["params"]]
    return copy.deepcopy(groups), buffers, opt.generator.get_state(), opt.skipped_steps


def _unchanged(opt, before) -> bool:
    groups, buffers, generator, skipped = _snapshot(opt)
    return (groups == before[0] and len(buffers) == len(before[1])
            and all(torch.equal(a, b) for a, b in zip(buffers, before[1]))
            and torch.equal(generator, before[2]) and skipped == before[3])


def _trained(cls, **options):
    model, x, y = tiny_mlp()
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, seed=0, **options)
    opt.step(make_closure(model, x, y))
    return opt


def _frobenius_checkpoint() -> dict:
    return _trained(FrobSAM).state_dict()


@pytest.mark.parametrize("make, message", [
    (lambda: _trained(SAM), "another measure or configuration"),
    (lambda: _trained(optimizer_class(sharpc.compile("sum(l**3)"))), "another measure or configuration"),
    (lambda: _trained(FrobSAM, n_samples=4), "another measure or configuration"),
    (lambda: _trained(FrobSAM, estimator="plugin", n_samples=2), "another measure or configuration"),
])
def test_a_checkpoint_of_another_measure_or_configuration_is_refused(make, message):
    opt = make()
    before = _snapshot(opt)
    with pytest.raises(OptimizerError, match=message):
        opt.load_state_dict(_frobenius_checkpoint())
    assert _unchanged(opt, before)


def test_a_plain_sgd_checkpoint_is_refused():
    model, x, y = tiny_mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.zero_grad()
    make_closure(model, x, y)()
    sgd.step()
    opt = _trained(FrobSAM)
    before = _snapshot(opt)
    with pytest.raises(OptimizerError, match="no 'phi_psi_sam' entry"):
        opt.load_state_dict(sgd.state_dict())
    assert _unchanged(opt, before)


@pytest.mark.parametrize("corrupt", [
    lambda state: state[:100],
    lambda state: "not a tensor",
])
def test_a_corrupt_generator_state_is_refused(corrupt):
    saved = _frobenius_checkpoint()
    saved["phi_psi_sam"]["generator_state"] = corrupt(saved["phi_psi_sam"]["generator_state"])
    opt = _trained(FrobSAM)
    before = _snapshot(opt)
    with pytest.raises(OptimizerError, match="generator state is corrupt"):
        opt.load_state_dict(saved)
    assert _unchanged(opt, before)


@pytest.mark.parametrize("options", [{}, dict(nonfinite="skip"), dict(memory="lean")])
def test_a_checkpoint_of_the_same_measure_and_estimator_loads_whatever_the_execution_choices(options):
    saved = _frobenius_checkpoint()
    opt = _trained(FrobSAM, **options) if options.get("memory") != "lean" else _lean(FrobSAM, **options)
    opt.load_state_dict(saved)
    assert torch.equal(opt.generator.get_state(), saved["phi_psi_sam"]["generator_state"])


def _lean(cls, **options):
    model, x, y = tiny_mlp()
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, seed=0, **options)

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    opt.step(closure)
    return opt


@pytest.mark.parametrize("memory", ["sums", "lean"])
def test_a_closure_that_skips_backward_on_a_later_pass_is_detected(memory):
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, n_samples=2, memory=memory)
    before = flat_params(model).clone()
    calls = []

    def closure():
        calls.append(None)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if len(calls) == 1:  # the clean pass only
            loss.backward()
        return loss

    with pytest.raises(OptimizerError, match="did not call loss.backward\\(\\) at the perturbed point"):
        opt.step(closure)
    assert torch.equal(flat_params(model), before)


def test_a_step_refuses_to_run_while_another_thread_steps():
    model, x, y = tiny_mlp()
    other_model, _, _ = tiny_mlp(seed=1)
    inside, release = threading.Event(), threading.Event()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0)
    other = FrobSAM(other_model.parameters(), lr=0.1, seed=0)

    def blocking_closure():
        inside.set()
        release.wait(timeout=30)
        return make_closure(model, x, y)()

    errors = []
    thread = threading.Thread(target=lambda: errors.append(opt.step(blocking_closure)))
    thread.start()
    try:
        assert inside.wait(timeout=30)
        with pytest.raises(OptimizerError, match="another thread is inside a sharpc optimizer step"):
            other.step(make_closure(other_model, x, y))
    finally:
        release.set()
        thread.join(timeout=30)
    assert len(errors) == 1 and torch.isfinite(errors[0])
    other.step(make_closure(other_model, x, y))  # once the first step is done, the second may run


def test_sparse_gradients_are_refused_with_parameters_untouched():
    torch.manual_seed(0)
    embedding, head = torch.nn.Embedding(20, 8, sparse=True), torch.nn.Linear(8, 3)
    params = [*embedding.parameters(), *head.parameters()]
    x, y = torch.randint(0, 20, (16, 5)), torch.randint(0, 3, (16,))
    opt = FrobSAM(params, lr=0.1, seed=0)
    before = [p.detach().clone() for p in params]

    def closure():
        loss = torch.nn.functional.cross_entropy(head(embedding(x).mean(1)), y)
        loss.backward()
        return loss

    with pytest.raises(OptimizerError, match="sparse gradients"):
        opt.step(closure)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_complex_parameters_are_refused_at_construction():
    layer = torch.nn.Linear(4, 3).to(torch.complex64)
    with pytest.raises(OptimizerError, match="complex parameters"):
        FrobSAM(layer.parameters(), lr=0.1)


def test_a_parameter_given_twice_is_refused():
    """torch only warns about duplicates within a group; here they would double d and the perturbation."""
    layer = torch.nn.Linear(4, 4)
    with pytest.warns(UserWarning, match="duplicate"), pytest.raises(OptimizerError, match="appears twice"):
        FrobSAM([layer.weight, layer.weight, layer.bias])


def test_parameters_on_the_meta_device_are_refused_with_the_reason():
    with pytest.raises(OptimizerError, match="meta device"):
        FrobSAM(torch.nn.Linear(4, 4, device="meta").parameters())
