"""sharpc.hessian against independent oracles.

Exact Hessians come from closed forms (least squares), from torch.autograd.functional.hessian
on a flattened-parameter function, or from curvlinops; eigenvalues from numpy. Estimators
must land within a few of their own standard errors of the exact values (seeded, so stable).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import sharpc
from sharpc import hessian
from sharpc.spectral import HEntry

F64 = torch.float64
Z = 4.0  # standard errors allowed between an estimate and the exact value


def data(n: int, d_in: int, d_out: int, seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=dtype), torch.randn(n, d_out, generator=g, dtype=dtype)


def mlp(seed: int = 0, dtype=F64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


def half_mse(outputs, targets):
    return 0.5 * ((outputs - targets) ** 2).sum(1).mean()


def oracle_hessian(model: nn.Module, loss_fn, inputs, targets) -> torch.Tensor:
    """autograd.functional.hessian of the loss as a function of all parameters, flattened."""
    names, params = zip(*model.named_parameters())
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(vector):
        chunks = vector.split([p.numel() for p in params])
        tensors = {name: c.view_as(p) for name, c, p in zip(names, chunks, params)}
        return loss_fn(torch.func.functional_call(model, {**tensors, **buffers}, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss_of, flat)


def least_squares(spectrum, n: int = 200, seed: int = 0):
    """A linear model whose loss Hessian X^T X / n has the given eigenvalues."""
    d = len(spectrum)
    g = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=F64))
    right, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    inputs = math.sqrt(n) * left @ torch.diag(torch.as_tensor(spectrum, dtype=F64).sqrt()) @ right.T
    model = nn.Linear(d, 1, bias=False).to(F64)
    return model, half_mse, (inputs, torch.randn(n, 1, generator=g, dtype=F64))


@pytest.fixture(scope="module")
def tiny():
    """A tanh MLP (d = 32) with its exact Hessian and eigenvalues."""
    model, batch = mlp(), data(20, 3, 2)
    exact = oracle_hessian(model, half_mse, *batch)
    return model, batch, exact, np.linalg.eigvalsh(exact.numpy())


# ----------------------------------------------------------------------------- exact Hessians


def test_least_squares_hessian_is_gram_matrix_also_over_unequal_batches():
    inputs, targets = data(30, 6, 1)
    model = nn.Linear(6, 1, bias=False).to(F64)
    gram = inputs.T @ inputs / 30
    whole = hessian.HessianOperator(model, half_mse, (inputs, targets))
    batches = [(inputs[a:b], targets[a:b]) for a, b in ((0, 7), (7, 19), (19, 30))]
    split = hessian.HessianOperator(model, half_mse, batches)
    torch.testing.assert_close(whole.dense(), gram)
    torch.testing.assert_close(split.dense(), gram)
    assert whole.dim == 6


def test_mlp_matches_autograd_functional_hessian(tiny):
    model, batch, exact, _ = tiny
    torch.testing.assert_close(hessian.HessianOperator(model, half_mse, batch).dense(), exact)


def test_float32_model_gives_float64_products_to_float32_accuracy(tiny):
    model, (inputs, targets), exact, _ = tiny
    op = hessian.HessianOperator(mlp().float(), half_mse, (inputs.float(), targets.float()))
    v = torch.randn(op.dim, dtype=F64, generator=torch.Generator().manual_seed(1))
    product = op.matvec(v)
    assert product.dtype == F64
    torch.testing.assert_close(product, exact @ v, rtol=1e-4, atol=1e-5)


def bn_model() -> nn.Module:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    model[1].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
    model[1].running_var.copy_(torch.tensor([1.5, 0.7, 2.0, 0.9]))
    return model


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batchnorm_hessian_in_either_mode_and_buffers_untouched(mode):
    model, batch = bn_model(), data(16, 3, 2, seed=3)
    model.train(mode == "train")
    exact = oracle_hessian(model, half_mse, *batch)
    model.train(mode != "train")  # the operator must switch it
    before = {name: b.clone() for name, b in model.named_buffers()}
    torch.testing.assert_close(hessian.HessianOperator(model, half_mse, batch, mode=mode).dense(), exact)
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name


def test_dense_refuses_large_models_without_force():
    d = hessian.DENSE_LIMIT + 1
    op = hessian.HessianOperator(nn.Linear(d, 1, bias=False), half_mse, data(2, d, 1, dtype=torch.float32))
    with pytest.raises(sharpc.SharpcError, match="force=True"):
        op.dense()


# ----------------------------------------------------------------------------- modes


def mixed_mode_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)).to(F64)
    model.train()
    model[1].eval()
    return model


def flags(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("mode", ["eval", "train", None])
def test_every_submodule_mode_is_restored(mode):
    model = mixed_mode_model()
    original, seen = flags(model), []

    def loss_fn(outputs, targets):
        seen.append(flags(model))
        return half_mse(outputs, targets)

    hessian.HessianOperator(model, loss_fn, data(8, 3, 2), mode=mode)
    assert flags(model) == original
    expected = original if mode is None else [mode == "train"] * len(original)
    assert seen == [expected]


def test_modes_are_restored_when_loss_fn_raises():
    model = mixed_mode_model()
    original = flags(model)

    def broken(outputs, targets):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hessian.HessianOperator(model, broken, data(8, 3, 2), mode="eval")
    assert flags(model) == original


# ----------------------------------------------------------------------------- no host sync

HOST_SYNCS = ("item", "__float__", "__bool__", "__int__")


def test_probe_loops_never_move_scalars_to_the_host(tiny, monkeypatch):
    model, batch, _, _ = tiny
    op = hessian.HessianOperator(model, half_mse, batch)
    g = torch.Generator().manual_seed(0)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside a probe loop")

    with monkeypatch.context() as patch:
        for name in HOST_SYNCS:
            patch.setattr(torch.Tensor, name, refuse)
        hessian.power_samples(op, [1, 2, 3], 5, generator=g)
        hessian.lanczos(op, 3, iterations=10, generator=g)
        hessian.slq(op, 3, 8, generator=g).density(torch.linspace(-1, 3, 5), 0.1)


@pytest.mark.parametrize("estimator", [
    lambda op, model, batch, n, g: hessian.hutchinson_trace(op, n, generator=g),
    lambda op, model, batch, n, g: hessian.hutchpp_trace(op, 3 * n, generator=g),
    lambda op, model, batch, n, g: hessian.slq(op, n, 8, generator=g).trace(torch.exp),
    lambda op, model, batch, n, g: hessian.evaluate(sharpc.compile("sum(l)*sum(l**2)"), model, half_mse, batch,
                                                    exact_limit=0, probes=n, generator=g),
], ids=["hutchinson", "hutch++", "slq", "evaluate"])
def test_host_transfers_do_not_grow_with_probes(tiny, monkeypatch, estimator):
    """The final conversion to floats may sync once; the loops may not."""
    model, batch, _, _ = tiny
    op = hessian.HessianOperator(model, half_mse, batch)
    calls = []
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            calls.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = []
    for probes in (3, 12):
        calls.clear()
        estimator(op, model, batch, probes, torch.Generator().manual_seed(0))
        counts.append(len(calls))
    assert counts[0] == counts[1] <= 2


# ----------------------------------------------------------------------------- Hutchinson family


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_trace_and_frobenius_within_standard_errors(tiny, distribution):
    model, batch, _, eigenvalues = tiny
    op = hessian.HessianOperator(model, half_mse, batch)
    g = torch.Generator().manual_seed(5)
    trace = hessian.hutchinson_trace(op, 300, distribution=distribution, generator=g)
    frobenius = hessian.frobenius_squared(op, 300, distribution=distribution, generator=g)
    assert abs(trace.value - eigenvalues.sum()) < Z * trace.stderr
    assert abs(frobenius.value - (eigenvalues**2).sum()) < Z * frobenius.stderr
    assert trace.samples == frobenius.samples == 300 and trace.stderr > 0


def test_stderr_shrinks_like_one_over_sqrt_n(tiny):
    model, batch, _, _ = tiny
    op = hessian.HessianOperator(model, half_mse, batch)
    g = torch.Generator().manual_seed(6)
    small, large = (hessian.frobenius_squared(op, n, generator=g).stderr for n in (50, 800))
    assert 2.5 < small / large < 6.5  # sqrt(800 / 50) = 4


def test_hutchpp_beats_hutchinson_on_low_rank_dominated_spectrum():
    spectrum = [100.0] * 4 + [0.01] * 36
    model, loss_fn, batch = least_squares(spectrum)
    op = hessian.HessianOperator(model, loss_fn, batch)
    exact = sum(spectrum)
    hutch, hutchpp = [], []
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        hutch.append(abs(hessian.hutchinson_trace(op, 30, generator=g).value - exact))
        estimate = hessian.hutchpp_trace(op, 30, generator=g)
        hutchpp.append(abs(estimate.value - exact))
        assert hutchpp[-1] < Z * estimate.stderr + 1e-9 and estimate.details["matvecs"] == 30
    assert np.mean(hutchpp) < 0.01 * np.mean(hutch)


# ----------------------------------------------------------------------------- Lanczos family


def test_lanczos_finds_top_eigenvalues_and_reports_convergence(tiny):
    model, batch, _, eigenvalues = tiny
    op = hessian.HessianOperator(model, half_mse, batch)
    top = eigenvalues[::-1][:3]
    full = hessian.lanczos(op, 3, iterations=op.dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(full.eigenvalues.numpy(), top, rtol=1e-9)
    assert full.iterations == op.dim and (full.residuals < 1e-8).all() and (full.changes < 1e-8).all()
    vectors = full.vectors
    torch.testing.assert_close(vectors @ vectors.T, torch.eye(3, dtype=F64))

    short = hessian.lanczos(op, 3, iterations=8, generator=torch.Generator().manual_seed(0))
    for theta, residual in zip(short.eigenvalues.numpy(), short.residuals.numpy()):
        assert np.abs(eigenvalues - theta).min() <= residual + 1e-12  # the residual bounds the error
    assert short.eigenvalues[0] <= top[0] + 1e-12  # Ritz values interlace
    assert torch.isfinite(short.changes).all()


def test_lanczos_on_a_rank_deficient_hessian_restarts_instead_of_dividing_by_zero():
    model, loss_fn, batch = least_squares([3.0, 2.0] + [0.0] * 10)
    op = hessian.HessianOperator(model, loss_fn, batch)
    result = hessian.lanczos(op, 3, iterations=12, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(result.eigenvalues.numpy(), [3.0, 2.0, 0.0], atol=1e-10)


def test_slq_traces_and_density(tiny):
    model, batch, _, eigenvalues = tiny
    op = hessian.HessianOperator(model, half_mse, batch)
    density = hessian.slq(op, 40, 12, generator=torch.Generator().manual_seed(1))
    for f, exact in ((lambda x: x, eigenvalues.sum()), (lambda x: x**2, (eigenvalues**2).sum())):
        estimate = density.trace(f)
        assert abs(estimate.value - exact) < Z * estimate.stderr
    torch.testing.assert_close(density.weights.sum(1), torch.ones(40, dtype=F64))
    grid = torch.linspace(eigenvalues.min() - 1, eigenvalues.max() + 1, 4001, dtype=F64)
    assert torch.trapezoid(density.density(grid, 0.05), grid).item() == pytest.approx(1.0, abs=1e-6)


def test_logdet_of_the_nonzero_spectrum():
    spectrum = [4.0, 2.0, 0.5, 0.1] + [0.0] * 8
    model, loss_fn, batch = least_squares(spectrum)
    op = hessian.HessianOperator(model, loss_fn, batch)
    eigenvalues = np.linalg.eigvalsh(oracle_hessian(model, loss_fn, *batch).numpy())
    expected = np.log(np.abs(eigenvalues[np.abs(eigenvalues) > 1e-6])).sum()
    exact = hessian.logdet(op, 1e-6)
    assert exact.value == pytest.approx(expected, rel=1e-10) and exact.details["kept"] == 4
    # With d nodes per probe the quadrature is exact, so only probe noise is left.
    approximate = hessian.logdet(op, 1e-6, exact_limit=0, iterations=op.dim,
                                 generator=torch.Generator().manual_seed(2))
    assert approximate.details["approximate"] and abs(approximate.value - expected) < Z * approximate.stderr


# ----------------------------------------------------------------------------- compiled measures


@pytest.mark.parametrize("text, formula", [
    ("sum(l**2)", lambda l: (l**2).sum()),
    ("prod(1 - l/10)", lambda l: np.prod(1 - l / 10)),
    ("sum(l)/d", lambda l: l.mean()),
])
def test_evaluate_exact(tiny, text, formula):
    model, batch, _, eigenvalues = tiny
    estimate = hessian.evaluate(sharpc.compile(text), model, half_mse, batch)
    assert estimate.value == pytest.approx(formula(eigenvalues), rel=1e-10, abs=1e-12)
    assert estimate.stderr == 0 and estimate.details["method"] == "exact"


@pytest.mark.parametrize("text, formula", [
    ("sum(l**2)", lambda l: (l**2).sum()),
    ("sum(l**3) - 2*sum(l)*sum(l**2)", lambda l: (l**3).sum() - 2 * l.sum() * (l**2).sum()),
])
def test_evaluate_stochastic_within_standard_errors(tiny, text, formula):
    model, batch, _, eigenvalues = tiny
    estimate = hessian.evaluate(sharpc.compile(text), model, half_mse, batch, exact_limit=0, probes=200,
                                generator=torch.Generator().manual_seed(3))
    assert abs(estimate.value - formula(eigenvalues)) < Z * estimate.stderr
    assert estimate.samples == 200 and estimate.stderr > 0


@pytest.mark.parametrize("text, options, formula", [
    ("max(l) + sum(l**2)", {}, lambda l: l.max() + (l**2).sum()),
    ("max(l) - min(l)", dict(bound=5.0), lambda l: l.max() - l.min()),
    ("l[0] + 2*l[-1] - 1", dict(bound=5.0), lambda l: l.max() + 2 * l.min() - 1),
    ("max(abs(l)) + sum(exp(l)) - 2*sum(l)", dict(bound=2.0), lambda l: np.abs(l).max() + np.exp(l).sum() - 2 * l.sum()),
    ("sum(abs(l))", dict(bound=2.0), lambda l: np.abs(l).sum()),
])
def test_evaluate_at_scale_extremes_by_lanczos_and_sums_by_slq(tiny, text, options, formula):
    """exact_limit=0 forces the stochastic route; at d = 32 Lanczos and the quadrature are exact,
    so what is left is probe noise, within Z standard errors."""
    model, batch, _, eigenvalues = tiny
    estimate = hessian.evaluate(sharpc.compile(text, **options), model, half_mse, batch, exact_limit=0,
                                generator=torch.Generator().manual_seed(4))
    assert abs(estimate.value - formula(eigenvalues)) <= Z * estimate.stderr + 1e-8 * abs(formula(eigenvalues))


def test_evaluate_at_scale_checks_its_counts(tiny):
    model, batch, _, _ = tiny
    measure = sharpc.compile("max(l) + sum(exp(l))", bound=2.0)
    for options, name in [(dict(slq_probes=1), "slq_probes"), (dict(iterations=0), "iterations")]:
        with pytest.raises(sharpc.SharpcError, match=name):
            hessian.evaluate(measure, model, half_mse, batch, exact_limit=0, **options)


def test_evaluate_refuses_what_it_cannot_estimate(tiny):
    model, batch, _, _ = tiny
    with pytest.raises(sharpc.SharpcError, match="power sums"):
        hessian.evaluate(sharpc.compile("prod(l)"), model, half_mse, batch, exact_limit=0)
    with pytest.raises(sharpc.SharpcError, match="products of 9 power sums"):
        hessian.evaluate(sharpc.compile("sum(l)**9"), model, half_mse, batch, exact_limit=0)
    with pytest.raises(sharpc.SharpcError, match="d = 3"):
        hessian.evaluate(sharpc.compile("sum(l**2)", d=3), model, half_mse, batch)


def test_evaluate_adaptive_measure_uses_the_rescaled_hessian(tiny):
    model, batch, exact, _ = tiny
    scale = torch.cat([p.detach().abs().reshape(-1) for p in model.parameters()])
    rescaled = np.linalg.eigvalsh((scale[:, None] * exact * scale).numpy())
    estimate = hessian.evaluate(sharpc.compile("sum(l**2)", invariant="scale"), model, half_mse, batch)
    assert estimate.value == pytest.approx((rescaled**2).sum(), rel=1e-10)


def test_target_at_sorted_eigenvalues_reductions_and_entries():
    matrix = np.array([[2.0, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, 0.5]])
    l = np.linalg.eigvalsh(matrix)
    target = sharpc.parse("max(l) - l[-1] + l[1] + mean(abs(l)) + sum(exp(l)) * d")
    expected = l.max() - l.min() + np.sort(l)[::-1][1] + np.abs(l).mean() + np.exp(l).sum() * 3
    assert hessian.target_at(target, matrix) == pytest.approx(expected, rel=1e-12)
    assert hessian.target_at(HEntry(0, 1) ** 2 + HEntry(2, 1), matrix) == pytest.approx(0.25 + 0.3)


def test_u_statistic_is_the_mean_over_distinct_probes():
    g = torch.Generator().manual_seed(0)
    factors = [torch.randn(6, generator=g, dtype=F64) for _ in range(3)]

    def brute(indices):
        tuples = list(itertools.permutations(indices, 3))
        return sum(float(factors[0][i] * factors[1][j] * factors[2][k]) for i, j, k in tuples) / len(tuples)

    value, left_out = hessian._u_statistic(factors, 6)
    assert float(value) == pytest.approx(brute(range(6)), rel=1e-12)
    for i in range(6):
        assert float(left_out[i]) == pytest.approx(brute([j for j in range(6) if j != i]), rel=1e-12)


# ----------------------------------------------------------------------------- curvlinops


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_products_agree_with_curvlinops(tiny):
    curvlinops = pytest.importorskip("curvlinops")
    model, (inputs, targets), _, _ = tiny
    batches = [(inputs[:8], targets[:8]), (inputs[8:], targets[8:])]
    params = list(model.parameters())
    theirs = curvlinops.HessianLinearOperator(model, nn.MSELoss(), params, batches)
    ours = hessian.HessianOperator(model, nn.MSELoss(), batches)
    v = torch.randn(ours.dim, dtype=F64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours.matvec(v), theirs @ v)


def test_a_non_scalar_or_non_finite_loss_is_refused_with_the_reason():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    measure = sharpc.compile("sum(l**2)")
    with pytest.raises(sharpc.SharpcError, match="0-d tensor, got \\(8,\\)"):
        measure.evaluate(model, lambda out, t: out.sum(1), (x, y))
    with pytest.raises(sharpc.SharpcError, match="loss is nan"):
        measure.evaluate(model, torch.nn.functional.cross_entropy, (x * float("nan"), y))


@pytest.mark.parametrize("limit", [-1, 2.5, True])
def test_exact_limit_must_be_a_non_negative_integer(limit):
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.raises(sharpc.SharpcError, match="exact_limit must be an integer >= 0"):
        sharpc.compile("sum(l**2)").evaluate(model, torch.nn.functional.cross_entropy, (x, y), exact_limit=limit)
