"""memory="lean": losses first (forward only), then weighted backward passes straight into .grad.

It must take the step memory="sums" takes (the same samples, dropout masks and BatchNorm
handling), hold no parameter-sized buffer but the backup of x, and fail as cleanly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from _optim_helpers import (flat_params, frobenius, shifted_det, third_power_sum, tiny_mlp,
                            trace_product_two_groups)
from sharpc import OptimizerError
from sharpc.optim import SAM, DetSAM, FrobSAM, TraceSAM, optimizer_class

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from memory_modes import LiveTensorBytes  # noqa: E402  (the benchmark's exact tensor-memory meter)


def lean_closure(model, x, y, record=None):
    """A closure usable in both modes: backward only when gradients are on."""
    def closure():
        if record is not None:
            record.append((torch.is_grad_enabled(), flat_params(model).clone()))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    return closure


CASES = {
    "Frobenius, U-statistic": (lambda: optimizer_class(frobenius()), dict(rho=0.05, strength=0.5, n_samples=3)),
    "Frobenius, plug-in, antithetic": (lambda: optimizer_class(frobenius()),
                                       dict(rho=0.05, strength=0.5, n_samples=3, estimator="plugin",
                                            difference="antithetic")),
    "trace (sphere)": (lambda: TraceSAM, dict(n_samples=2)),
    "plug-in prod(1 - l/5)": (lambda: optimizer_class(shifted_det(0.2)), dict(rho=0.05, strength=0.5, n_samples=3)),
    "third power sum": (lambda: optimizer_class(third_power_sum()), dict(rho=0.05, strength=0.1, n_samples=3)),
    "two sample groups": (lambda: optimizer_class(trace_product_two_groups()),
                          dict(rho=0.05, strength=2e-6, n_samples=2, relative=False)),  # its target is ~0
    "SAM (Dirac)": (lambda: SAM, dict()),
    "ASAM": (lambda: SAM, dict(adaptive=True, rho=0.5)),
    "Det-SAM (hypercube)": (lambda: DetSAM, dict()),
}


def run(name, memory, steps=3, dropout=0.2, batchnorm=True):
    cls, options = CASES[name]
    model, x, y = tiny_mlp(dtype=torch.float64, dropout=dropout, batchnorm=batchnorm)
    options = {"clip": None, **options}  # clip needs memory="sums"; off in both, the two must agree
    opt = cls()(model.parameters(), lr=0.1, momentum=0.9, seed=2, model=model, memory=memory, **options)
    torch.manual_seed(0)
    for _ in range(steps):
        opt.step(lean_closure(model, x, y))
    return model, opt


@pytest.mark.parametrize("name", list(CASES))
def test_lean_takes_the_same_steps_as_running_sums(name):
    """Same seed, dropout and BatchNorm: the same parameters, statistics and sharpness."""
    sums, opt_sums = run(name, "sums")
    lean, opt_lean = run(name, "lean")
    torch.testing.assert_close(flat_params(lean), flat_params(sums), rtol=0, atol=1e-12)
    for a, b in zip(lean.buffers(), sums.buffers()):  # BatchNorm statistics
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(opt_lean.sharpness, opt_sums.sharpness, rtol=1e-10, atol=1e-12)


def test_lean_replays_every_point_and_its_dropout_mask():
    """2n + 1 closure calls: the clean pass, n loss-only and n weighted passes at the same points."""
    model, x, y = tiny_mlp(dropout=0.5)
    record = []
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, n_samples=3, memory="lean", difference="one-sided")
    torch.manual_seed(7)
    opt.step(lean_closure(model, x, y, record))
    grad_on = [g for g, _ in record]
    assert grad_on == [True, False, False, False, True, True, True]
    points = [p for _, p in record]
    assert all(torch.equal(a, b) for a, b in zip(points[1:4], points[4:7]))
    assert len({tuple(p.tolist()) for p in points[1:4]}) == 3
    # the global RNG is left as the clean pass left it, as in memory="sums"
    after = torch.rand(4)
    torch.manual_seed(7)
    lean_closure(model, x, y)()
    assert torch.equal(after, torch.rand(4))


def test_lean_holds_the_backup_and_the_perturbation_alone():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, memory="lean", n_samples=4, difference="antithetic")
    assert opt.buffer_report() == {"bound": 2, "allocated": None}
    opt.step(lean_closure(model, x, y))
    assert opt.buffer_report() == {"bound": 2, "allocated": 2.0}
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = FrobSAM([{"params": weights}, {"params": biases, "perturb": False}], lr=0.1, seed=0, memory="lean")
    opt.step(lean_closure(model, x, y))
    assert 1.0 < opt.buffer_report()["allocated"] < 2.0  # both cover the perturbed parameters only


def test_lean_peak_memory_is_lower_by_the_accumulators():
    """On a model whose parameters dwarf its activations the peaks differ by about the buffers.

    The first step allocates the kept buffers, so its peak counts them with the transients.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128))
    x, y = torch.randn(2, 128), torch.randint(0, 128, (2,))
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    peaks = {}
    for memory in ("sums", "lean"):
        opt = FrobSAM(model.parameters(), lr=0.0, seed=0, memory=memory, difference="one-sided")
        with LiveTensorBytes() as tracker:
            opt.step(lean_closure(model, x, y))
        peaks[memory] = tracker.peak / size
    # sums: backup, .grad buffer, g0, 2 accumulators, and the clean pass's fresh gradients;
    # lean: backup, .grad buffer, perturbation, and the clean pass's fresh gradients
    assert 5.5 < peaks["sums"] < 6.5 and 3.5 < peaks["lean"] < 4.5, peaks


