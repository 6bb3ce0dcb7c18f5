"""The paper's Figure 1 experiment, scaled to scikit-learn's digits.

A 6-layer ReLU MLP (width 128) trained with Adam at a constant 1e-3, alone and inside SAM,
Trace-SAM, Frob-SAM and Det-SAM; every epoch the squared Frobenius norm of the training-loss
Hessian is estimated with 100 Gaussian probes, (1/n) sum ||H z||^2, on a fixed training subset,
with its standard error. A second panel sweeps Frob-SAM's strength.

    python examples/figure1_digits.py                 # full run (see docs/results.md)
    python examples/figure1_digits.py --quick         # CI-sized

Hyperparameters: SAM rho 0.05; Trace-SAM, Frob-SAM and Det-SAM at their recommended defaults
(relative strength, |rho v| = 0.5 |x|, antithetic differences; Det-SAM samples the cube of side
0.02 at rho 1); the sweep varies Frob-SAM's relative strength (0.003, 0.01, 0.03, 0.1). Batch
size 128.
Writes figure1_frobenius.png, figure1_strength.png and CSVs to --out.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _digits import accuracy, digits, mlp, optimizer_factory, train_epoch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sharpc import hessian  # noqa: E402

RUNS = {
    "Adam": {},
    "SAM": dict(rho=0.05),
    "TraceSAM": {},
    "FrobSAM": {},
    "DetSAM": {},
}
SWEEP = (0.003, 0.01, 0.03, 0.1)


def frobenius(model, subset, probes: int, seed: int) -> tuple[float, float]:
    op = hessian.HessianOperator(model, torch.nn.CrossEntropyLoss(), subset)
    estimate = hessian.frobenius_squared(op, probes, generator=torch.Generator().manual_seed(seed))
    return estimate.value, estimate.stderr


def run(name: str, options: dict, data, epochs: int, probes: int, seed: int, label: str) -> list[dict]:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = mlp()
    optimizer = optimizer_factory(name, seed=seed, **options)(model) if name != "Adam" else \
        optimizer_factory(name)(model)
    order, subset, rows = torch.Generator().manual_seed(seed), (x_train[:512], y_train[:512]), []
    for epoch in tqdm(range(1, epochs + 1), desc=label, leave=False):
        loss = train_epoch(model, optimizer, x_train, y_train, 128, order)
        value, stderr = frobenius(model, subset, probes, seed + epoch)
        rows.append(dict(run=label, epoch=epoch, train_loss=loss, frobenius=value, stderr=stderr,
                         test_accuracy=accuracy(model, x_test, y_test)))
    return rows


def plot(rows: list[dict], labels: list[str], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in labels:
        mine = [r for r in rows if r["run"] == label]
        epochs = [r["epoch"] for r in mine]
        mean = torch.tensor([r["frobenius"] for r in mine])
        err = torch.tensor([r["stderr"] for r in mine])
        ax.plot(epochs, mean, label=label)
        ax.fill_between(epochs, mean - err, mean + err, alpha=0.25)
    ax.set(xlabel="epoch", ylabel="||H||_F^2 (100 probes, ±1 s.e.)", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/figure1"))
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (2 epochs, 10 probes)")
    args = parser.parse_args()
    epochs, probes = (2, 10) if args.quick else (args.epochs, args.probes)
    args.out.mkdir(parents=True, exist_ok=True)
    data = digits(args.seed)

    rows = []
    for name, options in RUNS.items():
        rows += run(name, options, data, epochs, probes, args.seed, name)
    sweep = []
    for strength in SWEEP:
        options = dict(RUNS["FrobSAM"], strength=strength)
        sweep += run("FrobSAM", options, data, epochs, probes, args.seed, f"FrobSAM strength={strength:g}")

    plot(rows, list(RUNS), args.out / "figure1_frobenius.png", "digits, 6-layer MLP, Adam 1e-3")
    plot(sweep, [f"FrobSAM strength={s:g}" for s in SWEEP], args.out / "figure1_strength.png",
         "Frob-SAM strength sweep")
    write_csv(rows, args.out / "figure1_frobenius.csv")
    write_csv(sweep, args.out / "figure1_strength.csv")

    print(f"\n{'run':<28}{'final ||H||_F^2':>16}{'s.e.':>10}{'min over epochs':>17}{'test acc':>10}")
    for label in [*RUNS, *(f"FrobSAM strength={s:g}" for s in SWEEP)]:
        mine = [r for r in rows + sweep if r["run"] == label]
        last = mine[-1]
        print(f"{label:<28}{last['frobenius']:>16.4g}{last['stderr']:>10.2g}"
              f"{min(r['frobenius'] for r in mine):>17.4g}{last['test_accuracy']:>10.3f}")
    print(f"\nplots and CSVs in {args.out}/")


if __name__ == "__main__":
    main()
