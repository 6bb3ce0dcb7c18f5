"""Mixed precision and gradient accumulation: autocast closures, float32 loss differences,
torch.amp.GradScaler, and closures that loop over micro-batches."""

from __future__ import annotations

import pytest
import torch

from _optim_helpers import Quadratic, flat_params, frobenius, symmetric, tiny_mlp, trace_gaussian
from sharpc.optim import SAM, FrobSAM, TraceSAM, optimizer_class


def closure_for(model, x, y, autocast=None, scaler=None, factor=1.0):
    def closure():
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = factor * torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            (loss if scaler is None else scaler.scale(loss)).backward()
        return loss
    return closure


# ----------------------------------------------------------------------------- autocast
def test_a_bfloat16_autocast_closure_trains_with_float32_losses_and_sharpness():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), rho=0.05, lr=0.1, momentum=0.9, seed=0)
    closure = closure_for(model, x, y, autocast=torch.bfloat16)
    losses = [opt.step(closure) for _ in range(15)]
    assert all(loss.dtype == torch.float32 for loss in losses)
    assert opt.sharpness.dtype == torch.float32 and torch.isfinite(opt.sharpness)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0]


def test_loss_differences_are_taken_in_float32_even_for_a_bfloat16_loss():
    """Delta = (L_i - L_0) / rho**2 from bfloat16 losses, computed in float32 (not rounded to 8 bits)."""
    quad = Quadratic(symmetric([1.5, 0.7, -0.4, 0.2]), y=[0.3, -0.2, 0.1, 0.25], dtype=torch.float32)
    returned = []

    def closure():
        loss = quad.loss(quad.x).to(torch.bfloat16)
        loss.backward()
        returned.append(loss.detach())
        return loss

    rho = 0.3
    opt = optimizer_class(trace_gaussian())([quad.x], rho=rho, strength=1.0, n_samples=5, lr=0.0, seed=0,
                                            difference="one-sided")
    loss = opt.step(closure)
    assert loss.dtype == torch.float32 and opt.sharpness.dtype == torch.float32
    b0, *b = [v.double() for v in returned]
    exact = 2 * torch.stack([(bi - b0) / rho**2 for bi in b]).mean()  # target = 2 E[Q]; float64 arithmetic
    in_bf16 = 2 * torch.stack([(bi - b0).to(torch.bfloat16) / torch.tensor(rho**2, dtype=torch.bfloat16)
                               for bi in b]).mean()
    assert opt.sharpness.item() == pytest.approx(exact.item(), rel=1e-6)
    assert abs(in_bf16.item() - exact.item()) > 1e-4 * abs(exact.item())  # bfloat16 arithmetic would show


# ----------------------------------------------------------------------------- GradScaler
@pytest.mark.parametrize("memory", ["sums", "lean"])
def test_a_grad_scaler_step_equals_the_unscaled_step(memory):
    def run(scaler):
        model, x, y = tiny_mlp()
        opt = FrobSAM(model.parameters(), rho=0.05, lr=0.1, momentum=0.9, seed=0, memory=memory, grad_scaler=scaler)
        closure = closure_for(model, x, y, scaler=scaler)
        for _ in range(3):  # three steps: no "unscale_() has already been called" between them
            opt.step(closure)
            if scaler is not None:
                scaler.update()
        return flat_params(model)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    assert torch.equal(run(scaler), run(None))  # powers of two: scaling and unscaling are exact
    assert scaler.get_scale() == 2.0**11  # two clean steps grew the scale once


def test_an_overflowing_scaled_gradient_skips_the_base_step_and_backs_the_scale_off():
    model, x, y = tiny_mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    opt = FrobSAM(model.parameters(), rho=0.05, lr=0.1, momentum=0.9, seed=0, grad_scaler=scaler)
    before = flat_params(model).clone()
    loss = opt.step(closure_for(model, x, y, scaler=scaler, factor=100.0))
    assert torch.isfinite(loss)
    scaler.update()
    assert torch.equal(flat_params(model), before) and len(opt.state) == 0
    assert scaler.get_scale() == 2.0**126
    opt.step(closure_for(model, x, y, scaler=scaler))  # the next step goes through
    scaler.update()
    assert not torch.equal(flat_params(model), before)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_skipped_non_finite_step_is_an_overflow_for_the_scaler(enabled):
    model, x, y = tiny_mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=enabled)
    opt = FrobSAM(model.parameters(), rho=0.05, lr=0.1, seed=0, grad_scaler=scaler, nonfinite="skip")
    before = flat_params(model).clone()
    calls = []

    def closure():
        calls.append(None)
        loss = torch.nn.functional.cross_entropy(model(x), y) * (float("nan") if len(calls) == 2 else 1.0)
        scaler.scale(loss).backward()
        return loss

    opt.step(closure)
    scaler.update()  # has an inf check on record, so it does not assert
    assert opt.skipped_steps == 1 and scaler.get_scale() == (2.0**7 if enabled else 1.0)
    assert torch.equal(flat_params(model), before) and all(p.grad is None for p in model.parameters())


def test_float16_autocast_with_a_grad_scaler_trains():
    model, x, y = tiny_mlp()
    scaler = torch.amp.GradScaler("cpu")
    opt = SAM(model.parameters(), lr=0.1, momentum=0.9, grad_scaler=scaler)
    closure = closure_for(model, x, y, autocast=torch.float16, scaler=scaler)
    losses = []
    for _ in range(10):
        losses.append(opt.step(closure))
        scaler.update()
    assert losses[-1] < losses[0] and torch.isfinite(flat_params(model)).all()


def test_a_grad_scaler_must_look_like_one():
    model, _, _ = tiny_mlp()
    with pytest.raises(FrobSAM.Error, match="GradScaler"):
        FrobSAM(model.parameters(), grad_scaler=object())


# ----------------------------------------------------------------------------- accumulation
def micro_batch_closure(model, x, y, sizes):
    """Each micro-batch's mean loss weighted by its share of the batch; .grad accumulates."""
    def closure():
        total = torch.zeros((), dtype=x.dtype)
        for xb, yb in zip(x.split(sizes), y.split(sizes)):
            loss = torch.nn.functional.cross_entropy(model(xb), yb) * (len(xb) / len(x))
            if torch.is_grad_enabled():
                loss.backward()
            total += loss.detach()
        return total
    return closure


@pytest.mark.parametrize("cls, options", [
    (lambda: optimizer_class(frobenius()), dict(rho=0.05, strength=0.5, n_samples=3)),
    (lambda: optimizer_class(frobenius()), dict(rho=0.05, strength=0.5, n_samples=3, memory="lean")),
    (lambda: SAM, dict()),
    (lambda: TraceSAM, dict(n_samples=2, difference="antithetic")),
])
def test_accumulating_micro_batches_equals_the_full_batch_step(cls, options):
    def run(sizes):
        model, x, y = tiny_mlp(dtype=torch.float64)
        opt = cls()(model.parameters(), lr=0.1, momentum=0.9, seed=4, **options)
        closure = micro_batch_closure(model, x, y, sizes)
        losses = [opt.step(closure) for _ in range(3)]
        return flat_params(model), torch.stack(losses), opt.sharpness

    params, losses, sharpness = run([32])
    for sizes in ([8, 8, 8, 8], [10, 10, 12]):
        p, ls, s = run(sizes)
        torch.testing.assert_close(p, params, rtol=0, atol=1e-12)
        torch.testing.assert_close(ls, losses, rtol=1e-12, atol=0)
        torch.testing.assert_close(s, sharpness, rtol=1e-6, atol=1e-9)
