"""Step overhead of (phi, psi, mu)-SAM optimizers relative to plain SGD.

A step with n perturbation samples makes n + 1 forward/backward passes, so its natural
cost unit is (n + 1) x (one forward/backward + one SGD step). The printed ratio is

    median step time / ((n + 1) * median baseline time),

1.0 meaning no cost beyond the passes themselves. All configurations are timed in one
run, interleaved repeat by repeat, so machine noise hits them alike. The table also lists
the parameter-sized buffers a step allocated against the bound (2 + accumulators). When the
optional package pytorch-optimizer is installed, our SAM preset is timed against its SAM.

    python benchmarks/step_overhead.py [--repeats 15] [--inner 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from sharpc.optim import SAM, FrobSAM, TraceSAM

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")  # torch's forward AD, once
#: The clock every Run reads: wall time, or the process's CPU time (time.process_time), which a
#: loaded machine's scheduler does not inflate (one torch thread: the step's own work only).
CLOCK = {"clock": time.perf_counter}


def mlp() -> tuple[torch.nn.Module, torch.Tensor]:
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    return model, torch.randn(128, 64)


def cnn() -> tuple[torch.nn.Module, torch.Tensor]:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    return model, torch.randn(128, 3, 8, 8)


class Run:
    """One optimizer on its own copy of the model, with a function that takes one step."""

    def __init__(self, label: str, n: int, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, make_opt,
                 style: str = "closure"):
        self.label, self.n, self.model = label, n, copy.deepcopy(model)
        self.opt = make_opt(self.model.parameters())
        self.times: list[float] = []

        def closure():
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            return loss

        if style == "plain":  # one forward/backward + base step
            def step():
                self.opt.zero_grad()
                closure()
                self.opt.step()
        elif style == "two-step":  # pytorch-optimizer's SAM: gradients first, then step(closure)
            def step():
                self.opt.zero_grad()
                closure()
                self.opt.step(closure)
        else:
            def step():
                self.opt.step(closure)
        self.step = step

    def time(self, inner: int) -> None:
        clock = CLOCK["clock"]
        start = clock()
        for _ in range(inner):
            self.step()
        self.times.append((clock() - start) / inner)

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times)


def measure(runs: list[Run], repeats: int, inner: int) -> None:
    for run in runs:  # warm-up: first-call costs (class creation, allocator) are not overhead
        run.time(2)
        run.times.clear()
    for _ in range(repeats):
        for run in runs:
            run.time(inner)


def benchmark_model(name: str, build, args) -> list[str]:
    torch.manual_seed(0)
    model, x = build()
    y = torch.randint(0, 10, (x.shape[0],))
    sgd = dict(lr=0.01, momentum=0.9, difference="one-sided")  # n + 1 passes: the unit the ratios use
    baseline = Run("SGD", 0, model, x, y, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), style="plain")
    runs = [baseline]
    for n in args.samples:
        runs.append(Run("TraceSAM", n, model, x, y, lambda p, n=n: TraceSAM(p, n_samples=n, seed=0, **sgd)))
        estimator = "unbiased" if n >= 2 else "plugin"
        runs.append(Run(f"FrobSAM/{estimator}", n, model, x, y,
                        lambda p, n=n, e=estimator: FrobSAM(p, n_samples=n, estimator=e, seed=0, **sgd)))
    measure(runs, args.repeats, args.inner)
    base = baseline.median_ms
    lines = [f"{name}: {sum(p.numel() for p in model.parameters())} parameters, "
             f"baseline forward/backward + SGD step {base:.3f} ms"]
    for run in sorted(runs[1:], key=lambda r: (r.label, r.n)):
        report = run.opt.buffer_report()
        lines.append(f"  {run.label:<18} n={run.n:<2} step {run.median_ms:8.3f} ms   "
                     f"(n+1) x base {(run.n + 1) * base:8.3f} ms   ratio {run.median_ms / ((run.n + 1) * base):5.2f}   "
                     f"buffers {report['allocated']:.1f} / bound {report['bound']}")
    return lines


def compare_with_pytorch_optimizer(args) -> list[str]:
    try:
        from pytorch_optimizer import SAM as ReferenceSAM
    except ImportError:
        return ["pytorch-optimizer is not installed: SAM comparison skipped (pip install pytorch-optimizer)"]
    lines = []
    for name, build in (("MLP", mlp), ("CNN", cnn)):
        torch.manual_seed(0)
        model, x = build()
        y = torch.randint(0, 10, (x.shape[0],))
        ours = Run("sharpc SAM", 1, model, x, y, lambda p: SAM(p, rho=0.05, lr=0.01, momentum=0.9))
        theirs = Run("pytorch_optimizer.SAM", 1, model, x, y,
                     lambda p: ReferenceSAM(p, torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9), style="two-step")
        ours.step()
        theirs.step()
        gap = max((a - b).abs().max().item() for a, b in zip(ours.model.parameters(), theirs.model.parameters()))
        measure([ours, theirs], args.repeats, args.inner)
        lines.append(f"  {name}: sharpc SAM {ours.median_ms:.3f} ms, pytorch_optimizer.SAM {theirs.median_ms:.3f} ms, "
                     f"ratio {ours.median_ms / theirs.median_ms:.2f} (max |param difference| after "
                     f"one step and a warm-up {gap:.1e})")
    return ["SAM preset vs pytorch-optimizer's SAM (same model, rho=0.05, SGD momentum 0.9):", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per configuration (median)")
    parser.add_argument("--inner", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 2, 4, 8], help="values of n")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} x {args.inner} steps\n")
    for name, build in (("MLP 64-128-128-10, batch 128", mlp), ("CNN 3-16-32 conv, 8x8 inputs, batch 128", cnn)):
        print("\n".join(benchmark_model(name, build, args)), end="\n\n")
    print("\n".join(compare_with_pytorch_optimizer(args)))


if __name__ == "__main__":
    main()
