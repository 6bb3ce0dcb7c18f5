"""The optimizer as a torch.optim citizen: construction, presets, param groups, state_dict,
schedulers, BatchNorm, dropout (common random numbers), reproducibility and dtypes."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from _optim_helpers import flat_params, frobenius, make_closure, tiny_mlp

import sharpc
from sharpc import OptimizerError, optim
from sharpc.optim import SAM, DetSAM, FrobSAM, TraceSAM, optimizer_class


def train(opt, closure, steps):
    return [opt.step(closure) for _ in range(steps)]


# ----------------------------------------------------------------------------- classes and presets
def test_presets_are_optimizer_classes_built_from_measures():
    for cls, target in ((SAM, "SAM"), (TraceSAM, "sum(l)"), (FrobSAM, "sum(l**2)"), (DetSAM, "prod(l)")):
        assert issubclass(cls, torch.optim.Optimizer) and cls.target == target
        assert cls.measure.phi is not None
    assert optim.FrobSAM is FrobSAM
    assert DetSAM.sample_groups[0].kind == "hypercube" and DetSAM.sample_groups[0].half_width == 0.01
    assert DetSAM.recommended["rho"] == 1.0
    with pytest.raises(AttributeError):
        optim.NoSuchSAM  # noqa: B018


@pytest.mark.parametrize("target, options", [
    ("sum(l**2)", {}), ("sum(l**4)", {}), ("max(l)", {}), ("max(l) - min(l)", dict(bound=5.0)),
    ("H[0, 1]**2", dict(d=None)), ("prod(l)", {}), ("sum(exp(l))", dict(bound=2.0)),
])
@pytest.mark.parametrize("difference", [None, "one-sided"])
def test_the_stated_cost_is_the_closures_call_count(target, options, difference):
    """measure.cost(n, difference), which the CLI prints, counts the passes a step really makes."""
    model, x, y = tiny_mlp()
    if "d" in options:
        options = dict(d=sum(p.numel() for p in model.parameters()))
    measure = sharpc.compile(target, **options)
    cls = measure.optimizer_class()
    kwargs = {} if difference is None else dict(difference=difference)
    opt = cls(model.parameters(), base_optimizer=torch.optim.SGD, lr=0.1, seed=0, **kwargs)
    calls = []
    opt.step(make_closure(model, x, y, record=calls))
    settings = opt.param_groups[0]
    assert len(calls) == int(measure.cost(settings["n_samples"], settings["difference"]))


@pytest.mark.parametrize("cls", [SAM, TraceSAM, FrobSAM, DetSAM])
def test_every_preset_trains_a_small_model(cls):
    model, x, y = tiny_mlp()
    closure = make_closure(model, x, y)
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, seed=0)
    losses = train(opt, closure, 15)
    assert losses[-1] < losses[0]
    assert opt.sharpness.dim() == 0 and not torch.isnan(opt.sharpness)
    # Det-SAM's scale (2 pi)^d / (2 a)^(2d) overflows beyond d ~ 70: the estimate is +inf, the step sound
    assert torch.isfinite(opt.sharpness) or (cls is DetSAM and opt.sharpness > 0)


def test_compiled_measures_give_cached_classes():
    measure = sharpc.compile("sum(l**2)")
    assert measure.optimizer_class() is measure.optimizer_class()
    assert measure.optimizer_class("Frob").__name__ == "Frob"
    cls = sharpc.compile_optimizer("sum(l**3)", name="CubeSAM")
    assert cls.__name__ == "CubeSAM" and cls.ustat_order == 3
    model, x, y = tiny_mlp()
    opt = cls(model.parameters(), rho=0.01, strength=1e-4, lr=0.1, seed=0)
    opt.step(make_closure(model, x, y))
    # degree 3: heavy-tailed, so twice the U-statistic's minimum sample count (sharpc.emit.HEAVY_TAILED_DEGREE)
    assert opt.param_groups[0]["n_samples"] == 6 and opt.param_groups[0]["estimator"] == "unbiased"


def test_constructor_rejects_what_it_cannot_do():
    model, _, _ = tiny_mlp()
    params = list(model.parameters())
    Frob = optimizer_class(frobenius())
    cases = [
        (lambda: Frob(params, difference="two-sided"), "difference must be one of"),
        (lambda: Frob(params, relative=1), "relative must be True or False"),
        (lambda: Frob([{"params": params[:1]}, {"params": params[1:], "n_samples": 4}]),
         "n_samples shapes the whole step"),
        (lambda: Frob([{"params": params[:1], "rho": 0.0}, {"params": params[1:]}]), "rho must be"),
        (lambda: Frob(params, rho=-1.0, strength=1.0), "rho must be"),
        (lambda: Frob(params, rho=0.1, strength=float("nan")), "strength must be"),
        (lambda: FrobSAM(params, n_samples=1), "n_samples must be >= 2"),
        (lambda: FrobSAM(params, n_samples=0, estimator="plugin"), "positive integer"),
        (lambda: FrobSAM(params, estimator="bias"), "estimator must be"),
        (lambda: DetSAM(params, estimator="unbiased"), "not a polynomial"),
        (lambda: FrobSAM(params, nonfinite="warn"), "nonfinite must be"),
        (lambda: sharpc.compile("sum(l**2)", d=3).optimizer_class()(params, rho=0.1, strength=1.0),
         "compiled for d=3"),
        (lambda: FrobSAM([{"params": params, "perturb": False}]), "no parameter is perturbed"),
    ]
    for make, message in cases:
        with pytest.raises(OptimizerError, match=message):
            make()
    with pytest.raises(OptimizerError, match="n_samples must be >= 2"):  # one sample: variance exactly 0
        FrobSAM(params, n_samples=1, estimator="plugin")
    assert FrobSAM(params, estimator="plugin").param_groups[0]["n_samples"] == 2
    assert TraceSAM(params, estimator="plugin").param_groups[0]["n_samples"] == 1


def test_step_rejects_bad_closures():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0)
    with pytest.raises(OptimizerError, match="needs a closure"):
        opt.step()
    with pytest.raises(OptimizerError, match="0-d tensor, got \\(32,\\)"):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y, reduction="none"))
    with pytest.raises(OptimizerError, match="0-d tensor, got float"):
        opt.step(lambda: 1.0)
    with pytest.raises(OptimizerError, match="did not call loss.backward"):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))


# ----------------------------------------------------------------------------- param groups
def test_unperturbed_groups_stay_put_during_the_step_and_d_counts_the_rest():
    model, x, y = tiny_mlp()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    record = []
    opt = TraceSAM([{"params": weights}, {"params": biases, "perturb": False}], rho=0.05, n_samples=3, lr=0.1, seed=0)
    assert opt.d == sum(w.numel() for w in weights)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(make_closure(model, x, y, record))
    names = [n for n, _ in model.named_parameters()]
    clean, *perturbed = record
    for point in perturbed:
        offsets = {n: p - q for n, p, q in zip(names, point, clean)}
        assert all(torch.equal(offsets[n], torch.zeros_like(offsets[n])) for n in names if n.endswith("bias"))
        # sphere samples are normalized over all perturbed tensors together, not per tensor
        norms = [offsets[n].norm() for n in names if n.endswith("weight")]
        assert torch.stack(norms).norm().item() == pytest.approx(0.05, rel=1e-5)
        assert all(v.item() < 0.05 * 0.99 for v in norms)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # biases still learn


def test_adaptive_perturbation_is_rho_times_abs_x_plus_eta_times_v():
    model, x, y = tiny_mlp()
    record = []
    opt = TraceSAM(model.parameters(), rho=0.05, adaptive=True, eta=0.1, lr=0.0, seed=0, difference="one-sided")
    opt.step(make_closure(model, x, y, record))
    clean, perturbed = record
    v = [(p - q) / (0.05 * (q.abs() + 0.1)) for p, q in zip(perturbed, clean)]
    assert torch.cat([t.reshape(-1) for t in v]).norm().item() == pytest.approx(1.0, rel=1e-5)


def test_add_param_group_zero_grad_and_lr_schedulers_reach_the_base_optimizer():
    model, x, y = tiny_mlp()
    first, last = model[0], model[-1]
    opt = FrobSAM(first.parameters(), lr=0.1, seed=0)
    opt.add_param_group({"params": last.parameters(), "perturb": False})
    assert opt.base_optimizer.param_groups is opt.param_groups and len(opt.param_groups) == 2
    assert opt.param_groups[1]["lr"] == 0.1 and opt.d == sum(p.numel() for p in first.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    closure = make_closure(model, x, y)
    opt.step(closure)
    scheduler.step()
    assert opt.base_optimizer.param_groups[1]["lr"] == 0.05
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(closure)
    for b, p in zip(before, model.parameters()):
        torch.testing.assert_close(b - p, 0.05 * p.grad)  # plain SGD with the scheduled lr
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_buffer_report_counts_backup_g0_and_one_accumulator_per_slot():
    model, x, y = tiny_mlp()
    closure = make_closure(model, x, y)
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, difference="one-sided")
    assert opt.buffer_report() == {"bound": 4, "allocated": None}
    opt.step(closure)
    assert opt.buffer_report() == {"bound": 4, "allocated": 4.0}
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, difference="antithetic", estimator="plugin", n_samples=5)
    opt.step(closure)
    assert opt.buffer_report() == {"bound": 5, "allocated": 5.0}
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = FrobSAM([{"params": weights}, {"params": biases, "perturb": False}], lr=0.1, seed=0, difference="control")
    opt.step(closure)
    assert 3.0 < opt.buffer_report()["allocated"] < 4.0  # the backup covers perturbed parameters only


# ----------------------------------------------------------------------------- state and randomness
def test_same_seed_same_trajectory_and_generator_equals_seed():
    def run(**kwargs):
        model, x, y = tiny_mlp()
        train(FrobSAM(model.parameters(), lr=0.1, momentum=0.9, **kwargs), make_closure(model, x, y), 4)
        return flat_params(model)

    assert torch.equal(run(seed=3), run(seed=3))
    assert torch.equal(run(seed=3), run(generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(run(seed=3), run(seed=4))
    torch.manual_seed(0)
    a = run()
    torch.manual_seed(0)
    assert torch.equal(a, run())  # without seed=, the seed comes from the global RNG


def test_resumed_run_continues_bit_identically():
    model, x, y = tiny_mlp(dropout=0.2)
    closure = make_closure(model, x, y)
    opt = FrobSAM(model.parameters(), lr=0.1, momentum=0.9, seed=7)
    train(opt, closure, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    torch.manual_seed(42)  # dropout draws from the global RNG, which the user restores
    train(opt, closure, 3)
    expected = flat_params(model)

    buffer.seek(0)
    saved = torch.load(buffer)
    fresh, _, _ = tiny_mlp(seed=99, dropout=0.2)
    fresh.load_state_dict(saved["model"])
    resumed = FrobSAM(fresh.parameters(), lr=0.1, momentum=0.9, seed=12345)
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups is resumed.base_optimizer.param_groups
    torch.manual_seed(42)
    train(resumed, make_closure(fresh, x, y), 3)
    assert torch.equal(flat_params(fresh), expected)


def test_global_rng_is_left_as_after_the_clean_pass():
    model, x, y = tiny_mlp(dropout=0.5)
    closure = make_closure(model, x, y)
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, n_samples=3)
    torch.manual_seed(5)
    opt.step(closure)
    after_step = torch.rand(4)
    torch.manual_seed(5)
    closure()
    assert torch.equal(after_step, torch.rand(4))


def test_dropout_masks_are_shared_by_the_clean_and_perturbed_passes():
    """Common random numbers: with dropout, L(x + rho v) - L(x) spreads like without it."""

    def spread(dropout, crn=True):
        model, x, y = tiny_mlp(dropout=dropout)
        losses = []

        def closure():
            if not crn:
                torch.manual_seed(len(losses))  # a fresh mask for every pass
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.detach())
            return loss

        opt = TraceSAM(model.parameters(), rho=0.05, n_samples=1, lr=0.0, seed=0, difference="one-sided")
        for _ in range(30):
            opt.step(closure)
        pairs = torch.stack(losses).reshape(-1, 2)
        return (pairs[:, 1] - pairs[:, 0]).std().item()

    without = spread(0.0)
    assert spread(0.3) < 3 * without
    assert spread(0.3, crn=False) > 10 * without  # the test can tell independent masks apart


def test_batchnorm_running_statistics_see_only_the_clean_pass():
    model, x, y = tiny_mlp(batchnorm=True)
    reference = copy.deepcopy(model)
    reference(x)  # one ordinary training forward pass at the pre-step parameters
    bn, ref = model[1], reference[1]
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, n_samples=3, model=model)
    opt.step(make_closure(model, x, y))
    assert torch.equal(bn.running_mean, ref.running_mean) and torch.equal(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked.item() == 1

    unprotected, x, y = tiny_mlp(batchnorm=True)
    FrobSAM(unprotected.parameters(), lr=0.1, seed=0, n_samples=3).step(make_closure(unprotected, x, y))
    assert unprotected[1].num_batches_tracked.item() == 7  # without model=, every pass counts (1 + 2 * 3)


# ----------------------------------------------------------------------------- dtypes and devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    model, x, y = tiny_mlp(dtype=dtype)
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0)
    train(opt, make_closure(model, x, y), 3)
    assert all(p.dtype == dtype for p in model.parameters())
    assert opt.sharpness.dtype == dtype and torch.isfinite(opt.sharpness)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_its_own_seeded_rerun_and_keeps_scalars_on_device():
    def run():
        model, x, y = tiny_mlp()
        model, x, y = model.cuda(), x.cuda(), y.cuda()
        opt = FrobSAM(model.parameters(), lr=0.1, seed=0, model=model)
        train(opt, make_closure(model, x, y), 3)
        assert opt.sharpness.device.type == "cuda" and opt.generator.device.type == "cuda"
        return flat_params(model)

    assert torch.equal(run(), run())


@pytest.mark.parametrize("memory, clearing", [("sums", "optimizer"), ("sums", "model set_to_none"),
                                              ("sums", "model in place"), ("lean", "optimizer"),
                                              ("lean", "model set_to_none")])
def test_a_closure_that_clears_gradients_itself_takes_the_same_step(memory, clearing):
    """torch's usual closure calls zero_grad first; the step must not lose or mix its passes' gradients.

    (Zeroing .grad in place inside a memory="lean" step erases the sum its weighted passes
    accumulate there: docs/optimizer.md says so; it is not detected.)"""
    def run(clear):
        model, x, y = tiny_mlp(dtype=torch.float64)
        opt = FrobSAM(model.parameters(), lr=0.1, n_samples=2, seed=0, memory=memory, clip=None)

        def closure():
            if clear:
                {"optimizer": lambda: opt.zero_grad(), "model set_to_none": lambda: model.zero_grad(),
                 "model in place": lambda: model.zero_grad(set_to_none=False)}[clearing]()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if torch.is_grad_enabled():
                loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        return flat_params(model)

    torch.testing.assert_close(run(clear=True), run(clear=False), rtol=0, atol=1e-12)


def test_one_optimizer_error_class():
    """In-process, every piece of the runtime raises sharpc.errors.OptimizerError (a SharpcError)."""
    from sharpc import errors, runtime
    from sharpc.runtime import draw_

    assert runtime.OptimizerError is errors.OptimizerError is FrobSAM.Error
    with pytest.raises(errors.OptimizerError, match="no sampler"):
        draw_("nonsense", [torch.zeros(3)])
