"""Step time of distributed (phi, psi, mu)-SAM on gloo, for 1 and 2 processes on this machine.

Each rank holds the same MLP and its own batch (weak scaling: the global batch grows with
the world size); every process runs one torch thread. Configurations, timed interleaved
on rank 0 (median over repeats):

    DDP + SGD               one forward/backward, DDP's bucketed all-reduce, one SGD step
    FrobSAM sync            n = 2, distributed="sync": 1 gradient + 3 scalar all-reduces per step
    FrobSAM sync, lean      memory="lean": 1 gradient + 1 scalar all-reduce, 2 extra forwards
    FrobSAM per-rank        independent perturbations: 1 gradient + 1 scalar all-reduce
    SAM sync                the Dirac direction needs the global g0: 2 gradient all-reduces
    FrobSAM, naive DDP      DDP all-reducing every backward (3 gradient all-reduces) with
                            per-rank losses: the recipe this replaces (its ranks drift apart)

The gloo latency of an all-reduce of one float and of all the gradients is timed too.

    python benchmarks/distributed_step.py [--world 1 2] [--repeats 15] [--inner 5]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import socket
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sharpc.optim import SAM, FrobSAM

CONFIGS = ["DDP + SGD", "FrobSAM sync", "FrobSAM sync, lean", "FrobSAM per-rank", "SAM sync", "FrobSAM, naive DDP"]


def mlp(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))


def _make(config: str, model: torch.nn.Module):
    """(optimizer, the module the closure calls): a fresh replica per configuration."""
    sgd = dict(lr=0.01, momentum=0.9)
    if config == "DDP + SGD":
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        return torch.optim.SGD(ddp.parameters(), **sgd), ddp
    if config == "FrobSAM, naive DDP":
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        return FrobSAM(ddp.parameters(), seed=0, difference="one-sided", distributed=None, **sgd), ddp
    if config == "FrobSAM sync":
        return FrobSAM(model.parameters(), seed=0, difference="one-sided", distributed="sync", **sgd), model
    if config == "FrobSAM sync, lean":
        return (FrobSAM(model.parameters(), seed=0, difference="one-sided", distributed="sync", memory="lean", **sgd),
                model)
    if config == "FrobSAM per-rank":
        return FrobSAM(model.parameters(), seed=0, difference="one-sided", distributed="per-rank", **sgd), model
    if config == "SAM sync":
        return SAM(model.parameters(), distributed="sync", **sgd), model
    raise ValueError(config)


def _worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        torch.manual_seed(1000 + rank)
        x, y = torch.randn(args["batch"], 64), torch.randint(0, 10, (args["batch"],))
        steps = {}
        for config in CONFIGS:
            torch.manual_seed(0)
            opt, module = _make(config, mlp(args["width"]))

            def closure(module=module, opt=opt, plain=config == "DDP + SGD"):
                loss = torch.nn.functional.cross_entropy(module(x), y)
                if torch.is_grad_enabled():
                    loss.backward()
                return loss

            if config == "DDP + SGD":
                def step(opt=opt, closure=closure):
                    opt.zero_grad()
                    closure()
                    opt.step()
            else:
                def step(opt=opt, closure=closure):
                    opt.step(closure)
            steps[config] = step
        times = {config: [] for config in CONFIGS}
        for config in CONFIGS:  # warm-up
            for _ in range(2):
                steps[config]()
        for _ in range(args["repeats"]):
            for config in CONFIGS:
                dist.barrier()
                start = time.perf_counter()
                for _ in range(args["inner"]):
                    steps[config]()
                times[config].append((time.perf_counter() - start) / args["inner"])
        numel = sum(p.numel() for p in mlp(args["width"]).parameters())
        for label, tensor in (("all_reduce, 1 float", torch.zeros(())),
                              (f"all_reduce, {numel} floats", torch.zeros(numel))):
            times[label] = []
            for _ in range(args["repeats"]):
                dist.barrier()
                start = time.perf_counter()
                for _ in range(20):
                    dist.all_reduce(tensor)
                times[label].append((time.perf_counter() - start) / 20)
        if rank == 0:
            with open(os.path.join(out, "times.json"), "w") as f:
                json.dump({c: 1e3 * statistics.median(t) for c, t in times.items()}, f)
        del steps, opt, module, step, closure
    finally:
        gc.collect()  # DDP reducers must go before their process group, or exit may abort
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, width: int = 128, batch: int = 128, repeats: int = 15, inner: int = 5) -> dict:
    """Median step time in ms per configuration, on ``world`` gloo processes."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world, _free_port(), dict(width=width, batch=batch, repeats=repeats,
                                                                    inner=inner), out),
                           nprocs=world, join=True, start_method="spawn")
        with open(os.path.join(out, "times.json")) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128, help="per-rank batch")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=5)
    args = parser.parse_args()
    results = {w: run(w, args.width, args.batch, args.repeats, args.inner) for w in args.world}
    print(f"MLP 64-{args.width}-{args.width}-10, batch {args.batch} per rank, gloo, 1 thread per process; "
          f"median of {args.repeats} x {args.inner} steps (ms)")
    print(f"{'configuration':<28}" + "".join(f"{f'{w} process(es)':>16}" for w in args.world))
    for config in results[args.world[0]]:
        print(f"{config:<28}" + "".join(f"{results[w][config]:16.3f}" for w in args.world))


if __name__ == "__main__":
    main()
