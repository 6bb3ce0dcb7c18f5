"""torch.compile: compile the model, keep the closure and the step eager; prints step times."""

import statistics
import time

import torch
import torch.nn.functional as F

from sharpc.optim import FrobSAM


def step_times(model, x, y, steps=30, warmup=5):
    opt = FrobSAM(model.parameters(), lr=0.05, momentum=0.9, seed=0)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        opt.step(closure)
        if i >= warmup:  # the first calls compile
            times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    torch.manual_seed(0)
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024),
                                   torch.nn.GELU(), torch.nn.Linear(1024, 10))

    eager = step_times(make(), x, y)
    compiled = step_times(torch.compile(make()), x, y)
    group = FrobSAM(make().parameters(), lr=0.05).param_groups[0]
    passes = 1 + group["n_samples"] * (2 if group["difference"] == "antithetic" else 1)
    print(f"FrobSAM step ({passes} forward/backward passes), median: eager {eager * 1e3:.1f} ms, "
          f"torch.compile {compiled * 1e3:.1f} ms ({torch.get_num_threads()} threads)")
