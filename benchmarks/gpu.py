"""Step ratios on a small ResNet-like model, with the host syncs each step makes counted.

Made for a GPU (CUDA): steps are timed between synchronizations and syncs are counted with
``torch.cuda.set_sync_debug_mode("warn")`` (one warning per synchronizing call). On CPU
(``--device cpu``, a smoke run) syncs are counted as calls to ``Tensor.item`` and
``Tensor.__bool__``, the reads a CUDA step would block on.

    python benchmarks/gpu.py [--device cuda] [--repeats 10] [--inner 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings

import torch
from torch import nn

from sharpc.optim import SAM, FrobSAM

SGD = dict(lr=0.01, momentum=0.9)


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def resnet(width: int = 32, blocks: int = 4) -> nn.Module:
    """A stem, ``blocks`` residual blocks at 32x32 and a linear head (about 0.3M parameters at width 32)."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         *[Block(width) for _ in range(blocks)], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10))


@contextlib.contextmanager
def sync_counter(device: torch.device):
    """Counts host syncs inside the block: CUDA's sync debug warnings, or item/__bool__ calls on CPU."""
    count = [0]
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield count
            finally:
                torch.cuda.set_sync_debug_mode("default")
        count[0] = sum("synchroniz" in str(w.message) for w in caught)
        return
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__")}

    def counted(original):
        def call(self, *args, **kwargs):
            count[0] += 1
            return original(self, *args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def make_runs(device: torch.device, batch: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    configs = {
        "SGD": (0, lambda p, m: torch.optim.SGD(p, **SGD)),
        "SAM": (1, lambda p, m: SAM(p, model=m, **SGD)),
        "FrobSAM n=4 one-sided": (4, lambda p, m: FrobSAM(p, model=m, n_samples=4, difference="one-sided", seed=0,
                                                           **SGD)),
        "FrobSAM n=4 one-sided, nonfinite='ignore'": (4, lambda p, m: FrobSAM(
            p, model=m, n_samples=4, difference="one-sided", nonfinite="ignore", seed=0, **SGD)),
        # the verdict stays on the device: found_inf skips the fused base step, no host read
        "FrobSAM n=4 one-sided, nonfinite='skip', fused SGD": (4, lambda p, m: FrobSAM(
            p, model=m, n_samples=4, difference="one-sided", nonfinite="skip", fused=True, seed=0, **SGD)),
    }
    runs = {}
    for label, (n, make) in configs.items():
        torch.manual_seed(0)
        model = resnet().to(device)
        opt = make(model.parameters(), model)

        def closure(model=model):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if label == "SGD":
            def step(opt=opt, closure=closure):
                opt.zero_grad()
                closure()
                opt.step()
        else:
            def step(opt=opt, closure=closure):
                opt.step(closure)
        runs[label] = (n, step)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--inner", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs = make_runs(device, args.batch)
    times: dict[str, list[float]] = {label: [] for label in runs}
    syncs = {}
    for label, (_, step) in runs.items():  # warm-up, then one step with syncs counted
        step()
        synchronize()
        with sync_counter(device) as count:
            step()
        synchronize()
        syncs[label] = count[0]
    for _ in range(args.repeats):
        for label, (_, step) in runs.items():
            synchronize()
            start = time.perf_counter()
            for _ in range(args.inner):
                step()
            synchronize()
            times[label].append((time.perf_counter() - start) / args.inner)
    base = statistics.median(times["SGD"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, ResNet-like (4 blocks, width 32), batch {args.batch}, 32x32\n")
    print("| configuration | step ms | step / ((n+1) x SGD step) | host syncs per step |\n|---|---|---|---|")
    for label, (n, _) in runs.items():
        ms = statistics.median(times[label])
        print(f"| {label} | {1e3 * ms:.2f} | {ms / ((n + 1) * base):.2f} | {syncs[label]} |")


if __name__ == "__main__":
    main()
