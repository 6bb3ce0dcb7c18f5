"""FSDP2: a fully_shard model trained by a compiled optimizer, on 2 CPU processes (gloo).

Under torchrun (`torchrun --nproc-per-node 2 fsdp2_frobsam.py`) each process runs `train`;
run plainly, the script starts 2 local processes itself.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard

import sharpc


def train(rank: int, world: int) -> None:
    torch.manual_seed(0)  # the same model and data on every rank; each rank takes its slice of the batch
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    x, y = x[rank::world], y[rank::world]
    fully_shard(model)  # parameters become DTensor shards
    FrobSAM = sharpc.compile_optimizer("sum(l**2)", name="FrobSAM")
    opt = FrobSAM(model.parameters(), model=model, lr=0.05, momentum=0.9)  # distributed="sync" by default

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for step in range(20):
        loss = opt.step(closure)  # one gradient reduce-scatter per step
        if rank == 0 and step % 5 == 4:
            print(f"step {step + 1}: loss {loss.item():.4f}, sharpness {opt.sharpness.item():.4g}", flush=True)


def _local_process(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train(rank, world)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" in os.environ:  # torchrun
        dist.init_process_group("gloo")
        train(dist.get_rank(), dist.get_world_size())
        dist.destroy_process_group()
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_local_process, args=(2, port), nprocs=2, start_method="fork")
