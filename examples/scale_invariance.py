"""The paper's Example 2: which sharpness measures notice a rescaling that changes nothing?

L(x1, x2) = x1^2 x2^2 - 2 x1 x2 + 1 depends only on x1 x2, so (x1, x2) -> (k x1, x2 / k) leaves
it unchanged; its minima form the curve x1 x2 = 1. On that curve tr(H) = 2 (x1^2 + x2^2)
prefers the balanced point (1, 1), while det(H) = 0 everywhere and the adaptive measure
(mu_x = law of |x| v, `invariant="scale"`) sees diag|x| H diag|x|, the same at every point
of the curve. Started at (4, 1/4), trace-biased training slides toward (1, 1); determinant-
biased and adaptive training have no reason to move along the curve.

    python examples/scale_invariance.py       # writes out/scale_invariance/scale_invariance.png
    python examples/scale_invariance.py --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sharpc  # noqa: E402

#: Algorithm 2 as the paper states it: an absolute strength and one-sided differences.
PLAIN = dict(relative=False, difference="one-sided")


def loss_of(x: torch.Tensor) -> torch.Tensor:
    return x[0] ** 2 * x[1] ** 2 - 2 * x[0] * x[1] + 1


def train(measure: sharpc.Measure, steps: int, label: str, **options) -> np.ndarray:
    x = torch.nn.Parameter(torch.tensor([4.0, 0.25], dtype=torch.float64))
    optimizer = measure.optimizer_class()([x], lr=0.002, seed=0, **options)
    path = [x.detach().clone()]
    for _ in tqdm(range(steps), desc=label, leave=False):
        def closure():
            loss = loss_of(x)
            loss.backward()
            return loss

        optimizer.zero_grad()
        optimizer.step(closure)
        path.append(x.detach().clone())
    return torch.stack(path).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("out/scale_invariance"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 50 if args.quick else args.steps
    args.out.mkdir(parents=True, exist_ok=True)

    runs = {
        # absolute strengths: the objective is L + strength * target (tr H, scale 2d = 4; det H, scale (50 pi)^2)
        "trace (sphere)": (sharpc.compile("sum(l)"), dict(rho=0.05, strength=0.03125, n_samples=8, **PLAIN)),
        "determinant (hypercube)": (sharpc.compile("prod(l)", det_sampling="hypercube", half_width=0.1),
                                    dict(rho=1.0, strength=1 / 24674.011, n_samples=8, **PLAIN)),
        "trace, adaptive (invariant)": (sharpc.compile("sum(l)", invariant="scale"),
                                        dict(rho=0.05, strength=0.03125, n_samples=8, eta=0.0, **PLAIN)),
    }
    paths = {label: train(measure, steps, label, **options) for label, (measure, options) in runs.items()}

    fig, (curve, balance) = plt.subplots(1, 2, figsize=(10, 4))
    grid = np.linspace(0.2, 4.5, 200)
    curve.plot(grid, 1 / grid, color="gray", linestyle=":", label="minima x1 x2 = 1")
    for label, path in paths.items():
        curve.plot(path[:, 0], path[:, 1], label=label)
        balance.plot(np.abs(np.log(np.abs(path[:, 0] / path[:, 1]))), label=label)
    curve.set(xlabel="x1", ylabel="x2", xlim=(0, 4.5), ylim=(0, 4.5), title="trajectories from (4, 1/4)")
    balance.set(xlabel="step", ylabel="|log(x1 / x2)| (0 = balanced)", title="imbalance")
    curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "scale_invariance.png", dpi=120)
    for label, path in paths.items():
        print(f"{label:<30} end at ({path[-1, 0]:.3f}, {path[-1, 1]:.3f}), x1 x2 = {path[-1].prod():.3f}")
    print(f"plot: {args.out / 'scale_invariance.png'}")


if __name__ == "__main__":
    main()
