"""Aten ops a step dispatches outside the closure (its bookkeeping), for 4 and for 40 parameter tensors.

The counter is a TorchDispatchMode; ops dispatched while the closure runs (forward and
backward) are not counted, so what is left is the optimizer's own work, base step included.
A step whose bookkeeping does not depend on the number of tensors gives about the same
count for both models. Every base SGD runs with foreach=True (one kernel per update for
all tensors; torch's CPU default loops over them in Python).

    python benchmarks/op_counts.py
"""

from __future__ import annotations

import collections
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sharpc.optim import SAM, FrobSAM

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
SGD = dict(lr=0.01, momentum=0.9, foreach=True)


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops by name while ``counting`` is set."""

    def __init__(self):
        super().__init__()
        self.counting = True
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.counting:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def model_with(tensors: int, width: int = 32) -> torch.nn.Module:
    """An MLP of tensors / 2 linear layers (a weight and a bias each)."""
    layers: list[torch.nn.Module] = []
    for _ in range(tensors // 2):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def bookkeeping_ops(make_opt, tensors: int, style: str = "closure") -> collections.Counter:
    """Ops of one step (after a warm-up step) outside the closure."""
    torch.manual_seed(0)
    model = model_with(tensors)
    x, y = torch.randn(16, 32), torch.randn(16, 32)
    opt = make_opt(model.parameters())
    counter = OpCounter()

    def closure():
        counter.counting = False
        loss = torch.nn.functional.mse_loss(model(x), y)
        if torch.is_grad_enabled():  # memory="lean" first asks for losses alone
            loss.backward()
        counter.counting = True
        return loss

    def step():
        if style == "two-step":  # pytorch-optimizer's SAM: gradients first, then step(closure)
            opt.zero_grad()
            closure()
        opt.step(closure)

    step()
    with counter:
        step()
    return counter.ops


CONFIGS = {
    "FrobSAM n=4 one-sided": (lambda p: FrobSAM(p, n_samples=4, difference="one-sided", seed=0, **SGD),
                              "closure"),
    "SAM preset": (lambda p: SAM(p, **SGD), "closure"),
}


def rows() -> list[tuple]:
    configs = dict(CONFIGS)
    try:
        from pytorch_optimizer import SAM as ReferenceSAM
        configs["pytorch_optimizer.SAM"] = (lambda p: ReferenceSAM(p, torch.optim.SGD, rho=0.05, **SGD),
                                            "two-step")
    except ImportError:
        pass
    out = []
    for label, (make, style) in configs.items():
        four, forty = (sum(bookkeeping_ops(make, n, style).values()) for n in (4, 40))
        out.append(("aten ops outside the closure, 4 / 40 parameter tensors", label,
                    f"{four} / {forty} (ratio {forty / four:.2f})"))
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for row in rows():
        print(" | ".join(row))
    for tensors in (4, 40):
        print(tensors, "tensors, FrobSAM:", dict(bookkeeping_ops(CONFIGS["FrobSAM n=4 one-sided"][0], tensors)))
