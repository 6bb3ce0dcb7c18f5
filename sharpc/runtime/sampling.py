"""Perturbations: the sample groups' kinds and their draws, shared with the verifier.

The verifier draws through ``sample_rows`` and ``lebesgue_log_weight`` too, so the optimizer and
the Monte Carlo check cannot disagree about mu.
"""

import math
from dataclasses import dataclass

import torch

from ..errors import OptimizerError


@dataclass(frozen=True)
class GroupSpec:
    """psi components that share one set of samples, and the distribution they come from.

    kind is "gaussian" (N(0, I)), "sphere" (uniform on the unit sphere of all perturbed
    coordinates together), "hypercube" (uniform on [-half_width, half_width]^d), "point"
    (the fixed point sum_{i in support} e_i of the flattened perturbed vector, Theorem 7),
    "dirac" (SAM's point mass at grad / |grad|, fixed by the clean gradient of each step) or
    "importance" (the Lebesgue measure, exactly: v ~ N(0, I / precision), each sample
    weighted by the density ratio, see ``lebesgue_log_weight``). An importance group's psi
    and phi work in logs: psi returns log psi, phi takes log E[w psi], and its means are
    log-mean-exps, so weights of size exp(d / 2) never overflow. "eigenvector" is a point mass
    at a unit vector u kept across steps and moved by one power-iteration step per step,
    u <- normalize(sign H u + shift u), with H u read off the step's own perturbed pair.
    ``adaptive`` scales every sample by |x| + eta (the adaptive measure mu_x).
    """

    kind: str
    components: tuple
    half_width: float = 1.0
    support: tuple = ()
    adaptive: bool = False
    precision: float = 1.0
    shift: float = 0.0
    sign: int = 1

    @property
    def deterministic(self) -> bool:
        """One sample is the whole distribution: more would repeat it."""
        return self.kind in ("dirac", "point", "eigenvector")

    @property
    def weighted(self) -> bool:
        """Samples carry importance weights (in logs): the group's components are log-means."""
        return self.kind == "importance"

    def count(self, n_samples: int) -> int:
        """Samples this group takes per step: n_samples, or one for a point mass."""
        return 1 if self.deterministic else n_samples


def draw_(kind: str, tensors: list, generator: torch.Generator | None = None,
          half_width: float = 1.0, support: tuple = (), precision: float = 1.0) -> None:
    """Overwrite ``tensors``, the pieces of one vector, with a sample of the distribution."""
    if kind == "point":
        point_(tensors, support)
    elif kind in ("gaussian", "sphere", "importance"):
        for v in tensors:
            v.normal_(generator=generator)
        if kind == "sphere":  # normalized over all pieces together, never per tensor
            torch._foreach_div_(tensors, global_norm(tensors))
        elif kind == "importance":
            torch._foreach_mul_(tensors, precision ** -0.5)
    elif kind == "hypercube":
        for v in tensors:
            v.uniform_(-half_width, half_width, generator=generator)
    else:
        raise OptimizerError(f"no sampler for the distribution kind {kind!r}")


def sample_rows(kind: str, n: int, d: int, *, half_width: float = 1.0, precision: float = 1.0,
                generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
    """An (n, d) tensor whose rows are independent samples (what ``Distribution.sample`` returns)."""
    out = torch.empty(n, d, device=device, dtype=dtype)
    if kind == "sphere":  # each row is one vector: normalize rows, not the whole batch
        draw_("gaussian", [out], generator)
        return out.div_(torch.linalg.vector_norm(out, dim=1, keepdim=True))
    draw_(kind, [out], generator, half_width, precision=precision)
    return out


def lebesgue_log_weight(squared_norm: torch.Tensor, d: int, precision: float) -> torch.Tensor:
    """log of dv / dN(0, I / precision) at |v|^2 = squared_norm: (d/2) log(2 pi / precision) + precision |v|^2 / 2.

    So E[w psi(Q(v))] over v ~ N(0, I / precision) is the integral of psi(Q) over R^d, exactly.
    For psi = exp(-Q) its variance is finite when every eigenvalue of H exceeds precision / 2.
    """
    return 0.5 * d * math.log(2 * math.pi / precision) + 0.5 * precision * squared_norm


def point_(tensors: list, support: tuple) -> None:
    """sum_{i in support} e_i, with i indexing the pieces flattened and concatenated in order."""
    torch._foreach_zero_(tensors)
    offset = 0
    for v in tensors:
        flat = v.view(-1)
        for i in support:
            if offset <= i < offset + flat.numel():
                flat[i - offset] = 1
        offset += flat.numel()
    if support and max(support) >= offset:
        raise OptimizerError(f"the point e_{max(support)} is outside the {offset} perturbed coordinates")


def global_norm(tensors: list) -> torch.Tensor:
    if len(tensors) == 1:  # one flat buffer: one kernel
        return torch.linalg.vector_norm(tensors[0])
    norms = torch._foreach_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([x.to(norms[0].dtype) for x in norms]))
