"""Fuzzing the optimizer over hostile hyperparameters, param groups and closures.

Every construction either succeeds or raises OptimizerError; every step either goes through
with finite parameters or raises OptimizerError with the parameters exactly as they were.
(This found a combined gradient that overflowed after the finiteness check: strength 1e300.)
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sharpc
from sharpc.errors import SharpcError

TARGETS = ["sum(l)", "sum(l**2)", "sum(l**3)", "max(l)", "min(l)", "max(abs(l))", "prod(l)", "sum(log(l))",
           "sum(log(1 + l/10))", "max(l) - min(l)", "max(l) + sum(l**2)"]
_classes: dict = {}


def optimizer_for(target: str) -> type:
    if target not in _classes:
        _classes[target] = sharpc.compile(target, **({"bound": 2.0} if "min(l)" in target else {})).optimizer_class()
    return _classes[target]


SANE = st.sampled_from([0.05, 0.01, 0.5, 1.0])
HOSTILE = st.sampled_from([0, -1, 1e-300, 1e300, float("nan"), float("inf"), True, "1", None, 2])
NUMBER = st.one_of(SANE, HOSTILE)
OPTIONS = st.fixed_dictionaries({}, optional={
    "rho": NUMBER, "strength": NUMBER, "eta": NUMBER, "adaptive": st.booleans(), "fused": st.booleans(),
    "n_samples": st.sampled_from([0, 1, 2, 3, 8, -1, 1.5, True, None, "2"]),
    "estimator": st.sampled_from(["auto", "plugin", "unbiased", "bogus", None]),
    "difference": st.sampled_from(["one-sided", "antithetic", "control", "x", None]),
    "clip": st.sampled_from([None, 0.0, 1.0, -1.0, float("nan"), "recommended"]),
    "memory": st.sampled_from(["sums", "lean", "x"]),
    "nonfinite": st.sampled_from(["raise", "skip", "ignore", "x"]),
    "relative": st.sampled_from([True, False, 1, None]),
})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(target=st.sampled_from(TARGETS), options=OPTIONS, split=st.booleans(),
       fault=st.sampled_from([None, "nan", "inf", "raise", "detached"]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_hostile_options_and_closures_end_in_a_clean_step_or_a_clear_error(target, options, split, fault, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)
    x, y = torch.randn(8, 4, dtype=dtype), torch.randint(0, 3, (8,))
    params = ([{"params": model[0].parameters()}, {"params": model[2].parameters(), "perturb": False}] if split
              else model.parameters())
    fused = options.pop("fused", False)
    try:
        opt = optimizer_for(target)(params, lr=0.01, seed=0, fused=fused, **options)
    except SharpcError:  # OptimizerError is one
        return
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure():
        calls.append(None)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if fault is not None and len(calls) == 2:  # the first perturbed (or forward-only) call
            if fault == "raise":
                raise RuntimeError("data loader exploded")
            if fault == "detached":
                return loss.detach()
            loss = loss * float(fault)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    try:
        opt.step(closure)
    except SharpcError:
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        return
    if fault is None and options.get("nonfinite") != "ignore":
        assert all(torch.isfinite(p).all() for p in model.parameters())
