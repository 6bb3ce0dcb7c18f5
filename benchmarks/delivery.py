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
    python benchmarks/delivery.py --from out/a.json out/b.json --plot docs/results/delivery.png

It prints a Markdown table (median over seeds of target / base optimizer's target, and the
accuracy difference in points), writes every run as JSON to ``--out``, and with ``--plot`` a
figure of the default runs; ``--from`` tabulates saved runs instead of training. The figures in
docs/results.md come from it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import sys
import textwrap
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from _digits import accuracy, digits  # noqa: E402

import sharpc  # noqa: E402
from sharpc import hessian  # noqa: E402
from sharpc.optim import SAM  # noqa: E402

#: Target name -> expression. Each one is also measured on every other run.
TARGETS = {
    "trace": "sum(l)",
    "Frobenius": "sum(l**2)",
    "fourth power sum": "sum(l**4)",
    "mixed polynomial": "sum(l**2) + sum(l)**2",
    "log-det of I + H/10": "sum(log(1 + l/10))",
    "top eigenvalue": "max(l)",        # any d: the extreme eigenvector by power iteration (strategy "eigenvector")
    "spectral norm": "max(abs(l))",    # any d: the same, for the eigenvalue largest in magnitude
    "bottom eigenvalue": "min(l)",     # any d: power iteration on B I - H
    "sum of exp": "sum(exp(l))",       # any d: a Chebyshev approximation (strategy "chebyshev")
    "nuclear norm": "sum(abs(l))",     # the same
    "top + Frobenius": "max(l) + sum(l**2)",  # parts side by side (strategy "sum"): an eigenvector and Gaussians
    "spectral spread": "max(l) - min(l)",     # two tracked eigenvectors (power iteration on H + B I and B I - H)
}
#: compile() options of the approximated targets: the spectrum bound, and the model size for the degree.
COMPILE_OPTIONS = {"sum of exp": dict(bound=5.0, size=2410), "nuclear norm": dict(bound=5.0, size=2410),
                   "bottom eigenvalue": dict(bound=5.0), "spectral spread": dict(bound=5.0)}
