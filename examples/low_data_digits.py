"""The paper's Table 2 idea on scikit-learn's digits: train on 10% of the training set.

Each optimizer (Adam alone, and inside SAM, Trace-SAM, Frob-SAM, Det-SAM, with the
hyperparameters of figure1_digits.py) trains the 6-layer MLP on a stratified 10% subset for
several seeds; the table reports test accuracy as mean ± standard deviation over seeds.

    python examples/low_data_digits.py                # 5 seeds, 60 epochs
    python examples/low_data_digits.py --quick        # CI-sized

Writes low_data.md (markdown table) and low_data.csv to --out.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch
from _digits import accuracy, digits, mlp, optimizer_factory, train_epoch
from figure1_digits import RUNS
from tqdm import tqdm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("out/low_data"))
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (2 seeds, 3 epochs)")
    args = parser.parse_args()
    seeds, epochs = (2, 3) if args.quick else (args.seeds, args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict[str, list[float]] = {name: [] for name in RUNS}
    jobs = [(name, seed) for seed in range(seeds) for name in RUNS]
    for name, seed in tqdm(jobs, desc="runs"):
        x_train, y_train, x_test, y_test = digits(seed, args.fraction)
        torch.manual_seed(seed)
        model = mlp()
        options = dict(RUNS[name], seed=seed) if name != "Adam" else {}
        optimizer = optimizer_factory(name, **options)(model)
        order = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            train_epoch(model, optimizer, x_train, y_train, 32, order)
        results[name].append(accuracy(model, x_test, y_test))

    with (args.out / "low_data.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "seed", "test_accuracy"])
        writer.writerows((name, seed, acc) for name, accs in results.items() for seed, acc in enumerate(accs))
    lines = [f"Test accuracy on digits with {args.fraction:.0%} of the training set "
             f"({len(x_train)} examples), {seeds} seeds, {epochs} epochs.", "",
             "| optimizer | mean | std |", "|---|---|---|"]
    for name, accs in results.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {name} | {statistics.mean(accs):.4f} | {std:.4f} |")
    table = "\n".join(lines) + "\n"
    (args.out / "low_data.md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