# ----------------------------------------------------------------------------- misuse and faults
def test_a_closure_that_always_calls_backward_is_refused_with_the_fix():
    model, x, y = tiny_mlp()
    before = flat_params(model).clone()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, memory="lean")

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(OptimizerError, match="torch.is_grad_enabled"):
        opt.step(closure)
    assert torch.equal(flat_params(model), before) and all(p.grad is None for p in model.parameters())


def test_lean_rejects_bad_memory_names():
    model, _, _ = tiny_mlp()
    with pytest.raises(OptimizerError, match="memory must be"):
        FrobSAM(model.parameters(), memory="tiny")


@pytest.mark.parametrize("bad_call", [2, 5])  # a loss-only pass, a weighted pass
def test_a_failing_lean_pass_restores_everything(bad_call):
    model, x, y = tiny_mlp(batchnorm=True)
    before = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=0, memory="lean", model=model, n_samples=3)
    calls = []

    def closure():
        calls.append(None)
        if len(calls) - 1 == bad_call:
            raise RuntimeError("data loader exploded")
        return lean_closure(model, x, y)()

    with pytest.raises(OptimizerError, match="perturbed point"):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, (*model.parameters(), *model.buffers())))
    assert all(p.grad is None for p in model.parameters()) and len(opt.state) == 0


def test_a_non_finite_lean_step_is_skipped_with_parameters_untouched():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, memory="lean", nonfinite="skip", difference="one-sided")
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        loss = torch.nn.functional.cross_entropy(model(x), y) * (float("nan") if len(calls) == 2 else 1.0)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    before = flat_params(model).clone()
    opt.step(closure)
    assert opt.skipped_steps == 1 and calls[:3] == [True, False, False]  # clean pass, then forward only
    assert torch.equal(flat_params(model), before)


def test_a_lean_step_makes_no_host_device_sync():
    model, x, y = tiny_mlp(batchnorm=True, dropout=0.1)
    opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=0, model=model, nonfinite="ignore", memory="lean")
    closure = lean_closure(model, x, y)
    opt.step(closure)
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "__float__")}

    def forbidden(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} inside step")
        return read

    with contextlib.ExitStack() as stack:
        for name in originals:
            stack.enter_context(mock.patch.object(torch.Tensor, name, forbidden(name)))
        opt.step(closure)
    assert torch.isfinite(opt.sharpness)
