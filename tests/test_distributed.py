"""Data parallelism on torch.distributed: two gloo processes on localhost.

One spawn runs every scenario (spawning costs seconds; the steps milliseconds) and saves
what each rank saw; the tests compare that with one process stepping on the concatenated
batch under the same seed. Counting wraps torch.distributed.all_reduce in the children
and tells gradient all-reduces (the size of all parameters) from scalar ones by numel.
"""

from __future__ import annotations

import datetime
import gc
import os
import warnings

import pytest
import torch
import torch.distributed as dist
from _optim_helpers import PLAIN, flat_params, frobenius, make_closure, tiny_mlp
from _ranks import run_ranks

import sharpc
from sharpc import OptimizerError
from sharpc.optim import SAM, TraceSAM, optimizer_class

WORLD, STEPS, TIMEOUT_S = 2, 3, 120
SEED = 5  # rank 0's perturbation seed; rank 1 is given another one, which sync mode must override

FROB = dict(rho=0.05, strength=1e-3, n_samples=2, **PLAIN)
SCENARIOS = {  # name: (optimizer class, options)
    "frob": (lambda: optimizer_class(frobenius()), FROB),
    "frob_ddp": (lambda: optimizer_class(frobenius()), FROB),
    "frob_lean": (lambda: optimizer_class(frobenius()), dict(FROB, memory="lean")),
    "sam_lean_ddp": (lambda: SAM, dict(rho=0.05, memory="lean")),
    "sam": (lambda: SAM, dict(rho=0.05)),
    "trace_antithetic": (lambda: TraceSAM, dict(rho=0.05, n_samples=2, **{**PLAIN, "difference": "antithetic"},
                                                strength=1e-5)),
    "trace_control": (lambda: TraceSAM, dict(rho=0.05, n_samples=2, **{**PLAIN, "difference": "control"},
                                             strength=1e-5)),
    "per_rank": (lambda: optimizer_class(frobenius()), dict(FROB, distributed="per-rank")),
    "top_eigenvector": (lambda: sharpc.compile("max(l)").optimizer_class(),
                        dict(rho=0.05, strength=1e-3, **{**PLAIN, "difference": "antithetic"})),
}


def batch():
    """The global batch; rank r takes rows [16 r, 16 r + 16)."""
    _, x, y = tiny_mlp(dtype=torch.float64)
    return x, y


def shard(tensor, rank):
    return tensor[16 * rank: 16 * (rank + 1)]


def run_scenario(name, model, x, y, seed, record=None):
    cls, options = SCENARIOS[name]
    options = dict(options)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        options["model"] = model  # distributed="auto" resolves to "sync" for a DDP model
    elif dist.is_initialized() and "distributed" not in options:
        options["distributed"] = "sync"
    opt = cls()(model.parameters(), lr=0.1, momentum=0.9, seed=seed, **options)

    def closure():
        if record is not None:
            record.append(flat_params(model).clone())
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    losses, sharpness = [], []
    for _ in range(STEPS):
        losses.append(opt.step(closure).item())
        sharpness.append(opt.sharpness.item())
    return opt, losses, sharpness


