"""The compiler's IR: a (phi, psi, mu) triple and everything needed to trust it.

A :class:`Measure` states the identity

    target(l) = scale * phi( integral psi_1(Q) d mu_1, ..., integral psi_m(Q) d mu_m ) + offset

with Q = 1/2 v^T H v, for every spectrum inside ``domain``. ``scale > 0`` and ``offset``
are the constants the optimizer drops (they do not change its bias); they are kept here
and printed so nothing is folded silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp

from .distributions import Distribution, t
from .errors import SharpcError
from .spectral import D

if TYPE_CHECKING:  # pragma: no cover
    from .verify import VerificationReport


def phi_symbols(m: int) -> tuple[sp.Symbol, ...]:
    """The arguments t1..tm of phi (one per psi component)."""
    return tuple(sp.Symbol(f"t{i}", real=True) for i in range(1, m + 1))


@dataclass(frozen=True)
class Domain:
    """Spectra for which the identity holds: lower <= l_i <= upper (strict when flagged)."""

    lower: float = -math.inf
    upper: float = math.inf
    strict_lower: bool = False
    reason: str = ""

    def contains(self, spectrum) -> bool:
        lo_ok = all((x > self.lower) if self.strict_lower else (x >= self.lower) for x in spectrum)
        return lo_ok and all(x <= self.upper for x in spectrum)

    def probe(self, d: int) -> np.ndarray:
        """A spread spectrum reaching 90% of the domain's finite bounds (where variance is largest)."""
        low = 0.9 * self.lower if math.isfinite(self.lower) else -1.0
        high = 0.9 * self.upper if math.isfinite(self.upper) else 1.0
        if self.lower > 0:  # a stated floor: the probe spans [lower, 2 lower]
            low, high = self.lower, 2 * self.lower if math.isinf(self.upper) else high
        elif self.lower == 0:
            low, high = max(low, 0.5), max(high, 1.5) if math.isinf(self.upper) else high
        return np.linspace(low, high, d)

    def describe(self) -> str:
        if math.isinf(self.lower) and math.isinf(self.upper):
            return "all real spectra"
        lo = "" if math.isinf(self.lower) else f"{self.lower:g} {'<' if self.strict_lower else '<='} "
        hi = "" if math.isinf(self.upper) else f" <= {self.upper:g}"
        return f"{lo}l_i{hi}"


@dataclass(frozen=True)
class SampleGroup:
    """psi components that are averaged over the *same* samples of one distribution."""

    distribution: Distribution
    components: tuple[int, ...]


