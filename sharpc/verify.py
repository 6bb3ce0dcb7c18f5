"""Checking a Measure's identity: a symbolic certificate and a Monte Carlo test.

The certificate substitutes each distribution's closed-form integral of psi into phi and
simplifies ``scale * phi + offset - target`` to zero, first for symbolic d and otherwise
for d = 1..6. Powers and logs are combined with ``force=True``, which is justified on the
measure's domain (there every base is positive).

The Monte Carlo test draws random Hessians H = U diag(l) U^T (indefinite, singular,
clustered, positive spectra, clipped into the domain), estimates the integrals of psi from
samples of mu, and compares scale * phi(means) + offset with the target at eigvalsh(H).
It passes on a z-score whose standard error comes from the delta method, so a wrong
measure fails by many standard errors while a right one passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, reduce

import numpy as np
import sympy as sp

from .errors import SharpcError
from .measure import Domain, Measure
from .spectral import (
    D,
    Eig,
    EMax,
    EMin,
    EProd,
    ESum,
    HEntry,
    RootEig,
    eigenvalue_symbols,
    expand_spectrum,
    lam,
    reductions,
)

#: Spectrum lengths the Monte Carlo test uses when d is symbolic.
MC_DIMENSIONS = (2, 3, 5, 8)
#: Spectrum families; each is clipped into the measure's domain or skipped.
SPECTRUM_KINDS = ("indefinite", "singular", "clustered", "positive")
CERTIFICATE_DIMENSIONS = range(1, 7)
#: Largest concrete d for explicit symbolic expansion and for the Monte Carlo test (d x d Hessians).
EXPLICIT_MAX_D = 64


@dataclass(frozen=True)
class MonteCarloCase:
    """One random Hessian: the estimate, the exact target, and the z-score between them."""

    kind: str
    d: int
    spectrum: tuple[float, ...]
    target: float
    estimate: float
    stderr: float
    z: float
    passed: bool


@dataclass(frozen=True)
class VerificationReport:
    """The outcome of :func:`verify`; ``passed`` is what the CLI's exit code reflects."""

    certificate: str
    certified: bool | None
    cases: tuple[MonteCarloCase, ...]
    samples: int
    z_threshold: float
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """No check failed (the CLI's exit code); see ``checked`` for whether any check ran."""
        return self.certified is not False and all(case.passed for case in self.cases)

    @property
    def checked(self) -> bool:
        """A certificate was proved or Monte Carlo cases ran."""
        return self.certified is True or bool(self.cases)

    def table(self) -> str:
        """A fixed-width table for people."""
        lines = [f"{'kind':<11}{'d':>3}  {'target':>12}  {'estimate':>12}  {'std err':>10}  {'z':>6}  ok"]
        for c in self.cases:
            lines.append(f"{c.kind:<11}{c.d:>3}  {c.target:>12.6g}  {c.estimate:>12.6g}  {c.stderr:>10.3g}  "
                         f"{c.z:>6.2f}  {'yes' if c.passed else 'NO'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "checked": self.checked,
            "certificate": self.certificate,
            "certified": self.certified,
            "samples_per_case": self.samples,
            "z_threshold": self.z_threshold,
            "notes": list(self.notes),
            "monte_carlo": [
                {"kind": c.kind, "d": c.d, "spectrum": list(c.spectrum), "target": c.target,
                 "estimate": c.estimate, "stderr": c.stderr, "z": c.z, "passed": c.passed}
                for c in self.cases
            ],
        }


# ---------------------------------------------------------------------------- certificate
def _vanishes(expr: sp.Expr) -> bool:
    expr = sp.powdenest(expr, force=True)
    expr = sp.expand(sp.expand_log(expr, force=True))
    if expr == 0:
        return True
    return sp.simplify(expr) == 0


def certify(measure: Measure) -> tuple[str, bool | None]:
    """(description, verdict); verdict None when some integral has no closed form."""
    integrals = []
    for component, psi in enumerate(measure.psi):
        closed = measure.distribution_of(component).closed_form(psi)
        if closed is None:
            return f"no closed form for psi_{component + 1} under {measure.distribution_of(component).describe()}", None
        integrals.append(closed)
    if measure.phi.has(RootEig):
        return _certify_recovery(measure, dict(zip(measure.phi_args, integrals)))
    value = measure.scale * measure.phi.xreplace(dict(zip(measure.phi_args, integrals))) + measure.offset
    # An approximation is exact for its approximant (the target is met within error_bound).
    difference = value - (measure.target if measure.approximant is None else measure.approximant)
    if measure.d is not None:
        if _vanishes(difference):  # in spectral atoms: cheap for any d
            return f"closed form at d = {measure.d}", True
        if measure.d > EXPLICIT_MAX_D:
            return (f"not proved: no simplification in spectral atoms, and d > {EXPLICIT_MAX_D} "
                    "is too large to expand"), None
        ok = _vanishes(expand_spectrum(difference, eigenvalue_symbols(measure.d)))
        return f"closed form at d = {measure.d}", ok
    if _vanishes(difference):
        return "closed form, symbolic d", True
    ok = all(_vanishes(expand_spectrum(difference, eigenvalue_symbols(d))) for d in CERTIFICATE_DIMENSIONS)
    return "closed form at d = 1..6", ok


