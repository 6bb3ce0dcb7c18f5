"""Train with the top Hessian eigenvalue l[0] as the sharpness target (Theorem 6).

The loss L(w) = (w1 w2 w3 - 1)^2 is zero on a whole surface, and on it the Hessian is
2 g g^T with g = grad(w1 w2 w3), so its top eigenvalue 2|g|^2 is smallest where the three
factors are balanced (w = (1, 1, 1): 6) and large where they are not (w = (3, 1, 1/3): 20.2).
Plain gradient descent started on the surface stays where it is; descending
L + strength * l[0] (estimated from perturbed losses) slides along the surface toward balance.

    python examples/spectral_norm.py            # writes out/spectral_norm/spectral_norm.png
    python examples/spectral_norm.py --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sharpc  # noqa: E402


def loss_of(w: torch.Tensor) -> torch.Tensor:
    return (w.prod() - 1) ** 2


def top_eigenvalue(w: torch.Tensor) -> float:
    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, w.detach())).max().item()


def run(optimizer_factory, steps: int, label: str) -> list[float]:
    w = torch.nn.Parameter(torch.tensor([3.0, 1.0, 1 / 3], dtype=torch.float64))
    optimizer = optimizer_factory([w])
    history = [top_eigenvalue(w)]
    for _ in tqdm(range(steps), desc=label, leave=False):
        def closure():
            loss = loss_of(w)
            loss.backward()
            return loss

        optimizer.zero_grad()
        optimizer.step(closure)  # torch optimizers and sharpc's take the same closure
        history.append(top_eigenvalue(w))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("out/spectral_norm"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 20 if args.quick else args.steps
    args.out.mkdir(parents=True, exist_ok=True)

    measure = sharpc.compile("l[0]", d=3, bound=25)
    print(f"l[0]: strategy {measure.strategy}, m = {measure.m}, "
          f"about {measure.recommended_samples(0.2)} samples per step for a 20% standard error")
    TopEigSAM = measure.optimizer_class("TopEigSAM")
    curves = {
        "gradient descent": run(lambda p: torch.optim.SGD(p, lr=0.005), steps, "GD"),
        "l[0]-SAM": run(lambda p: TopEigSAM(p, rho=0.02, strength=0.008, n_samples=64, seed=0, lr=0.005,
                                                           relative=False, difference="one-sided"),
                        steps, "l[0]-SAM"),
    }
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.plot(values, label=label)
    ax.axhline(6.0, color="gray", linestyle=":", label="balanced minimum (6)")
    ax.set(xlabel="step", ylabel="top Hessian eigenvalue", title="L = (w1 w2 w3 - 1)^2 from w = (3, 1, 1/3)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "spectral_norm.png", dpi=120)
    for label, values in curves.items():
        print(f"{label:<18} top eigenvalue {values[0]:.2f} -> {values[-1]:.2f}")
    print(f"plot: {args.out / 'spectral_norm.png'}")


if __name__ == "__main__":
    main()
