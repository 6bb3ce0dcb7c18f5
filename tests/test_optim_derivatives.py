"""Compile-time derivatives: SymPy's phi', psi' and dU/dP against torch autograd on random inputs."""

from __future__ import annotations

import pytest
import torch

import sharpc
from sharpc.optim import SAM, optimizer_class

from _optim_helpers import make_closure, tiny_mlp

F64 = torch.float64
SYMBOLIC = ["sum(l)", "sum(l**2)", "sum(l**3)", "prod(l)", "sum(l**2)/sum(l)"]


def _classes():
    return [optimizer_class(sharpc.compile(e)) for e in SYMBOLIC] + [SAM]


@pytest.mark.parametrize("cls", _classes(), ids=SYMBOLIC + ["SAM"])
def test_symbolic_derivatives_match_autograd(cls):
    assert cls.derivatives == "symbolic"
    g = torch.Generator().manual_seed(0)
    d = torch.tensor(7.0, dtype=F64)
    for _ in range(5):
        ts = (torch.rand(cls.m, generator=g, dtype=F64) + 0.5).requires_grad_()  # positive: inside every domain
        (expected,) = torch.autograd.grad(cls.phi(ts, d), ts, allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(cls.phi_grad(ts.detach(), d), expected)

        t = (torch.randn(4, generator=g, dtype=F64)).requires_grad_()
        for c, slope in enumerate(cls.psi_slopes(t.detach(), d)):
            (expected,) = torch.autograd.grad(cls.psi(t, d)[c].sum(), t, allow_unused=True, materialize_grads=True)
            torch.testing.assert_close(slope, expected)

        if cls.ustat is not None:
            n = 5
            P = (torch.randn(len(cls.power_sums), generator=g, dtype=F64)).requires_grad_()
            (expected,) = torch.autograd.grad(cls.ustat(P, n, d), P, allow_unused=True, materialize_grads=True)
            torch.testing.assert_close(cls.ustat_grad(P.detach(), n, d), expected)


@pytest.mark.parametrize("estimator", ["unbiased", "plugin"])
def test_a_step_runs_no_autograd_outside_the_closure(monkeypatch, estimator):
    """With symbolic derivatives the step calls neither reverse nor forward AD (the autograd path does)."""
    calls = []
    for name in ("grad", "forward_ad.make_dual"):
        module, attribute = (torch.autograd.forward_ad, "make_dual") if "." in name else (torch.autograd, name)
        original = getattr(module, attribute)
        monkeypatch.setattr(module, attribute, lambda *a, f=original, **k: calls.append(f) or f(*a, **k))
    cls = optimizer_class(sharpc.compile("sum(l**2)"))
    for klass, expected in ((cls, False), (type("Fallback", (cls,), {"derivatives": "autograd"}), True)):
        model, x, y = tiny_mlp()
        opt = klass(model.parameters(), lr=0.1, seed=0, n_samples=2, estimator=estimator)
        calls.clear()
        opt.step(make_closure(model, x, y))
        assert bool(calls) is expected


def test_symbolic_and_autograd_derivatives_take_the_same_step():
    """The switch: a class forced onto the autograd path steps where the symbolic one does."""
    cls = optimizer_class(sharpc.compile("sum(l**3)"))
    fallback = type("Fallback", (cls,), {"derivatives": "autograd"})
    after = []
    for klass in (cls, fallback):
        model, x, y = tiny_mlp(dtype=F64)
        opt = klass(model.parameters(), lr=0.1, seed=0, n_samples=3, estimator="plugin")
        for _ in range(2):
            opt.step(make_closure(model, x, y))
        after.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(after[0], after[1], rtol=1e-10, atol=1e-12)


def test_a_root_of_a_polynomial_falls_back_to_autograd():
    """RootEig's derivative has no closed form: the class differentiates by autograd, and steps."""
    cls = optimizer_class(sharpc.compile("max(l)", d=3, bound=2))
    assert cls.derivatives == "autograd" and cls.phi_grad is None