#: Measured besides a target: its curvature-dependent part, where a constant dominates the target
#: (sum(exp(l)) = d + sum(exp(l) - 1) moves by under 0.1% whatever the curvature does).
EXCESS = {"sum of exp": ("sum of exp(l) - 1",)}
#: The same targets in numpy, at an exact spectrum (an oracle independent of the parser).
AT_SPECTRUM = {
    "trace": lambda ev: ev.sum(),
    "Frobenius": lambda ev: (ev**2).sum(),
    "fourth power sum": lambda ev: (ev**4).sum(),
    "mixed polynomial": lambda ev: (ev**2).sum() + ev.sum() ** 2,
    "log-det of I + H/10": lambda ev: torch.log1p(ev / 10).sum(),
    "top eigenvalue": lambda ev: ev.max(),
    "spectral norm": lambda ev: ev.abs().max(),
    "bottom eigenvalue": lambda ev: ev.min(),
    "sum of exp": lambda ev: torch.exp(ev).sum(),
    "nuclear norm": lambda ev: ev.abs().sum(),
    "sum of exp(l) - 1": lambda ev: torch.expm1(ev).sum(),
    "top + Frobenius": lambda ev: ev.max() + (ev**2).sum(),
    "spectral spread": lambda ev: ev.max() - ev.min(),
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
    options: str            # other constructor options, as "key=value,..." ("" for none)
    seed: int
    accuracy: float
    targets: dict           # target name -> (value, stderr)
    seconds: float


def parse_options(text: str) -> dict:
    """"difference=one-sided,n_samples=2" -> {"difference": "one-sided", "n_samples": 2}."""
    options = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        options[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    return options


def make_optimizer(name: str, strength: float | None, options: str, model: nn.Module,
                   lr: float) -> torch.optim.Optimizer:
    base = dict(lr=lr, momentum=0.9)
    if name == "SGD":
        return torch.optim.SGD(model.parameters(), **base)
    if name == "SAM":
        return SAM(model.parameters(), base_optimizer=torch.optim.SGD, **base)
    cls = sharpc.compile(TARGETS[name], **COMPILE_OPTIONS.get(name, {})).optimizer_class()
    extra = {} if strength is None else dict(strength=strength)
    return cls(model.parameters(), base_optimizer=torch.optim.SGD, **base, **extra, **parse_options(options))


#: Training examples the cnn's Hessian is estimated on (every HVP is a double backward over them).
CNN_SUBSET = 512


def measure(task: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """Every target at the model's training-loss Hessian: exact on all of the data (mlp), or
    estimated with standard errors on the first CNN_SUBSET examples (cnn)."""
    if task == "mlp":
        op = hessian.HessianOperator(model, LOSS, (x, y))
        eigenvalues = torch.linalg.eigvalsh(op.dense(force=True))
        return {name: (float(AT_SPECTRUM[name](eigenvalues)), 0.0) for name in AT_SPECTRUM}
    op = hessian.HessianOperator(model, LOSS, (x[:CNN_SUBSET], y[:CNN_SUBSET]))
    generator = torch.Generator().manual_seed(seed)
    trace = hessian.hutchinson_trace(op, probes=150, generator=generator)
    frobenius = hessian.frobenius_squared(op, probes=40, generator=generator)
    fourth = hessian.power_sum(op, 4, probes=40, generator=generator)
    density = hessian.slq(op, probes=15, iterations=20, generator=generator)
    logdet, exp = density.trace(lambda ev: torch.log1p(ev / 10)), density.trace(torch.exp)
    excess, nuclear = density.trace(torch.expm1), density.trace(torch.abs)
    top = hessian.lanczos(op, k=1, iterations=40, generator=generator)  # residual: its error bound
    bottom = hessian.lanczos(hessian.Negated(op), k=1, iterations=40, generator=generator)
    norm = max((float(top.eigenvalues[0]), float(top.residuals[0])),
               (float(bottom.eigenvalues[0]), float(bottom.residuals[0])))  # |l| largest at either end
    # p2 + p1^2, unbiased: E[t^2] = p1^2 + se^2 for an unbiased t; delta-method standard error
    mixed = (frobenius.value + trace.value**2 - trace.stderr**2,
             math.hypot(frobenius.stderr, 2 * trace.value * trace.stderr))
    return {"trace": (trace.value, trace.stderr), "Frobenius": (frobenius.value, frobenius.stderr),
            "fourth power sum": (fourth.value, fourth.stderr), "mixed polynomial": mixed,
            "log-det of I + H/10": (logdet.value, logdet.stderr), "sum of exp": (exp.value, exp.stderr),
            "top eigenvalue": (float(top.eigenvalues[0]), float(top.residuals[0])), "spectral norm": norm,
            "bottom eigenvalue": (-float(bottom.eigenvalues[0]), float(bottom.residuals[0])),
            "sum of exp(l) - 1": (excess.value, excess.stderr), "nuclear norm": (nuclear.value, nuclear.stderr),
            "top + Frobenius": (float(top.eigenvalues[0]) + frobenius.value,
                                math.hypot(float(top.residuals[0]), frobenius.stderr)),
            "spectral spread": (float(top.eigenvalues[0]) + float(bottom.eigenvalues[0]),
                                math.hypot(float(top.residuals[0]), float(bottom.residuals[0])))}


def train(task: str, optimizer: str, strength: float | None, options: str, seed: int, epochs: int,
          lr: float = 0.05, batch: int = 64) -> Run:
    start = time.perf_counter()
    x, y, x_test, y_test = digits()
    torch.manual_seed(seed)
    model = TASKS[task]()
    opt = make_optimizer(optimizer, strength, options, model, lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=order).split(batch):
            def closure():
                loss = LOSS(model(x[index]), y[index])
                loss.backward()
                return loss

            opt.zero_grad()
            opt.step(closure)
    return Run(task, optimizer, strength, options, seed, accuracy(model, x_test, y_test),
               measure(task, model, x, y, seed), time.perf_counter() - start)


def _job(args: tuple) -> Run:
    torch.set_num_threads(1)
    return train(*args)


def table(runs: list[Run], targets: list[str]) -> str:
    """Median over seeds of target / the base optimizer's target (same task, seed), and accuracy change."""
    base = {(r.task, r.seed): r for r in runs if r.optimizer == "SGD"}
    sam = {(r.task, r.seed): r for r in runs if r.optimizer == "SAM"}
    lines = ["| task | optimizer | strength | options | target | ratio to SGD (median) | ratio to SAM | "
             "accuracy vs SGD (points) | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r.task, r.optimizer, r.strength, r.options) for r in runs if r.optimizer not in ("SGD",)},
                  key=lambda k: (k[0], k[1] != "SAM", k[1], -1 if k[2] is None else k[2], k[3]))
    for task, name, strength, options in keys:
        group = [r for r in runs if (r.task, r.optimizer, r.strength, r.options) == (task, name, strength, options)
                 and (task, r.seed) in base]  # runs without a baseline (--no-baselines) need --from with one
        if not group:
            continue
        shown = ([name, *EXCESS.get(name, ())] if name in targets
                 else [*targets, *(e for t in targets for e in EXCESS.get(t, ()))])
        for target in shown:
            if any(target not in r.targets or target not in base[task, r.seed].targets for r in group):
                continue  # measured before this target joined the benchmark
            ratio = statistics.median(r.targets[target][0] / base[task, r.seed].targets[target][0] for r in group)
            to_sam = [r.targets[target][0] / sam[task, r.seed].targets[target][0] for r in group
                      if name != "SAM" and (task, r.seed) in sam and target in sam[task, r.seed].targets]
            vs_sam = statistics.median(to_sam) if to_sam else math.nan
            points = statistics.median(100 * (r.accuracy - base[task, r.seed].accuracy) for r in group)
            label = "default" if strength is None else f"{strength:g}"
            lines.append(f"| {task} | {name} | {label} | {options or '-'} | {target} | {ratio:.3f} | {vs_sam:.3f} | "
                         f"{points:+.1f} | {len(group)} |")
    return "\n".join(lines)


def plot(runs: list[Run], path: str) -> None:
    """Each target's ratio to SGD (and SAM's, for comparison) per task, one dot per seed: the default runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in runs})
    targets = [t for t in TARGETS if any(r.optimizer == t and r.strength is None for r in runs)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        base = {r.seed: r for r in runs if r.task == task and r.optimizer == "SGD"}
        for i, target in enumerate(targets):
            for j, (name, color) in enumerate(((target, "tab:blue"), ("SAM", "tab:grey"))):
                group = [r for r in runs if (r.task, r.optimizer, r.strength, r.options) == (task, name, None, "")
                         and r.seed in base]
                shown = EXCESS.get(target, (target,))[0]  # sum(exp(l)): its part that curvature moves
                ratios = [r.targets[shown][0] / base[r.seed].targets[shown][0] for r in group]
                ax.scatter([i + 0.15 * (2 * j - 1)] * len(ratios), ratios, color=color,
                           label=("compiled from the target" if j == 0 else "SAM") if i == 0 else None)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.8, color="black", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(targets)), [textwrap.fill(EXCESS.get(t, (t,))[0], 10) for t in targets], fontsize=7)
        ax.set_yscale("log")  # a blow-up (ratio 100) and a 20% reduction on one axis
        ax.set(title=f"{task}: target at the end / SGD's (defaults)", ylabel="ratio (log scale)")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--strengths", nargs="*", type=float, default=list(STRENGTHS))
    parser.add_argument("--options", nargs="+", default=[""],
                        help='constructor options per variant, e.g. "difference=one-sided,n_samples=2"')
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--no-baselines", action="store_true", help="skip the SGD and SAM runs")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, defaults only")
    parser.add_argument("--out", default="out/delivery.json")
    parser.add_argument("--from", dest="saved", nargs="+", help="tabulate these saved JSON files instead")
    parser.add_argument("--plot", help="write a figure of the default runs here")
    args = parser.parse_args()
    if args.saved:
        runs = [Run(**{"options": "", **r}) for path in args.saved for r in json.load(open(path))["runs"]]
        print(table(runs, args.targets))
        if args.plot:
            plot(runs, args.plot)
        return
    if args.quick:
        args.seeds, args.epochs, args.strengths = 1, 3, []
    baselines = [] if args.no_baselines else [("SGD", None, ""), ("SAM", None, "")]
    jobs = [(task, name, strength, options, seed, args.epochs)
            for task in args.task for seed in range(args.seeds)
            for name, strength, options in baselines
            + [(t, s, o) for t in args.targets for s in [None, *args.strengths] for o in args.options]]
    runs = []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        for i, run in enumerate(pool.map(_job, jobs), 1):
            runs.append(run)
            print(f"[{i}/{len(jobs)}] {run.task} {run.optimizer} strength={run.strength} {run.options} "
                  f"seed={run.seed}: "
                  f"acc {run.accuracy:.3f}, {run.seconds:.0f} s", file=sys.stderr, flush=True)
            with open(args.out, "w") as f:  # after every run: an interrupted benchmark keeps what it measured
                json.dump({"args": vars(args), "runs": [asdict(r) for r in runs]}, f, indent=1)
    print(table(runs, args.targets))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