def _in_elementary(expr: sp.Expr, d: int) -> sp.Expr | None:
    """``expr`` with power sums and prod(1 + s l) written in symbols e_1..e_d, else None.

    For d eigenvalues, p_k follows from Newton's identities and prod(1 + s l) = sum s^k e_k;
    e_1..e_d are algebraically independent, so a polynomial identity in them is a proof.
    This stays small at d = 8, where expanding in l_1..l_d took minutes.
    """
    e = [sp.Integer(1), *sp.symbols(f"e1:{d + 1}")]
    elementary = lambda k: e[k] if k <= d else sp.Integer(0)
    replacements = {}
    for atom in reductions(expr):
        body = atom.body if isinstance(atom, (ESum, EProd)) else None
        if isinstance(atom, ESum) and (body == lam or (body.is_Pow and body.base == lam and body.exp.is_Integer)):
            order = 1 if body == lam else int(body.exp)
            if order < 1:
                return None
            powers: list[sp.Expr] = [sp.Integer(d)]
            for k in range(1, order + 1):
                powers.append(sp.expand((-1) ** (k - 1) * k * elementary(k) + sum(
                    (-1) ** (i - 1) * elementary(i) * powers[k - i] for i in range(1, k))))
            replacements[atom] = powers[order]
        elif isinstance(atom, EProd) and body.is_polynomial(lam) and sp.degree(body, lam) == 1 \
                and body.subs(lam, 0) == 1:
            slope = sp.diff(body, lam)
            replacements[atom] = sum(slope**k * e[k] for k in range(d + 1))
        else:
            return None
    return sp.expand(expr.xreplace(replacements))


def _certify_recovery(measure: Measure, integrals: dict[sp.Symbol, sp.Expr]) -> tuple[str, bool]:
    """Theorem 6 measures: the recovered coefficients must be those of prod(1 - l_i s) exactly.

    Then RootEig(k, ...) is the k-th largest eigenvalue, and phi is the target on them.
    The integrals go into the coefficients only: rebuilding Max(RootEig, ...) around them
    makes SymPy compare huge expressions.
    """
    d = measure.d
    symbols = eigenvalue_symbols(d)
    roots = measure.phi.atoms(RootEig)
    if len({root.args[1:] for root in roots}) != 1:
        return "the recovered roots do not share one polynomial", False
    (coefficients,) = {tuple(c.xreplace(integrals) for c in root.args[1:]) for root in roots}
    ok = True
    expected = [(-1) ** k * sp.Symbol(f"e{k}") for k in range(1, d + 1)]
    recovered = [_in_elementary(c, d) for c in coefficients]
    if all(r is not None for r in recovered):
        ok &= all(sp.expand(r - x) == 0 for r, x in zip(recovered, expected))
    else:  # an atom the elementary rewrite does not know: expand in l_1..l_d
        s = sp.Symbol("s")
        explicit = sp.Poly(sp.expand(sp.Mul(*(1 - x * s for x in symbols))), s).all_coeffs()[::-1][1:]
        ok &= all(_vanishes(expand_spectrum(c, symbols) - x) for c, x in zip(coefficients, explicit))
    on_roots = measure.scale * measure.phi.xreplace({root: symbols[int(root.args[0])] for root in roots}) \
        + measure.offset
    target = expand_spectrum(measure.target, symbols)
    target = target.xreplace({e: symbols[int(e.args[0]) % d] for e in target.atoms(Eig)})
    ok &= _vanishes(expand_spectrum(on_roots, symbols) - target)
    return (f"coefficients of prod(1 - l_i s) recovered exactly at d = {d}; "
            "phi is the target on the sorted roots", bool(ok))


