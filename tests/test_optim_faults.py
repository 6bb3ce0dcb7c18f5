"""Faults leave no trace: a failing or non-finite pass restores the parameters bit-exactly.
And a step never reads device values on the host (except the one documented finiteness check)."""

from __future__ import annotations

import contextlib
import copy
from unittest import mock

import pytest
import torch
from _optim_helpers import make_closure, tiny_mlp

from sharpc import OptimizerError
from sharpc.optim import SAM, FrobSAM


def faulty_closure(model, x, y, bad_call, fault):
    """A closure whose ``bad_call``-th call (0 = the clean pass) misbehaves."""
    calls = []

    def closure():
        calls.append(None)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if len(calls) - 1 == bad_call:
            if fault == "raise":
                raise RuntimeError("data loader exploded")
            loss = loss * float(fault)
        if torch.is_grad_enabled():  # memory="lean" first calls it for the loss alone
            loss.backward()
        return loss

    return closure


def snapshot(model):
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


def assert_untouched(model, before, opt):
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model)))
    assert all(p.grad is None for p in model.parameters())
    assert len(opt.state) == 0  # the base optimizer never stepped: no momentum buffers


@pytest.mark.parametrize("bad_call", [0, 2])
def test_a_closure_exception_restores_parameters_and_is_chained(bad_call):
    model, x, y = tiny_mlp(batchnorm=True)
    opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=0, model=model, difference="one-sided")
    before = snapshot(model)
    with pytest.raises(OptimizerError, match="unperturbed point" if bad_call == 0 else "perturbed point 2") as info:
        opt.step(faulty_closure(model, x, y, bad_call, "raise"))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert_untouched(model, before, opt)  # including the BatchNorm statistics
    opt.step(faulty_closure(model, x, y, None, "raise"))  # and the optimizer still works


@pytest.mark.parametrize("bad_call, fault", [(0, "nan"), (1, "inf"), (2, "-inf")])
def test_a_non_finite_loss_raises_with_parameters_restored(bad_call, fault):
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=0)
    before = snapshot(model)
    where = "the unperturbed point" if bad_call == 0 else f"perturbed pass {bad_call}"
    with pytest.raises(OptimizerError, match=f"a non-finite loss at {where}"):
        opt.step(faulty_closure(model, x, y, bad_call, fault))
    assert_untouched(model, before, opt)


def test_nonfinite_skip_skips_and_counts_the_step():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=0, nonfinite="skip")
    before = snapshot(model)
    loss = opt.step(faulty_closure(model, x, y, 2, "nan"))
    assert torch.isfinite(loss) and opt.skipped_steps == 1
    assert_untouched(model, before, opt)
    opt.step(faulty_closure(model, x, y, None, "nan"))
    assert opt.skipped_steps == 1 and len(opt.state) > 0
    assert opt.state_dict()["phi_psi_sam"]["skipped_steps"] == 1


def test_a_keyboard_interrupt_passes_through_after_restoring():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0)
    before = snapshot(model)

    def closure():
        if torch.equal(next(model.parameters()), before[0]):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        raise KeyboardInterrupt  # at the first perturbed point

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert_untouched(model, before, opt)


@contextlib.contextmanager
def host_reads(forbid: bool):
    """Count (or forbid) Tensor.item, __bool__ and __float__: the ways a step could sync with the device."""
    reads = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "__float__")}

    def spy(name):
        def read(self, *args, **kwargs):
            if forbid:
                raise AssertionError(f"Tensor.{name} inside step: a host-device sync")
            reads.append(name)
            return originals[name](self, *args, **kwargs)
        return read

    with contextlib.ExitStack() as stack:
        for name in originals:
            stack.enter_context(mock.patch.object(torch.Tensor, name, spy(name)))
        yield reads


