"""torch.compile inside the closure: a compiled model trains exactly like the eager one, and
sharpc's in-place perturbations of the parameters cause no recompiles or graph breaks."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from _optim_helpers import flat_params, frobenius, tiny_mlp
from sharpc.optim import optimizer_class

STEPS = 4


def train(model, x, y, memory="sums"):
    opt = optimizer_class(frobenius())(model.parameters(), rho=0.05, strength=0.5, n_samples=2, lr=0.1,
                                       momentum=0.9, seed=0, memory=memory)

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    return [opt.step(closure).item() for _ in range(STEPS)]


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("memory, graphs", [("sums", 1), ("lean", 2)])
def test_a_compiled_model_in_the_closure_trains_like_the_eager_one(backend, memory, graphs):
    """One graph per grad mode: memory="lean" adds the forward-only passes under no_grad.

    float64: inductor fuses and reorders float arithmetic, and Delta divides the loss's
    rounding by rho**2, so float32 runs agree only to about 1e-3 after a few steps.
    """
    eager, x, y = tiny_mlp(dtype=torch.float64)
    expected = train(eager, x, y, memory)
    model, _, _ = tiny_mlp(dtype=torch.float64)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend)
    losses = train(compiled, x, y, memory)
    assert losses == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(flat_params(model), flat_params(eager), rtol=0, atol=1e-10)
    assert counters["stats"]["unique_graphs"] == graphs  # the perturbed passes reuse the clean pass's graph
    assert not counters["graph_break"]