def _worker(rank, port, out):
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    sizes: list[int] = []
    original = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    x, y = batch()
    x, y = shard(x, rank), shard(y, rank)
    results = {}
    try:
        for name in SCENARIOS:
            model, _, _ = tiny_mlp(dtype=torch.float64)
            target, ddp_buckets = model, []
            if name.endswith("_ddp"):
                target = torch.nn.parallel.DistributedDataParallel(model)

                def hook(state, bucket):  # DDP's own all-reduce: must never run
                    ddp_buckets.append(bucket.buffer().numel())
                    future = torch.futures.Future()
                    future.set_result(bucket.buffer())
                    return future

                target.register_comm_hook(None, hook)
            record: list = []
            sizes.clear()
            opt, losses, sharpness = run_scenario(name, target, x, y, SEED + 100 * rank, record)
            numel = sum(p.numel() for p in model.parameters())
            results[name] = dict(params=flat_params(model), losses=losses, sharpness=sharpness,
                                 gradient_all_reduces=sum(s == numel for s in sizes) / STEPS,
                                 scalar_all_reduces=sum(s < 8 for s in sizes) / STEPS,
                                 other_all_reduces=[s for s in sizes if s != numel and s >= 8],
                                 ddp_buckets=ddp_buckets, mode=opt.distributed,
                                 first_perturbation=record[1] - record[0])
            del opt, target, model
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            TraceSAM(tiny_mlp()[0].parameters(), seed=0)  # distributed="auto", a plain model, world 2
        results["auto_warnings"] = [str(w.message) for w in caught]
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.all_reduce = original
        gc.collect()  # DDP reducers must go before their process group, or exit may abort
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every scenario on two gloo processes: a list of per-rank result dicts."""
    return run_ranks(_worker, tmp_path_factory.mktemp("ranks"), WORLD, TIMEOUT_S)


def single_process(name):
    """The same scenario in this process, on the global batch, with rank 0's seed."""
    model, _, _ = tiny_mlp(dtype=torch.float64)
    x, y = batch()
    _, losses, sharpness = run_scenario(name, model, x, y, SEED)
    return flat_params(model), losses, sharpness


# ----------------------------------------------------------------------------- sync mode
@pytest.mark.slow  # the two-process fixture: ~15-25 s of spawning on 2 cores
@pytest.mark.parametrize("name", ["frob", "frob_ddp", "frob_lean", "sam", "sam_lean_ddp", "trace_antithetic",
                                  "trace_control", "top_eigenvector"])
def test_sync_ranks_agree_with_one_process_on_the_global_batch(ranks, name):
    first, second = (r[name] for r in ranks)
    assert first["mode"] == second["mode"] == "sync"
    assert torch.equal(first["params"], second["params"])
    assert first["losses"] == second["losses"] and first["sharpness"] == second["sharpness"]
    params, losses, sharpness = single_process(name)
    torch.testing.assert_close(first["params"], params, rtol=0, atol=1e-12)
    assert first["losses"] == pytest.approx(losses, rel=1e-12)  # the step returns the global mean loss
    assert first["sharpness"] == pytest.approx(sharpness, rel=1e-9, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name, gradient, scalar", [
    ("frob", 1, 3),              # one scalar all-reduce per pass (n + 1 = 3)
    ("frob_ddp", 1, 3),
    ("frob_lean", 1, 1),         # lean mode: every loss of the step in one all-reduce
    ("sam", 2, 2),               # SAM aims at the global g0: one more gradient all-reduce
    ("sam_lean_ddp", 2, 1),
    ("trace_antithetic", 1, 5),  # 1 + 2 n passes
    ("trace_control", 2, 3),     # the control variate reads the global g0: one more gradient all-reduce
    ("per_rank", 1, 1),          # loss0, R and the finiteness verdict in one scalar all-reduce
    ("top_eigenvector", 2, 3),   # the power iteration's H u is averaged too: one more vector all-reduce
])
def test_all_reduces_per_step(ranks, name, gradient, scalar):
    for rank in ranks:
        assert rank[name]["gradient_all_reduces"] == gradient
        assert rank[name]["scalar_all_reduces"] == scalar
        assert rank[name]["other_all_reduces"] == []


@pytest.mark.slow
def test_a_ddp_model_never_all_reduces_on_its_own(ranks):
    assert all(rank[name]["ddp_buckets"] == [] for rank in ranks for name in ("frob_ddp", "sam_lean_ddp"))


@pytest.mark.slow
def test_sync_ranks_draw_the_same_perturbations(ranks):
    assert torch.equal(ranks[0]["frob"]["first_perturbation"], ranks[1]["frob"]["first_perturbation"])


@pytest.mark.slow
def test_auto_warns_when_ranks_would_step_apart(ranks):
    for rank in ranks:
        assert any("every rank steps on its own" in message for message in rank["auto_warnings"])


# ----------------------------------------------------------------------------- per-rank mode
@pytest.mark.slow
def test_per_rank_mode_draws_its_own_perturbations_and_still_agrees_on_parameters(ranks):
    first, second = (r["per_rank"] for r in ranks)
    assert first["mode"] == "per-rank"
    assert not torch.allclose(first["first_perturbation"], second["first_perturbation"])
    assert torch.equal(first["params"], second["params"])  # the combined gradient is averaged
    assert first["sharpness"] == second["sharpness"] and first["losses"] == second["losses"]


