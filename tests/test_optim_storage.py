"""Flat storage: one buffer per (device, dtype), kept across steps, bookkeeping independent of the tensor count."""

from __future__ import annotations

import collections
import copy
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharpc.optim import SAM, FrobSAM

from _optim_helpers import make_closure, tiny_mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from op_counts import bookkeeping_ops  # noqa: E402  (the benchmark's counter, outside the closure)

SGD = dict(lr=0.01, momentum=0.9, foreach=True)


@pytest.mark.parametrize("make", [
    lambda p: FrobSAM(p, n_samples=4, difference="one-sided", seed=0, **SGD),
    lambda p: FrobSAM(p, n_samples=2, difference="antithetic", estimator="plugin", seed=0, **SGD),
    lambda p: FrobSAM(p, n_samples=2, difference="control", memory="lean", seed=0, adaptive=True, **SGD),
    lambda p: SAM(p, **SGD),
], ids=["frob", "frob-antithetic-plugin", "frob-lean-control-adaptive", "sam"])
def test_bookkeeping_ops_do_not_depend_on_the_number_of_tensors(make):
    few, many = (bookkeeping_ops(make, n) for n in (4, 40))
    assert few == many, collections.Counter(many) - collections.Counter(few)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_gradients_are_views_of_one_kept_buffer_reused_by_every_step():
    model, x, y = tiny_mlp()
    opt = FrobSAM(model.parameters(), lr=0.1, seed=0, n_samples=2)
    closure = make_closure(model, x, y)
    opt.step(closure)
    first = {_storage(p.grad) for p in model.parameters()}
    kept = opt._kept
    opt.zero_grad()
    opt.step(closure)
    assert len(first) == 1 and {_storage(p.grad) for p in model.parameters()} == first and opt._kept is kept


def test_a_new_param_group_gets_new_buffers_and_steps_like_a_fresh_optimizer():
    """After add_param_group the layout is rebuilt: the next step equals a fresh optimizer's with both groups."""
    options = dict(lr=0.1, n_samples=2, rho=0.05, strength=1e-3, relative=False, difference="one-sided")
    model, x, y = tiny_mlp(dtype=torch.float64)
    first, second = model[0], model[2]
    grown = FrobSAM(first.parameters(), seed=0, **options)
    grown.step(make_closure(model, x, y))
    grown.add_param_group({"params": list(second.parameters()), "perturb": False})
    twin = copy.deepcopy(model)
    fresh = FrobSAM([{"params": list(twin[0].parameters())}, {"params": list(twin[2].parameters()), "perturb": False}],
                    seed=1, **options)
    fresh.generator.set_state(grown.generator.get_state())
    grown.step(make_closure(model, x, y))
    fresh.step(make_closure(twin, x, y))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    assert {_storage(p.grad) for p in model.parameters()} == {_storage(grown._kept.grad[0])}


def test_per_group_rho_and_adaptivity_scale_their_own_elements_of_one_sphere_sample():
    """Weights at rho 0.05, adaptive (eta 0.1); biases at rho 0.02, plain: e / (rho a) is one unit vector."""
    from sharpc.optim import TraceSAM

    model, x, y = tiny_mlp(dtype=torch.float64)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = TraceSAM([{"params": weights, "rho": 0.05, "adaptive": True, "eta": 0.1},
                    {"params": biases, "rho": 0.02}], lr=0.0, seed=0, n_samples=1, difference="one-sided")
    record: list = []
    opt.step(make_closure(model, x, y, record))
    order = [n.endswith("weight") for n, _ in model.named_parameters()]
    x0, x1 = record[0], record[1]
    pieces = [(b - a) / (0.05 * (a.abs() + 0.1)) if is_weight else (b - a) / 0.02
              for a, b, is_weight in zip(x0, x1, order)]
    v = torch.cat([p.reshape(-1) for p in pieces])
    torch.testing.assert_close(torch.linalg.vector_norm(v), torch.tensor(1.0, dtype=torch.float64))


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(1e-8, 1e3), st.sampled_from([torch.float32, torch.float64]))
def test_cached_constants_give_the_same_results_as_python_numbers(a, b, rho, dtype):
    """Scalars (0-d tensors, for speed) must compute exactly what a Python number in the same op does."""
    from sharpc.runtime.maths import Scalars, filled

    scalars = Scalars()
    x, y = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
    assert torch.equal((x - y) / scalars(rho**2, x), (x - y) / rho**2)
    assert torch.equal(x * scalars(1 / rho**2, x), x * (1 / rho**2))
    assert scalars(rho, x) is scalars(rho, x)  # made once
    assert torch.equal(filled((1.0, 2.0, 3.0), dtype, x.device), torch.tensor([1.0, 2.0, 3.0], dtype=dtype))
