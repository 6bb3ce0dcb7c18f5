"""Top Hessian eigenvalue of a 2,410-parameter digits MLP: SGD vs optimizers compiled without --d.

Usage: OMP_NUM_THREADS=1 python docs/results/spectral_any_d.py --seed 0 > rows.jsonl
(30 epochs of SGD with momentum 0.9, lr 0.1, batch 64; sharpc optimizers wrap the same SGD with
rho 0.05, 16 antithetic samples per step; the top eigenvalue is 40 Lanczos steps on the exact
Hessian-vector product over 512 training examples). Belongs in examples/ once that folder is free.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from _digits import accuracy, digits  # noqa: E402

import sharpc  # noqa: E402
from sharpc import hessian  # noqa: E402

#: (target, bound, strength): compiled with size=2410 (the model) and budget=16
CONFIGS = [("max(l)", 10.0, 100.0), ("max(l)", 10.0, 300.0), ("sum(exp(l))", 5.0, 0.1), ("max(abs(l))", 10.0, 10.0)]


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def top_eigenvalue(model: nn.Module, subset) -> tuple[float, float]:
    op = hessian.HessianOperator(model, nn.CrossEntropyLoss(), subset)
    result = hessian.lanczos(op, k=1, iterations=40, generator=torch.Generator().manual_seed(0))
    return float(result.eigenvalues[0]), float(result.residuals[0])


def train(make_optimizer, data, epochs: int, seed: int) -> nn.Module:
    x, y = data
    model = mlp(seed)
    optimizer = make_optimizer(model)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(64):
            def closure():
                loss = loss_fn(model(x[index]), y[index])
                loss.backward()
                return loss

            optimizer.zero_grad()
            optimizer.step(closure)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    options = parser.parse_args()
    torch.set_num_threads(1)
    x, y, x_test, y_test = digits()
    runs = [("SGD", None, None)] + [(f"{text} B={bound} s={strength}", sharpc.compile(text, bound=bound, size=2410,
                                     budget=16), strength) for text, bound, strength in CONFIGS]
    for name, measure, strength in runs:
        start = time.time()
        if measure is None:
            def make(model):
                return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        else:
            cls = measure.optimizer_class()

            def make(model, cls=cls, strength=strength):
                return cls(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.05, n_samples=16,
                           antithetic=True, strength=strength)
        model = train(make, (x, y), options.epochs, options.seed)
        eigenvalue, residual = top_eigenvalue(model, (x[:512], y[:512]))
        print(json.dumps(dict(name=name, seed=options.seed, strategy=measure and measure.strategy,
                              top_eigenvalue=eigenvalue, lanczos_residual=residual,
                              test_accuracy=accuracy(model, x_test, y_test),
                              params=sum(p.numel() for p in model.parameters()),
                              seconds=round(time.time() - start, 1))), flush=True)


if __name__ == "__main__":
    main()