# ----------------------------------------------------------------------------- without processes
def test_distributed_modes_need_an_initialized_process_group():
    model, _, _ = tiny_mlp()
    Frob = optimizer_class(frobenius())
    with pytest.raises(OptimizerError, match="init_process_group"):
        Frob(model.parameters(), rho=0.05, strength=0.5, distributed="sync")
    with pytest.raises(OptimizerError, match="distributed must be"):
        Frob(model.parameters(), rho=0.05, strength=0.5, distributed="ddp")
    with pytest.raises(OptimizerError, match="process_group= needs"):
        Frob(model.parameters(), rho=0.05, strength=0.5, distributed=None, process_group=object())
    assert Frob(model.parameters(), rho=0.05, strength=0.5).distributed is None


def test_a_single_process_group_is_the_plain_optimizer(tmp_path):
    """world_size 1: the distributed code path (flat buffers, all-reduces) changes nothing."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        results = {}
        for mode in (None, "sync", "per-rank"):
            for memory in ("sums", "lean"):
                model, x, y = tiny_mlp(dtype=torch.float64)
                closure = make_closure(model, x, y) if memory == "sums" else _lean_closure(model, x, y)
                opt = optimizer_class(frobenius())(model.parameters(), lr=0.1, seed=1, distributed=mode, memory=memory,
                                                   **FROB)
                for _ in range(STEPS):
                    opt.step(closure)
                results[mode, memory] = flat_params(model)
        reference = results[None, "sums"]
        for (mode, memory), params in results.items():
            if mode == "per-rank":  # reseeded from the shared state: another stream of perturbations
                assert torch.isfinite(params).all() and not torch.allclose(params, reference)
            else:
                torch.testing.assert_close(params, reference, rtol=0, atol=1e-14, msg=f"{mode}, {memory}")
        model, x, y = tiny_mlp(dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # world_size 1: "auto" has nothing to warn about
            TraceSAM(model.parameters(), seed=0)
        # a per-rank checkpoint records its rank: this rank's resumes exactly, another's is split off
        opt = TraceSAM(model.parameters(), seed=0, distributed="per-rank")
        assert opt.param_groups[0]["clip"] is None  # each rank would clip its own share: off by default
        saved = opt.state_dict()
        assert saved["phi_psi_sam"]["rank"] == 0
        opt.load_state_dict(saved)
        assert torch.equal(opt.generator.get_state(), saved["phi_psi_sam"]["generator_state"])
        saved["phi_psi_sam"]["rank"] = 1
        opt.load_state_dict(saved)
        assert not torch.equal(opt.generator.get_state(), saved["phi_psi_sam"]["generator_state"])
    finally:
        dist.destroy_process_group()


def _lean_closure(model, x, y):
    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    return closure


# ----------------------------------------------------------------------------- configuration check
def _mismatch_worker(rank, port, out):
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    outcome = {}
    try:
        for name, samples in (("mismatch", 2 + rank), ("match", 2)):
            model, _, _ = tiny_mlp(dtype=torch.float64)
            try:
                optimizer_class(frobenius())(model.parameters(), lr=0.1, seed=0, n_samples=samples,
                                             distributed="sync", **PLAIN)
                outcome[name] = "built"
            except OptimizerError as error:
                outcome[name] = str(error)
        torch.save(outcome, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # rank 0 hosts the store: it must not tear it down while rank 1 still talks to it
    finally:
        dist.destroy_process_group()


def test_ranks_built_with_different_configurations_fail_alike(tmp_path):
    """n_samples 2 on rank 0 and 3 on rank 1: a clear error on both ranks, not a hang or a silent divergence."""
    outcomes = run_ranks(_mismatch_worker, tmp_path, WORLD, TIMEOUT_S)
    for outcome in outcomes:
        assert "different optimizer configurations" in outcome["mismatch"]
        assert outcome["match"] == "built"
