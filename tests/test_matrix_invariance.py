"""Theorem 7 targets in the matrix H, and the invariance checks of Theorems 10-11."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sharpc
from sharpc.parse import parse
from sharpc.spectral import HEntry
from sharpc.verify import target_at


# ----------------------------------------------------------------------------- H in the language
@pytest.mark.parametrize("text", ["H[0, 1]**2", "trace(H @ H)", "det(H)", "H[0, 0]*H[1, 1] - H[0, 1]**2",
                                  "trace(H**3) / 3 + H[2, 2]"])
def test_matrix_targets_verify(text):
    measure = sharpc.compile(text, d=3)
    assert measure.strategy == "dirac"
    assert measure.m <= 6
    report = measure.verify(samples=100)
    assert report.certified is True and report.passed


def test_matrix_and_spectral_forms_agree_numerically():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    h = a + a.T
    assert target_at(parse("trace(H @ H)", d=4), h) == pytest.approx(target_at(parse("sum(l**2)"), h))
    assert target_at(parse("det(H)", d=4), h) == pytest.approx(target_at(parse("prod(l)"), h))


@pytest.mark.parametrize("text, d, message", [
    ("H[0, 1]", None, "H needs a concrete d"),
    ("H", 3, "the target is a matrix"),
    ("H * H", 3, "use @ for matrix products"),
    ("det(H)", 9, "matrix operations on H need d <= 6"),
    ("sum(l) + H[0, 0]", 3, "not both"),
    ("H[0, 3]", 3, "out of range"),
    ("H[0]", 3, "written H"),
    ("trace(l)", 3, "l is a vector"),
])
def test_matrix_errors(text, d, message):
    with pytest.raises(sharpc.ParseError, match=message):
        parse(text, d=d)


def test_large_matrix_targets_need_force():
    text = " + ".join(f"H[{i}, {i + 1}]" for i in range(39))
    with pytest.raises(sharpc.DerivationError, match="force"):
        sharpc.compile(text, d=40)
    assert sharpc.compile(text, d=40, force=True).m == 79


# ----------------------------------------------------------------------------- invariance
class Example2(nn.Module):
    """The paper's Example 2: L = x1^2 x2^2 - 2 x1 x2 + 1, minimal on x1 x2 = 1."""

    def __init__(self, x1: float, x2: float):
        super().__init__()
        self.x = nn.Parameter(torch.tensor([x1, x2], dtype=torch.float64))

    def forward(self, _):
        x1, x2 = self.x
        return x1**2 * x2**2 - 2 * x1 * x2 + 1


def example2(measure, k: float) -> float:
    model = Example2(k, 1 / k)
    return measure.evaluate(model, lambda out, _: out, (torch.zeros(1), torch.zeros(1))).value


class TwoLayerLinear(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.first = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64) * scale)
        self.second = nn.Parameter(torch.randn(1, 3, generator=g, dtype=torch.float64) / scale)

    def forward(self, x):
        return x @ self.first.T @ self.second.T


def two_layer(measure, scale: float) -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randn(16, 1, generator=g, dtype=torch.float64)
    return measure.evaluate(TwoLayerLinear(scale), nn.MSELoss(), (x, y)).value


@pytest.mark.parametrize("probe", [example2, two_layer], ids=["example2", "two-layer-linear"])
def test_adaptive_measures_are_scale_invariant_and_trace_is_not(probe):
    rescalings = (1.0, 2.0, 5.0)
    trace = [probe(sharpc.compile("sum(l)"), k) for k in rescalings]
    assert max(trace) > 1.5 * min(trace)
    for text in ("sum(l)", "sum(l**2)", "sum(l)**2 - sum(l**2)"):
        invariant = [probe(sharpc.compile(text, invariant="scale"), k) for k in rescalings]
        assert invariant == pytest.approx([invariant[0]] * len(rescalings), rel=1e-9, abs=1e-9)


def test_determinant_is_invariant_on_example2():
    det = [example2(sharpc.compile("prod(l)"), k) for k in (1.0, 2.0, 5.0)]
    assert det == pytest.approx([det[0]] * 3, abs=1e-9)


def test_scale_invariant_determinant_optimizer_trains():
    measure = sharpc.compile("prod(l)", invariant="scale")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = measure.optimizer_class()(model.parameters(), rho=1.0, strength=0.01, lr=0.05, seed=0)
    losses = []
    for _ in range(30):
        def closure():
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        opt.zero_grad()
        losses.append(opt.step(closure).item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert HEntry  # the matrix vocabulary is importable alongside
