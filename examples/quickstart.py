"""Quick start: compile a sharpness target, train with it on scikit-learn's digits, measure it.

    python examples/quickstart.py                      # sum(l**2), a few epochs
    python examples/quickstart.py --target "sum(l**2) + sum(l)**2/d" --epochs 10
    python examples/quickstart.py --quick              # CI-sized (well under a minute)

It trains the same small MLP twice from the same initialization — once with plain SGD, once
with the compiled (phi, psi, mu)-SAM optimizer — and prints the target measured at the end of
each run (a Hutchinson-style estimate with its standard error), plus test accuracy.
"""

from __future__ import annotations

import argparse
import copy

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

import sharpc


def digits(seed: int) -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=seed)
    arrays = (x_train, y_train, x_test, y_test)
    return tuple(torch.as_tensor(a, dtype=torch.float32 if a.ndim == 2 else torch.long) for a in arrays)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epochs: int,
          batch: int, label: str, seed: int) -> None:
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc=label, leave=False):
        for index in torch.randperm(len(x), generator=order).split(batch):
            def closure():
                loss = loss_fn(model(x[index]), y[index])
                loss.backward()
                return loss

            optimizer.zero_grad()
            optimizer.step(closure)  # torch optimizers and sharpc's take the same closure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sum(l**2)", help="sharpness target in the eigenvalues l")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rho", type=float, default=0.005)
    parser.add_argument("--strength", type=float, default=0.005)
    parser.add_argument("--n-samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a CI-sized run")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs

    measure = sharpc.compile(args.target)
    print(f"target {args.target}: strategy {measure.strategy}, m = {measure.m}, "
          f"verified = {measure.verify(samples=5000).passed}")
    Optimizer = measure.optimizer_class()

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = digits(args.seed)
    initial = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    subset = (x_train[:256], y_train[:256])
    loss_fn = nn.CrossEntropyLoss()

    rows = []
    for label in ("SGD", Optimizer.__name__):
        model = copy.deepcopy(initial)
        if label == "SGD":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        else:
            optimizer = Optimizer(model.parameters(), base_optimizer=torch.optim.SGD, rho=args.rho,
                                  strength=args.strength, n_samples=args.n_samples, seed=args.seed,
                                  lr=0.1, momentum=0.9)
        train(model, optimizer, x_train, y_train, epochs, 64, label, args.seed)
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        estimate = measure.evaluate(model, loss_fn, subset, exact_limit=0, probes=30 if args.quick else 100,
                                    generator=torch.Generator().manual_seed(args.seed))
        rows.append((label, estimate.value, estimate.stderr, accuracy))

    print(f"\n{'optimizer':<12}{args.target:>22}{'std err':>12}{'test acc':>10}")
    for label, value, stderr, accuracy in rows:
        print(f"{label:<12}{value:>22.4g}{stderr:>12.2g}{accuracy:>10.3f}")


if __name__ == "__main__":
    main()
