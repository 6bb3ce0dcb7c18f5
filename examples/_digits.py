"""Shared pieces of the digits examples: data, model, one training epoch, the optimizers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from sharpc import optim


def digits(seed: int = 0, train_fraction: float = 1.0) -> tuple[torch.Tensor, ...]:
    """x_train, y_train, x_test, y_test from scikit-learn's bundled digits (nothing downloaded)."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    if train_fraction < 1.0:
        x_train, _, y_train, _ = train_test_split(x_train, y_train, train_size=train_fraction,
                                                  random_state=seed, stratify=y_train)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)
    i = lambda a: torch.as_tensor(a, dtype=torch.long)
    return f(x_train), i(y_train), f(x_test), i(y_test)


def mlp(depth: int = 6, width: int = 128) -> nn.Sequential:
    """A ReLU MLP with ``depth`` linear layers (the paper's Figure 1 uses 6 layers of width 128)."""
    layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def optimizer_factory(name: str, lr: float = 1e-3, **overrides) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """Adam at a constant learning rate, alone ('Adam') or inside a sharpc preset."""
    if name == "Adam":
        return lambda model: torch.optim.Adam(model.parameters(), lr=lr)
    preset = getattr(optim, name)
    return lambda model: preset(model.parameters(), base_optimizer=torch.optim.Adam, lr=lr, **overrides)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch: int, generator: torch.Generator) -> float:
    """One pass over (x, y) in shuffled mini-batches; returns the mean training loss."""
    loss_fn, total = nn.CrossEntropyLoss(), torch.zeros(())
    batches = torch.randperm(len(x), generator=generator).split(batch)
    for index in batches:
        def closure():
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            return loss

        optimizer.zero_grad()
        total += optimizer.step(closure).detach()  # torch optimizers and sharpc's take the same closure
    return float(total) / len(batches)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
