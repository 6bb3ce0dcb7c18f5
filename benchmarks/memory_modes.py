"""Peak memory and step time of memory="sums" (running sums) against memory="lean".

Peak memory is counted two ways, both in units of the parameters' size:

* tensor peak: the largest number of bytes held by tensor storages that were created
  during one step and were still alive (a TorchDispatchMode that sees every op's outputs;
  exact, independent of the allocator). A plain SGD step holds 1 (the gradients) plus
  activations;
* RSS peak (``--rss``): the process's peak resident memory during one step on a wide MLP,
  above the peak of a plain forward/backward + SGD step, each configuration in a fresh
  subprocess (what the operating system sees, allocator caching included).

    python benchmarks/memory_modes.py [--width 1024] [--rss] [--rss-width 2048]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sharpc.optim import SAM, FrobSAM

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")

CONFIGS = {  # label: (class, options)
    "SGD": (None, {}),
    "SAM, sums": (lambda: SAM, dict(memory="sums")),
    "SAM, lean": (lambda: SAM, dict(memory="lean")),
    "FrobSAM n=2, sums": (lambda: FrobSAM, dict(n_samples=2, memory="sums")),
    "FrobSAM n=2, lean": (lambda: FrobSAM, dict(n_samples=2, memory="lean")),
    "FrobSAM plug-in n=4 antithetic, sums": (lambda: FrobSAM, dict(n_samples=4, estimator="plugin",
                                                                   difference="antithetic", memory="sums")),
    "FrobSAM plug-in n=4 antithetic, lean": (lambda: FrobSAM, dict(n_samples=4, estimator="plugin",
                                                                   difference="antithetic", memory="lean")),
}


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):  # views and in-place results share an input's storage: not new
                storage = t.untyped_storage()
                if id(storage) not in self._seen and id(storage) not in inputs:
                    self._seen.add(id(storage))
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._release, id(storage), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def mlp(width: int, depth: int = 3) -> torch.nn.Module:
    layers: list[torch.nn.Module] = [torch.nn.Linear(256, width), torch.nn.ReLU()]
    for _ in range(depth - 2):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def _setup(label: str, width: int, batch: int):
    torch.manual_seed(0)
    model = mlp(width)
    x, y = torch.randn(batch, 256), torch.randint(0, 10, (batch,))

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    make, options = CONFIGS[label]
    if make is None:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            opt.zero_grad()
            closure()
            opt.step()
    else:
        opt = make()(model.parameters(), lr=0.01, seed=0, **options)

        def step():
            opt.step(closure)
    return model, opt, step


def tensor_peaks(width: int = 1024, batch: int = 64, repeats: int = 5) -> list[dict]:
    """Per configuration: tensor peak / parameter size, buffer bound, median step time in ms.

    The peak is the first step's: sharpc optimizers allocate their buffers then and keep them
    (so later steps create only transients), as the base optimizer does its momentum.
    """
    rows = []
    for label in CONFIGS:
        model, opt, step = _setup(label, width, batch)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        with LiveTensorBytes() as tracker:
            step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        report = opt.buffer_report() if hasattr(opt, "buffer_report") else {"bound": 0}
        rows.append(dict(label=label, peak=tracker.peak / size, bound=report["bound"],
                         ms=1e3 * statistics.median(times)))
    return rows


def _rss_child(label: str, width: int, batch: int) -> None:
    """In a fresh process: peak RSS after a plain step, then after one step of ``label``."""
    torch.set_num_threads(1)
    model, _, plain = _setup("SGD", width, batch)
    _, opt, step = _setup(label, width, batch) if label != "SGD" else (None, None, plain)
    del model
    plain()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"kib": peak - base}))


def rss_peaks(width: int = 2048, batch: int = 64) -> list[dict]:
    """Per configuration: peak RSS above a plain SGD step, in parameter sizes (fresh process each)."""
    size = sum(p.numel() * p.element_size() for p in mlp(width).parameters())
    rows = []
    for label in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--rss-child", label, "--rss-width", str(width),
                              "--batch", str(batch)], check=True, capture_output=True, text=True).stdout
        rows.append(dict(label=label, rss=json.loads(out.strip().splitlines()[-1])["kib"] * 1024 / size))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS in subprocesses")
    parser.add_argument("--rss-width", type=int, default=2048)
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child, args.rss_width, args.batch)
        return
    torch.set_num_threads(1)
    params = sum(p.numel() for p in mlp(args.width).parameters())
    print(f"MLP 256-{args.width}-{args.width}-10 ({params} parameters), batch {args.batch}")
    print(f"{'configuration':<40}{'tensor peak':>12}{'bound':>7}{'step ms':>10}")
    for row in tensor_peaks(args.width, args.batch):
        print(f"{row['label']:<40}{row['peak']:12.2f}{row['bound']:7d}{row['ms']:10.2f}")
    if args.rss:
        print(f"\npeak RSS above a plain SGD step, MLP width {args.rss_width} (parameter sizes)")
        for row in rss_peaks(args.rss_width, args.batch):
            print(f"{row['label']:<40}{row['rss']:12.2f}")


if __name__ == "__main__":
    main()
