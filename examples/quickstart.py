"""Quick start: compile a sharpness target, train with it on scikit-learn's digits, measure it.

    python examples/quickstart.py                      # sum(l**2), 30 epochs, the class's defaults
    python examples/quickstart.py --target "sum(l)" --strength 0.1
    python examples/quickstart.py --quick              # CI-sized (a few epochs)

It trains the same 64-32-10 MLP (2,410 parameters) twice from the same initialization, with
SGD (momentum 0.9) and with the optimizer compiled from the target, wrapping the same SGD at
its recommended defaults. Then it prints the target at the exact Hessian of the full training
loss, and test accuracy, and plots both (quickstart.png in --out).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _digits import accuracy, digits, train_epoch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import trange  # noqa: E402

import sharpc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sum(l**2)", help="sharpness target in the eigenvalues l")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--strength", type=float, default=None, help="default: the class's recommended")
    parser.add_argument("--rho", type=float, default=None, help="default: |rho v| = 0.5 |x|")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--quick", action="store_true", help="a CI-sized run")
    args = parser.parse_args()
    epochs = 3 if args.quick else args.epochs

    measure = sharpc.compile(args.target)
    print(f"target {args.target}: strategy {measure.strategy}, m = {measure.m}, "
          f"verified = {measure.verify(samples=5000).passed}")
    Optimizer = measure.optimizer_class()
    overrides = {k: v for k, v in dict(strength=args.strength, rho=args.rho).items() if v is not None}

    x_train, y_train, x_test, y_test = digits()
    torch.manual_seed(args.seed)
    initial = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    rows = []
    for label in ("SGD", Optimizer.__name__):
        model = copy.deepcopy(initial)
        sgd = dict(lr=0.05, momentum=0.9)
        optimizer = (torch.optim.SGD(model.parameters(), **sgd) if label == "SGD"
                     else Optimizer(model.parameters(), base_optimizer=torch.optim.SGD, seed=args.seed, **sgd,
                                    **overrides))
        order = torch.Generator().manual_seed(args.seed)
        for _ in trange(epochs, desc=label, leave=False):
            train_epoch(model, optimizer, x_train, y_train, 64, order)
        value = measure.evaluate(model, nn.CrossEntropyLoss(), (x_train, y_train)).value  # exact Hessian
        rows.append((label, value, accuracy(model, x_test, y_test)))

    print(f"\n{'optimizer':<12}{args.target:>20}{'test acc':>10}")
    for label, value, acc in rows:
        print(f"{label:<12}{value:>20.4g}{acc:>10.3f}")
    print(f"ratio {rows[1][1] / rows[0][1]:.3f} at an accuracy change of {100 * (rows[1][2] - rows[0][2]):+.1f} points")

    args.out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 2, figsize=(7, 3))
    labels = [r[0] for r in rows]
    axes[0].bar(labels, [r[1] for r in rows], color=["grey", "tab:blue"])
    axes[0].set_title(f"{args.target} at the end (exact Hessian)")
    axes[1].bar(labels, [100 * r[2] for r in rows], color=["grey", "tab:blue"])
    axes[1].set_ylim(min(100 * r[2] for r in rows) - 5, 100)
    axes[1].set_title("test accuracy (%)")
    figure.tight_layout()
    figure.savefig(args.out / "quickstart.png", dpi=120)
    print(f"plot: {args.out / 'quickstart.png'}")


if __name__ == "__main__":
    main()
