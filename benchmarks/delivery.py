"""Target delivery: does an optimizer compiled from a target lower that target, at equal accuracy?

For every (task, target) it trains the same model from the same initialization with the
base optimizer (SGD, momentum 0.9), with SAM, and with the class compiled from the target
at its defaults and at a sweep of (relative) strengths; then it measures every target at
the final parameters on the whole training set:

* ``mlp``: a 64-32-10 ReLU MLP on scikit-learn's digits (2,410 parameters), exact Hessian;
* ``cnn``: a small CNN on the 8x8 digit images (5,000+ parameters), measured with
  sharpc.hessian estimators (Hutchinson U-statistics, SLQ for sums of other functions),
  each with its standard error.

    python benchmarks/delivery.py                   # 3 seeds, both tasks, the full sweep
    python benchmarks/delivery.py --quick           # 1 seed, short training, defaults only
    python benchmarks/delivery.py --task mlp --targets trace Frobenius --strengths 0.1 1

It prints a Markdown table (median over seeds of target / base optimizer's target, and the
accuracy difference in points) and writes JSON with every run next to ``--out``; the plot
comes from ``--plot``. docs/results.md records the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import sharpc  # noqa: E402
from _digits import accuracy, digits  # noqa: E402
from sharpc import hessian  # noqa: E402
from sharpc.optim import SAM  # noqa: E402

#: Target name -> expression. Each one is also measured on every other run.
TARGETS = {
    "trace": "sum(l)",
    "Frobenius": "sum(l**2)",
    "fourth power sum": "sum(l**4)",
    "mixed polynomial": "sum(l**2) + sum(l)**2",
    "log-det of I + H/10": "sum(log(1 + l/10))",
}
#: The same targets in numpy, at an exact spectrum (an oracle independent of the parser).
AT_SPECTRUM = {
    "trace": lambda l: l.sum(),
    "Frobenius": lambda l: (l**2).sum(),
    "fourth power sum": lambda l: (l**4).sum(),
    "mixed polynomial": lambda l: (l**2).sum() + l.sum() ** 2,
    "log-det of I + H/10": lambda l: torch.log1p(l / 10).sum(),
}
#: Relative strengths swept besides the defaults.
STRENGTHS = (0.03, 0.3, 1.0)
LOSS = nn.CrossEntropyLoss()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10))


TASKS = {"mlp": mlp, "cnn": cnn}


@dataclass(frozen=True)
class Run:
    """One training run: what trained, and what it ended at."""

    task: str
    optimizer: str          # "SGD", "SAM", or a target name
    strength: float | None  # None: the class's defaults
    seed: int
    accuracy: float
    targets: dict           # target name -> (value, stderr)
    seconds: float


def make_optimizer(name: str, strength: float | None, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    base = dict(lr=lr, momentum=0.9)
    if name == "SGD":
        return torch.optim.SGD(model.parameters(), **base)
    if name == "SAM":
        return SAM(model.parameters(), base_optimizer=torch.optim.SGD, **base)
    cls = sharpc.compile(TARGETS[name]).optimizer_class()
    extra = {} if strength is None else dict(strength=strength)
    return cls(model.parameters(), base_optimizer=torch.optim.SGD, **base, **extra)


def measure(task: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """Every target at the model's full-training-set Hessian: exact (mlp) or estimated with stderr (cnn)."""
    op = hessian.HessianOperator(model, LOSS, (x, y))
    if task == "mlp":
        eigenvalues = torch.linalg.eigvalsh(op.dense(force=True))
        return {name: (float(AT_SPECTRUM[name](eigenvalues)), 0.0) for name in TARGETS}
    out = {}
    generator = torch.Generator().manual_seed(seed)
    for name, expression in TARGETS.items():
        measure_ = sharpc.compile(expression)
        if name == "log-det of I + H/10":
            density = hessian.slq(op, probes=30, iterations=40, generator=generator)
            estimate = density.trace(lambda l: torch.log1p(l / 10))
        else:
            estimate = hessian.evaluate(measure_, model, LOSS, (x, y), exact_limit=0, probes=60, generator=generator)
        out[name] = (estimate.value, estimate.stderr)
    return out


def train(task: str, optimizer: str, strength: float | None, seed: int, epochs: int, lr: float = 0.05,
          batch: int = 64) -> Run:
    start = time.perf_counter()
    x, y, x_test, y_test = digits()
    torch.manual_seed(seed)
    model = TASKS[task]()
    opt = make_optimizer(optimizer, strength, model, lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=order).split(batch):
            def closure():
                loss = LOSS(model(x[index]), y[index])
                loss.backward()
                return loss

            opt.zero_grad()
            opt.step(closure)
    return Run(task, optimizer, strength, seed, accuracy(model, x_test, y_test), measure(task, model, x, y, seed),
               time.perf_counter() - start)


def _job(args: tuple) -> Run:
    torch.set_num_threads(1)
    return train(*args)


def table(runs: list[Run], targets: list[str]) -> str:
    """Median over seeds of target / the base optimizer's target (same task, seed), and accuracy change."""
    base = {(r.task, r.seed): r for r in runs if r.optimizer == "SGD"}
    sam = {(r.task, r.seed): r for r in runs if r.optimizer == "SAM"}
    lines = ["| task | optimizer | strength | target | ratio to SGD (median) | ratio to SAM | "
             "accuracy vs SGD (points) | seeds |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r.task, r.optimizer, r.strength) for r in runs if r.optimizer not in ("SGD",)},
                  key=lambda k: (k[0], k[1] != "SAM", k[1], -1 if k[2] is None else k[2]))
    for task, name, strength in keys:
        group = [r for r in runs if (r.task, r.optimizer, r.strength) == (task, name, strength)]
        for target in ([name] if name in targets else targets):
            ratio = statistics.median(r.targets[target][0] / base[task, r.seed].targets[target][0] for r in group)
            vs_sam = statistics.median(r.targets[target][0] / sam[task, r.seed].targets[target][0] for r in group
                                       if (task, r.seed) in sam) if name != "SAM" and sam else math.nan
            points = statistics.median(100 * (r.accuracy - base[task, r.seed].accuracy) for r in group)
            label = "default" if strength is None else f"{strength:g}"
            lines.append(f"| {task} | {name} | {label} | {target} | {ratio:.3f} | {vs_sam:.3f} | {points:+.1f} | "
                         f"{len(group)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--strengths", nargs="*", type=float, default=list(STRENGTHS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, defaults only")
    parser.add_argument("--out", default="out/delivery.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.strengths = 1, 3, []
    jobs = [(task, name, strength, seed, args.epochs)
            for task in args.task for seed in range(args.seeds)
            for name, strength in [("SGD", None), ("SAM", None)]
            + [(t, s) for t in args.targets for s in [None, *args.strengths]]]
    runs = []
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        for i, run in enumerate(pool.map(_job, jobs), 1):
            runs.append(run)
            print(f"[{i}/{len(jobs)}] {run.task} {run.optimizer} strength={run.strength} seed={run.seed}: "
                  f"acc {run.accuracy:.3f}, {run.seconds:.0f} s", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "runs": [asdict(r) for r in runs]}, f, indent=1)
    print(table(runs, args.targets))


if __name__ == "__main__":
    main()