@pytest.mark.parametrize("cls, options", [
    (FrobSAM, dict(difference="antithetic", adaptive=True)),
    (FrobSAM, dict(estimator="plugin", n_samples=3)),
    (SAM, dict()),
])
def test_a_step_makes_no_host_device_sync(cls, options):
    model, x, y = tiny_mlp(batchnorm=True, dropout=0.1)
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, seed=0, model=model, nonfinite="ignore", **options)

    def closure():  # avoids host reads itself, since it runs inside the patch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(2):
        with host_reads(forbid=True):
            opt.step(closure)
    assert torch.isfinite(opt.sharpness)


@pytest.mark.parametrize("memory", ["sums", "lean"])
def test_skip_with_a_fused_base_optimizer_makes_no_host_read(memory):
    """nonfinite="skip" with fused SGD skips on the device (found_inf): no host read, and the
    non-finite step leaves parameters and BatchNorm statistics as they were, as the host path does."""
    runs = {}
    for fused in (False, True):
        model, x, y = tiny_mlp(batchnorm=True)
        opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=0, model=model, nonfinite="skip",
                      memory=memory, fused=fused, clip=None)
        good, bad = faulty_closure(model, x, y, None, "nan"), faulty_closure(model, x, y, 1, "nan")
        with host_reads(forbid=fused):
            opt.step(good)
            before = snapshot(model)
            opt.step(bad)
            assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model)))
            opt.step(good)
        runs[fused] = before
        assert opt.skipped_steps == 1
        assert all(torch.isfinite(t).all() for t in snapshot(model))
    for a, b in zip(runs[True], runs[False]):  # fused and foreach SGD: the same first step
        torch.testing.assert_close(a, b)


def test_the_finiteness_check_is_one_host_read_per_step():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0)
    closure = faulty_closure(model, x, y, None, "nan")
    with host_reads(forbid=False) as reads:
        opt.step(closure)
        opt.step(closure)
    assert reads == ["item", "item"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("anneal", [False, True])
def test_a_cuda_step_makes_no_synchronizing_call(anneal):
    """torch's own sync detector, on the device where syncs cost something; an annealed rho makes
    the step build new constants (they must be filled on the device, not copied from the host)."""
    model, x, y = tiny_mlp(batchnorm=True, dropout=0.1)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=0, model=model, nonfinite="ignore")

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)  # first-step allocations and lazy initialization are not the question
    if anneal:
        opt.param_groups[0]["rho"] *= 0.5
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step(closure)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("memory", ["sums", "lean"])
def test_a_non_finite_gradient_with_a_finite_loss_is_caught(memory):
    """sqrt(0 * w) is 0, but its gradient is NaN: the loss check alone would let it through."""
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, memory=memory)
    before = snapshot(model)
    calls = []

    def closure():
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if len(calls) == 1:
            loss = loss + torch.sqrt(0 * model[0].weight.sum())
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    with pytest.raises(OptimizerError, match="non-finite gradient"):
        opt.step(closure)
    assert_untouched(model, before, opt)


def test_a_retried_step_draws_the_same_perturbations():
    model, x, y = tiny_mlp()
    reference = copy.deepcopy(model)
    seen, expected = [], []
    opt = FrobSAM(model.parameters(), lr=0.1, seed=4)
    with pytest.raises(OptimizerError):
        opt.step(faulty_closure(model, x, y, 3, "raise"))
    opt.step(make_closure(model, x, y, seen))
    FrobSAM(reference.parameters(), lr=0.1, seed=4).step(make_closure(reference, x, y, expected))
    assert len(seen) == len(expected) == 5
    for a, b in zip(seen, expected):
        assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("memory", ["sums", "lean"])
def test_an_overflowing_combined_gradient_is_caught(memory):
    """Finite losses, g0 and accumulators can still combine into an infinite gradient (a huge
    strength in float32): the verdict checks the gradient the base optimizer would take."""
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, strength=1e300, relative=False, clip=None, memory=memory)
    before = snapshot(model)
    with pytest.raises(OptimizerError, match="non-finite gradient"):
        opt.step(faulty_closure(model, x, y, None, "nan"))
    assert_untouched(model, before, opt)