@dataclass(frozen=True)
class Measure:
    """A compiled sharpness measure (see the module docstring for the identity it states)."""

    source: str
    target: sp.Expr
    d: int | None
    phi: sp.Expr
    psi: tuple[sp.Expr, ...]
    groups: tuple[SampleGroup, ...]
    strategy: str
    steps: tuple[str, ...]
    scale: sp.Expr = sp.Integer(1)
    offset: sp.Expr = sp.Integer(0)
    assumptions: tuple[str, ...] = ()
    domain: Domain = field(default_factory=Domain)
    exact: bool = True
    #: Variance of one sample's contribution to the regularizer estimate, where it was measured.
    variance_per_sample: float | None = None
    #: For approximations: what scale * S + offset equals exactly (the target is met within error_bound).
    approximant: sp.Expr | None = None
    #: For approximations: |target - (scale * S + offset)| <= error_bound on the domain (in d).
    error_bound: sp.Expr | None = None

    # ----------------------------------------------------------------- structure
    @property
    def m(self) -> int:
        """Number of psi components (the dimension of phi's argument)."""
        return len(self.psi)

    @property
    def phi_args(self) -> tuple[sp.Symbol, ...]:
        return phi_symbols(self.m)

    @property
    def psi_arg(self) -> sp.Symbol:
        return t

    def distribution_of(self, component: int) -> Distribution:
        for group in self.groups:
            if component in group.components:
                return group.distribution
        raise KeyError(component)

    @property
    def invariances(self) -> tuple[str, ...]:
        """Groups G under which S is invariant whenever L is (Theorem 11: every mu_l is G-invariant)."""
        common = [set(group.distribution.invariances) for group in self.groups]
        shared = set.intersection(*common) if common else set()
        return tuple(g for g in self.groups[0].distribution.invariances if g in shared) if common else ()

    def adaptive(self) -> Measure:
        """The same (phi, psi) with every mu replaced by the adaptive mu_x = law of |x| * v."""
        from .distributions import Adaptive, Eigenvector

        if all(isinstance(g.distribution, Adaptive) for g in self.groups):
            return self
        if any(isinstance(g.distribution, Eigenvector) for g in self.groups):
            raise SharpcError("scale invariance is not available for an eigenvector measure: its power iteration "
                              "tracks an eigenvector of H, not of diag|x| H diag|x|")
        groups = tuple(SampleGroup(g.distribution if isinstance(g.distribution, Adaptive)
                                   else Adaptive(g.distribution), g.components) for g in self.groups)
        return replace(
            self, groups=groups,
            assumptions=self.assumptions + ("adaptive measure: l are the eigenvalues of diag|x| H diag|x|",),
            steps=self.steps + ("scale invariance: replace mu by the law of |x| * v (Theorem 11 for positive "
                                "diagonal rescalings)",))

    @property
    def constants_dropped(self) -> tuple[str, ...]:
        """Human-readable list of the positive factor and additive constant not in phi."""
        dropped = []
        if self.scale != 1:
            dropped.append(f"positive factor {sp.sstr(self.scale)}: target = {sp.sstr(self.scale)} * S")
        if self.offset != 0:
            dropped.append(f"additive constant {sp.sstr(self.offset)}")
        return tuple(dropped)

    def cost(self, n_samples: str | int = "n", difference: str = "one-sided") -> str:
        """Gradient evaluations per optimizer step: one clean pass, n per random group, 1 per point mass;
        every perturbed pass twice with difference="antithetic" (x + rho v and x - rho v)."""
        points = sum(g.distribution.deterministic for g in self.groups)
        random = len(self.groups) - points
        pair = 2 if difference == "antithetic" else 1
        if isinstance(n_samples, int):
            return str(1 + pair * (points + random * n_samples))
        terms = ([f"{random}*{n_samples}" if random > 1 else str(n_samples)] if random else []) + (
            [str(points)] if points else [])
        perturbed = " + ".join(terms)
        if pair == 2:
            perturbed = f"2*({perturbed})" if len(terms) > 1 else f"2*{perturbed}"
        return f"1 + {perturbed}"

    def with_steps(self, *steps: str, **changes: Any) -> Measure:
        """A copy with derivation steps appended (and other fields replaced)."""
        return replace(self, steps=self.steps + steps, **changes)

    def probe_spectra(self, d: int) -> list[np.ndarray]:
        """Spectra where the estimator is hardest: spread to the domain's bounds, and clustered at the top.

        Root recovery (Theorem 6) is worst near repeated eigenvalues, which spread spectra miss.
        """
        spread = self.domain.probe(d)
        top = float(spread.max())
        clustered = top - 0.01 * max(abs(top), 1e-3) * np.linspace(0.0, 1.0, d)
        return [spread] + ([clustered] if d > 1 and self.domain.contains(clustered) else [])

    def recommended_samples(self, rel_tol: float = 0.1, spectrum: Any = None) -> int:
        """Samples per random group and step for a standard error of ``rel_tol`` times the target's scale.

        1 when every group is a point mass (the estimate is deterministic; the optimizer then
        takes n_samples = 1). Otherwise the worst case over ``probe_spectra`` (or ``spectrum``)
        of Var / (rel_tol * scale)^2, with scale the largest |target| over the probes, so a
        target that vanishes at one probe does not make n infinite. Spectra have d eigenvalues,
        8 when d is symbolic and at most 64 (the simulation builds d x d Hessians).
        """
        from .verify import EXPLICIT_MAX_D, estimator_variance, target_at

        if all(group.distribution.deterministic for group in self.groups):
            return 1
        if spectrum is not None:
            probes = [np.asarray(spectrum, dtype=float)]
        else:
            probes = self.probe_spectra(min(self.d or 8, EXPLICIT_MAX_D))
        variances = [estimator_variance(self, probe) for probe in probes]
        finite = [v for v in variances if math.isfinite(v)]
        if not finite:
            raise SharpcError("the estimator's variance is not finite at the probe spectra")
        scale = max(abs(target_at(self.target, np.diag(probe))) for probe in probes)
        if scale == 0:  # the target vanishes at every probe: an absolute tolerance
            scale = 1.0
        return max(1, math.ceil(max(finite) / (rel_tol * scale) ** 2))

    # ----------------------------------------------------------------- pipeline
    def verify(self, **options: Any) -> VerificationReport:
        """Symbolic certificate and Monte Carlo check of the identity; see :mod:`sharpc.verify`."""
        from .verify import verify

        return verify(self, **options)

    def optimizer_class(self, name: str | None = None):
        """A ``torch.optim.Optimizer`` subclass minimizing L + strength * target (estimated at radius rho)."""
        from .optim import optimizer_class

        return optimizer_class(self, name=name)

    def evaluate(self, model: Any, loss_fn: Any, data: Any, **options: Any):
        """The target's value at a model's loss Hessian; see :func:`sharpc.hessian.evaluate`."""
        from .hessian import evaluate

        return evaluate(self, model, loss_fn, data, **options)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (the CLI's ``--json``)."""
        return {
            "source": self.source,
            "target": sp.sstr(self.target),
            "d": self.d if self.d is not None else str(D),
            "strategy": self.strategy,
            "m": self.m,
            "phi": sp.sstr(self.phi),
            "psi": [sp.sstr(p) for p in self.psi],
            "groups": [
                {"distribution": g.distribution.describe(), "components": list(g.components),
                 "invariances": list(g.distribution.invariances)}
                for g in self.groups
            ],
            "scale": sp.sstr(self.scale),
            "offset": sp.sstr(self.offset),
            "constants_dropped": list(self.constants_dropped),
            "assumptions": list(self.assumptions),
            "domain": self.domain.describe(),
            "exact": self.exact,
            "invariances": list(self.invariances),
            "cost_per_step": self.cost(),
            "variance_per_sample": self.variance_per_sample,
            "approximant": None if self.approximant is None else sp.sstr(self.approximant),
            "error_bound": None if self.error_bound is None else sp.sstr(self.error_bound),
            "steps": list(self.steps),
        }
