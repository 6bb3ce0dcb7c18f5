"""Per-sample variance of the Theorem 6 constructions, and which one `universal` keeps.

    python benchmarks/universal_variance.py

For each target, both constructions are built and their regularizer estimates' per-sample
variance is measured (delta method, seeded Monte Carlo) on the two probe spectra the compiler
uses (spread across the domain bound); the chosen strategy must be the lower one.
"""

from __future__ import annotations

import numpy as np

import sharpc
from sharpc.derive import Request
from sharpc.derive.universal import construct
from sharpc.parse import parse
from sharpc.verify import estimator_variance

TARGETS = [("max(l)", 3, 2.0), ("mean(abs(l))", 4, 1.0), ("l[0] - l[-1]", 3, 1.0), ("l[0]", 3, 25.0),
           ("sum(abs(l))", 5, 1.0), ("max(abs(l))", 2, 1.0)]


def main() -> None:
    header = f"{'target':<16}{'d':>3}{'bound':>7}{'vandermonde':>14}{'power-roots':>14}  {'chosen':<24}"
    print(header + "rel. s.e. at n=64")
    for text, d, bound in TARGETS:
        request = Request(text, parse(text, d=d), d=d, bound=bound)
        probes = (np.linspace(-bound, bound, d), np.linspace(0.2 * bound, bound, d))
        variances = {name: max(estimator_variance(construct(request, name), p) for p in probes)
                     for name in ("vandermonde", "power-roots")}
        chosen = sharpc.compile(text, d=d, bound=bound)
        size = abs(sharpc.verify.target_at(chosen.target, np.diag(probes[0])))
        relative = np.sqrt(min(variances.values()) / 64) / size if size else float("nan")
        print(f"{text:<16}{d:>3}{bound:>7g}{variances['vandermonde']:>14.3g}{variances['power-roots']:>14.3g}  "
              f"{chosen.strategy:<24}{relative:>8.2f}")


if __name__ == "__main__":
    main()
