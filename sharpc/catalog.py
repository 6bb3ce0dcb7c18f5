"""Named measures users ask for by name (``sharpc list``)."""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    name: str
    expression: str
    description: str
    options: dict


CATALOG: tuple[Entry, ...] = (
    Entry("trace", "sum(l)", "trace of the Hessian (average-direction sharpness)", {}),
    Entry("mean-trace", "sum(l)/d", "trace divided by the dimension", {}),
    Entry("frobenius", "sum(l**2)", "squared Frobenius norm of the Hessian (Frob-SAM)", {}),
    Entry("det", "prod(l)", "determinant, Lebesgue measure importance-sampled (H >= I)", {}),
    Entry("det-hypercube", "prod(l)", "determinant, hypercube truncation as in the paper's Det-SAM",
          {"det_sampling": "hypercube", "half_width": 1.0}),
    Entry("logdet", "sum(log(l))", "log-determinant, Lebesgue measure importance-sampled (H >= I)", {}),
    Entry("shifted-det", "prod(1 - l/10)", "prod(1 - sigma l), sigma = 0.1 (Table 1, last row)", {}),
    Entry("log-shifted-det", "sum(log(1 - l/10))", "sum(log(1 - sigma l)), sigma = 0.1", {}),
    Entry("third-cumulant", "sum(l**3)", "sum of cubed eigenvalues (third power sum)", {}),
    Entry("trace-squared", "sum(l)**2", "squared trace", {}),
    Entry("top-eigenvalue", "max(l)", "largest eigenvalue, at any d (power iteration on the step's own pair)", {}),
    Entry("spectral-norm", "max(abs(l))", "largest |eigenvalue|, at any d (power iteration)", {}),
    Entry("spectral-spread", "max(l) - min(l)", "largest minus smallest eigenvalue, |l_i| <= 10, any d (two "
          "power iterations)", {"bound": 10.0}),
)