# ---------------------------------------------------------------------------- Monte Carlo
def _spectrum(kind: str, d: int, domain: Domain, rng: np.random.Generator) -> np.ndarray | None:
    if kind == "indefinite":
        spectrum = rng.uniform(-1.5, 2.0, d)
        spectrum[0], spectrum[-1] = -abs(spectrum[0]) - 0.1, abs(spectrum[-1]) + 0.1
    elif kind == "singular":
        spectrum = rng.uniform(0.2, 2.0, d) * rng.choice([-1.0, 1.0], d)
        spectrum[: max(1, d // 2)] = 0.0
    elif kind == "clustered":
        spectrum = 1.0 + 0.01 * rng.standard_normal(d)
    else:
        spectrum = rng.uniform(0.5, 2.0, d)
    # Shrink towards zero until the spectrum sits well inside the domain's finite bounds.
    for bound in (domain.lower, domain.upper):
        if math.isfinite(bound) and bound != 0:
            same_side = spectrum * np.sign(bound) > 0
            worst = np.max(np.abs(spectrum[same_side]), initial=0.0)
            if worst > 0.5 * abs(bound):
                spectrum = spectrum * (0.5 * abs(bound) / worst)
    return spectrum if domain.contains(spectrum) else None


def _random_hessian(spectrum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((len(spectrum), len(spectrum))))
    q = q * np.sign(np.diag(r))
    return (q * spectrum) @ q.T


#: The functions our expressions use; an explicit table keeps lambdify from importing all of numpy.
_NUMPY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "Abs": np.abs, "sign": np.sign, "sin": np.sin,
    "cos": np.cos, "tanh": np.tanh, "pi": np.pi, "E": np.e,
    "Max": lambda *a: reduce(np.maximum, a), "Min": lambda *a: reduce(np.minimum, a),
    "RootEig": lambda k, *a: np.sort(np.roots(np.array([1.0, *a], dtype=float)).real)[::-1][int(k)],
}


#: SymPy's Python printer writes sign(x) as a scalar ``if``, which fails on arrays.
_ARRAY_SIGN = sp.Function("array_sign")
_NUMPY["array_sign"] = np.sign


@lru_cache(maxsize=64)
def _numeric(expr: sp.Expr, args: tuple[sp.Symbol, ...]):
    # Our own expressions in our own symbols only: user text never reaches lambdify.
    return sp.lambdify(args, expr.replace(sp.sign, _ARRAY_SIGN), modules=[_NUMPY])


_REDUCE = {ESum: np.sum, EProd: np.prod, EMax: np.max, EMin: np.min}


def target_at(target: sp.Expr, hessian: np.ndarray) -> float:
    """A target at a numeric symmetric Hessian, in NumPy and linear in d.

    Entries H[i, j] are read off the matrix; each reduction's body is lambdified in the
    generic eigenvalue and reduced over the eigenvalues; Eig(k) indexes them in descending
    order; d is the matrix size. (``expand_spectrum`` would build d-term SymPy sums instead.)
    """
    d = hessian.shape[0]
    entries = sorted(target.atoms(HEntry), key=sp.default_sort_key)
    spectral = sorted(reductions(target), key=sp.default_sort_key)
    values = [hessian[int(i), int(j)] for i, j in (entry.args for entry in entries)]
    if spectral:
        eigenvalues = np.linalg.eigvalsh(hessian)
        values += [_reduce(atom, eigenvalues) for atom in spectral]
    symbols = tuple(sp.Dummy() for _ in values)
    outer = target.xreplace(dict(zip(entries + spectral, symbols))).subs(D, d)
    if outer.free_symbols - set(symbols):
        raise SharpcError(f"cannot evaluate {target}: unknown symbols {outer.free_symbols - set(symbols)}")
    return float(_numeric(outer, symbols)(*values))


def _reduce(atom: sp.Expr, eigenvalues: np.ndarray) -> float:
    if isinstance(atom, Eig):
        k = int(atom.args[0])
        if not -len(eigenvalues) <= k < len(eigenvalues):
            raise SharpcError(f"l[{k}] does not exist: the Hessian has {len(eigenvalues)} eigenvalues")
        return eigenvalues[::-1][k]
    body = _numeric(atom.body, (lam,))(eigenvalues)
    return _REDUCE[type(atom)](np.broadcast_to(body, eigenvalues.shape))


@lru_cache(maxsize=32)
def _numeric_measure(measure: Measure, d: int):
    """psi components, phi, scale and offset at dimension d, as numpy callables (built once).

    grad phi is taken numerically (:func:`_gradient`): printing SymPy's derivative of a
    Theorem 6 phi (roots of a polynomial in the t's) took seconds to minutes at d >= 4.
    """
    psi = [_numeric(p.subs(D, d), (measure.psi_arg,)) for p in measure.psi]
    phi = _numeric(measure.phi.subs(D, d), measure.phi_args)
    scale, offset = (float(sp.sympify(x).subs(D, d)) for x in (measure.scale, measure.offset))
    return psi, phi, scale, offset


def _gradient(phi, point: np.ndarray) -> np.ndarray:
    """Central differences of phi at ``point``, with steps relative to each coordinate."""
    steps = 1e-6 * np.maximum(1.0, np.abs(point))
    slope = np.empty(len(point))
    for j, h in enumerate(steps):
        up, down = point.copy(), point.copy()
        up[j] += h
        down[j] -= h
        slope[j] = (float(phi(*up)) - float(phi(*down))) / (2 * h)
    return slope


def _estimate(measure: Measure, d: int, hessian: np.ndarray, spectrum: np.ndarray, n: int,
              rng: np.random.Generator) -> tuple[float, float]:
    """scale * phi(component means) + offset, and its delta-method standard error."""
    psi, phi, scale, offset = _numeric_measure(measure, d)
    means = np.zeros(measure.m)
    covariance = np.zeros((measure.m, measure.m))
    for group in measure.groups:
        v, weights = group.distribution.mc_sample(n, d, rng, spectrum)
        q = 0.5 * np.sum((v @ hessian) * v, axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.stack([weights * np.broadcast_to(psi[c](q), q.shape) for c in group.components])
        idx = np.array(group.components)
        means[idx] = values.mean(axis=1)
        covariance[np.ix_(idx, idx)] = np.atleast_2d(np.cov(values)) / n
    slope = _gradient(phi, means)
    estimate = scale * float(phi(*means)) + offset
    stderr = abs(scale) * math.sqrt(max(float(slope @ covariance @ slope), 0.0))
    return estimate, stderr


def estimator_variance(measure: Measure, spectrum, *, samples: int = 10_000, seed: int = 0) -> float:
    """Per-sample variance of the regularizer estimate at a spectrum (delta method, seeded)."""
    rng = np.random.default_rng(seed)
    spectrum = np.asarray(spectrum, dtype=float)
    _, stderr = _estimate(measure, len(spectrum), _random_hessian(spectrum, rng), spectrum, samples, rng)
    return stderr**2 * samples


def monte_carlo(measure: Measure, *, samples: int = 10_000, seed: int = 0, z_threshold: float = 4.5,
                dimensions: tuple[int, ...] | None = None) -> tuple[MonteCarloCase, ...]:
    rng = np.random.default_rng(seed)
    dims = (measure.d,) if measure.d is not None else (dimensions or MC_DIMENSIONS)
    cases = []
    for d in dims:
        for kind in SPECTRUM_KINDS:
            spectrum = _spectrum(kind, d, measure.domain, rng)
            if spectrum is None:
                continue
            hessian = _random_hessian(spectrum, rng)
            exact = np.linalg.eigvalsh(hessian)
            target = target_at(measure.target, hessian)
            estimate, stderr = _estimate(measure, d, hessian, exact, samples, rng)
            # Approximations may miss the target by their error bound; the z-score counts the excess.
            slack = 0.0 if measure.error_bound is None else float(measure.error_bound.subs(D, d))
            error = math.copysign(max(abs(estimate - target) - slack, 0.0), estimate - target)
            tolerance = 1e-9 * max(1.0, abs(target))
            if abs(error) <= tolerance:      # exact to rounding (e.g. point masses): nothing to test
                z = 0.0
            else:
                z = error / stderr if stderr > 0 else math.inf
            passed = math.isfinite(estimate) and abs(z) <= z_threshold
            cases.append(MonteCarloCase(kind, d, tuple(float(x) for x in exact), target, estimate,
                                        stderr, float(z), bool(passed)))
    return tuple(cases)


def verify(measure: Measure, *, samples: int = 10_000, seed: int = 0, z_threshold: float = 4.5,
           symbolic: bool = True, dimensions: tuple[int, ...] | None = None) -> VerificationReport:
    """Certificate (if a closed form exists) and a seeded Monte Carlo test of ``measure``.

    An approximation is certified against its approximant, and its Monte Carlo cases pass
    when the estimate is within the error bound of the target, up to z_threshold standard errors.
    """
    notes = []
    if symbolic:
        certificate, certified = certify(measure)
    else:
        certificate, certified = "skipped (symbolic=False)", None
    if measure.d is not None and measure.d > EXPLICIT_MAX_D:
        cases = ()
        notes.append(f"d = {measure.d} is too large for the Monte Carlo test (limit {EXPLICIT_MAX_D}); "
                     "compile without d to test the identity at d = 2, 3, 5, 8")
    elif measure.exact or measure.error_bound is not None:
        cases = monte_carlo(measure, samples=samples, seed=seed, z_threshold=z_threshold, dimensions=dimensions)
    else:
        cases = ()
        notes.append("approximate measure (see assumptions): the identity is not exact, so the "
                     "Monte Carlo test against the target does not apply")
    return VerificationReport(certificate, certified, cases, samples, z_threshold, tuple(notes))
