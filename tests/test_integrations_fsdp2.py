"""FSDP2 (torch.distributed.fsdp.fully_shard) on two gloo processes, against one process.

A sharded step draws on each shard exactly the coordinates the unsharded draw gives (so the
sphere is normalized over the whole vector), reduce-scatters the gradient once per step (not
after each of the 1 + n passes; no gradient-sized all-reduce, except SAM's one average of
the clean gradient, which its direction needs), and ends where one process stepping on the
global batch ends, to float64 rounding.
"""

from __future__ import annotations

import datetime
import os
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
from _optim_helpers import flat_params, frobenius, tiny_mlp, trace_sphere
from _ranks import run_ranks

import sharpc
from sharpc.optim import SAM, optimizer_class

fsdp = pytest.importorskip("torch.distributed.fsdp")
WORLD, STEPS, TIMEOUT_S, SEED = 2, 3, 120, 5
CLASSES = {"frobenius (gaussian)": lambda: optimizer_class(frobenius()),
           "trace (sphere)": lambda: optimizer_class(trace_sphere()), "SAM (dirac)": lambda: SAM,
           "top eigenvalue (power iteration)": lambda: sharpc.compile("max(l)").optimizer_class(),
           "log-determinant (importance)": lambda: sharpc.compile("sum(log(l))").optimizer_class()}
#: Gradient-sized all-reduces per step: SAM averages g0 once (its direction is the global gradient),
#: the power iteration its H u (every rank keeps the same u).
#: What the sharded path cannot do: each constructor call must refuse with the reason.
REFUSED = {"lean": (dict(memory="lean", clip=None), "memory='lean'"),
           "per-rank": (dict(distributed="per-rank"), "distributed='sync' is needed"),
           "adaptive": (dict(adaptive=True), "adaptive perturbations")}
AVERAGES_OF_G0 = {"frobenius (gaussian)": 0, "trace (sphere)": 0, "SAM (dirac)": 1,
                  "top eigenvalue (power iteration)": 1, "log-determinant (importance)": 0}


def run(measure, network, x, y, record, **options):
    opt = CLASSES[measure]()(network.parameters(), rho=0.05, strength=0.5, n_samples=2, lr=0.1,
                                               momentum=0.9, seed=SEED, clip=None, **options)

    def closure():
        record.append(full_params(network))
        loss = torch.nn.functional.cross_entropy(network(x), y)
        loss.backward()
        return loss

    return [opt.step(closure).item() for _ in range(STEPS)]


def full_params(model) -> torch.Tensor:
    """The whole parameter vector, gathered from the shards when sharded."""
    return torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().reshape(-1)
                      for p in model.parameters()])


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    # Gradient traffic, counted at the collectives: reduce-scatters (FSDP's own or the step's),
    # and all-reduces of more than a few elements (a gradient-sized one would be an extra round).
    reduces: list[int] = []
    large_all_reduces: list[int] = []
    originals = {name: getattr(dist, name) for name in ("reduce_scatter_tensor", "reduce_scatter_single", "all_reduce")
                 if hasattr(dist, name)}

    def counted(name):
        def call(*args, **kwargs):
            if name == "all_reduce":
                tensor = args[0] if args else kwargs["tensor"]
                if tensor.numel() > 8:
                    large_all_reduces.append(tensor.numel())
            else:
                reduces.append(1)
            return originals[name](*args, **kwargs)
        return call

    for name in originals:
        setattr(dist, name, counted(name))
    results = {}
    _, x, y = tiny_mlp(dtype=torch.float64)
    x, y = x[16 * rank: 16 * rank + 16], y[16 * rank: 16 * rank + 16]
    for measure in CLASSES:
        model, _, _ = tiny_mlp(dtype=torch.float64)
        fsdp.fully_shard(model)  # one FSDP group: one gradient reduce-scatter per backward
        reduces.clear()
        large_all_reduces.clear()
        record: list = []
        try:
            losses = run(measure, model, x, y, record, model=model, distributed="sync")
            results[measure] = dict(params=full_params(model), losses=losses, reduces=len(reduces) / STEPS,
                                    large_all_reduces=len(large_all_reduces), first_perturbation=record[1] - record[0])
        except Exception:
            results[measure] = dict(error=traceback.format_exc(limit=3))
    model, _, _ = tiny_mlp(dtype=torch.float64)
    fsdp.fully_shard(model)
    refusals = {}
    for name, (options, _) in REFUSED.items():
        try:
            optimizer_class(frobenius())(model.parameters(), lr=0.1, model=model, **options)
            refusals[name] = "accepted"
        except Exception as error:  # noqa: BLE001 - the test checks the type and the message
            refusals[name] = f"{type(error).__name__}: {error}"
    results["refusals"] = refusals
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    for name, original in originals.items():
        setattr(dist, name, original)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(_worker, tmp_path_factory.mktemp("fsdp2"), WORLD, TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.parametrize("measure", list(CLASSES))
def test_a_sharded_step_is_the_unsharded_step_with_one_reduce_scatter(ranks, measure):
    first, second = (r[measure] for r in ranks)
    assert "error" not in first, first.get("error")
    model, x, y = tiny_mlp(dtype=torch.float64)
    record: list = []
    losses = run(measure, model, x, y, record)
    torch.testing.assert_close(first["first_perturbation"], record[1] - record[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(first["params"], flat_params(model), rtol=0, atol=1e-10)
    torch.testing.assert_close(second["params"], first["params"], rtol=0, atol=0)
    assert first["losses"] == pytest.approx(losses, rel=1e-12)
    assert first["reduces"] == second["reduces"] == 1
    assert first["large_all_reduces"] == second["large_all_reduces"] == STEPS * AVERAGES_OF_G0[measure]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFUSED))
def test_what_the_sharded_path_cannot_do_is_refused_with_the_reason(ranks, name):
    for rank in ranks:
        message = rank["refusals"][name]
        assert message.startswith("OptimizerError: FSDP2 (DTensor parameters): ") and REFUSED[name][1] in message
