"""Checking a Measure's identity: a symbolic certificate and a numeric check per random Hessian.

The certificate substitutes each distribution's closed-form integral of psi into phi and
simplifies ``scale * phi + offset - target`` to zero, first for symbolic d and otherwise
for d = 1..6. Powers and logs are combined with ``force=True``, which is justified on the
measure's domain (there every base is positive).

The numeric check draws random Hessians H = U diag(l) U^T (indefinite, singular, clustered,
positive spectra, clipped into the domain). Where :mod:`sharpc.reference` has the exact
integrals of psi (Gaussian, sphere and Lebesgue measures, computed in the eigenbasis at 50
digits, independently of the derivations), each case is two checks without statistical
slack in the first:

* identity: scale * phi(exact integrals) + offset equals the target to 1e-9 (relative);
* sampler: per psi component, the median of 30 block means of samples drawn from mu is
  within 4 exact block standard deviations of the exact integral. By Chebyshev's inequality
  each block misses with probability <= 1/16 whatever the tails, so a correct sampler fails
  with probability < 1e-9 (15 of 30 blocks would have to miss); heavy-tailed components
  such as Q^8 cannot cause false failures.

Elsewhere (point masses at H's entries, distributions without a reference) the plug-in
estimate is compared with the target by a delta-method z-score, as the report says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, reduce

import mpmath
import numpy as np
import sympy as sp

from .errors import SharpcError
from .limits import expanded_terms
from .measure import Domain, Measure
from .options import SAMPLES_RANGE, SEED_RANGE, check_float, check_int
from .reference import DIGITS, expectation, second_moment
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
#: Terms the certificate may expand (sum(l**8)**2 would need ~17000 and 2-6 s of SymPy expand).
MAX_CERTIFICATE_TERMS = 5_000
#: Relative tolerance of the identity at exact integrals (50-digit arithmetic, float64 spectrum).
IDENTITY_TOLERANCE = 1e-9
#: Median of means: blocks, and the bound in exact block standard deviations (see the module docstring).
BLOCKS, BLOCK_BOUND = 30, 4.0
#: Fewer samples than this per case leave the blocks too small for the sampler check.
MIN_SAMPLER_SAMPLES = 300
#: Samples drawn at once by the verifier.
_CHUNK = 65_536
EXACT, PLUG_IN = "exact integrals + median-of-means sampler check", "plug-in Monte Carlo, delta-method z"


@dataclass(frozen=True)
class MonteCarloCase:
    """One random Hessian: the target, phi at exact integrals (``reference``), the plug-in estimate.

    ``z`` is, for the exact method, the largest median-of-means deviation of a psi component in
    exact block standard deviations; for the plug-in method, the delta-method z of the estimate.
    """

    kind: str
    d: int
    spectrum: tuple[float, ...]
    target: float
    estimate: float
    stderr: float
    z: float
    passed: bool
    method: str = PLUG_IN
    #: The identity at exact integrals (None when the plug-in method ran).
    reference: float | None = None


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
        lines = [f"{'kind':<11}{'d':>3}  {'target':>12}  {'exact phi':>12}  {'estimate':>12}  {'std err':>10}  "
                 f"{'z':>6}  ok"]
        for c in self.cases:
            reference = "-" if c.reference is None else f"{c.reference:.6g}"
            lines.append(f"{c.kind:<11}{c.d:>3}  {c.target:>12.6g}  {reference:>12}  {c.estimate:>12.6g}  "
                         f"{c.stderr:>10.3g}  {c.z:>6.2f}  {'yes' if c.passed else 'NO'}")
        if any(c.method == EXACT and not math.isfinite(c.target) for c in self.cases):
            lines.append("inf: beyond float64. The identity was checked at those spectra in multiple precision "
                         "and psi's samples against their exact moments; phi of the sample means overflows.")
        return "\n".join(lines)

    @property
    def methods(self) -> tuple[str, ...]:
        """The checking methods the cases used, in order of first use."""
        return tuple(dict.fromkeys(case.method for case in self.cases))

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "checked": self.checked,
            "certificate": self.certificate,
            "certified": self.certified,
            "samples_per_case": self.samples,
            "z_threshold": self.z_threshold,
            "notes": list(self.notes),
            "methods": list(self.methods),
            "monte_carlo": [
                {"kind": c.kind, "d": c.d, "spectrum": list(c.spectrum), "target": c.target,
                 "reference": c.reference, "estimate": c.estimate, "stderr": c.stderr, "z": c.z,
                 "passed": c.passed, "method": c.method}
                for c in self.cases
            ],
        }


# ---------------------------------------------------------------------------- certificate
def _vanishes(expr: sp.Expr) -> bool:
    expr = sp.powdenest(expr, force=True)
    expr = sp.expand(sp.expand_log(expr, force=True))
    if expr == 0:
        return True
    if sp.simplify(expr) == 0:
        return True
    # log(2 - l/10) - log(1 - l/20) - log 2 vanishes as exp(...) = 1 (a real continuous residual).
    return expr.has(sp.log) and sp.simplify(sp.exp(expr)) == 1


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
    difference = difference.xreplace({Eig(0): EMax(lam), Eig(-1): EMin(lam)})  # l[0] is max(l), l[-1] min(l)
    if expanded_terms(difference, MAX_CERTIFICATE_TERMS) > MAX_CERTIFICATE_TERMS:
        return (f"not attempted: phi at the closed-form integrals expands to over {MAX_CERTIFICATE_TERMS} terms "
                "(the limit that keeps verification under a few seconds)"), None
    if measure.d is not None:
        if _vanishes(difference):  # in spectral atoms: cheap for any d
            return f"closed form at d = {measure.d}", True
        if measure.d > EXPLICIT_MAX_D:
            return (f"not proved: no simplification in spectral atoms, and d > {EXPLICIT_MAX_D} "
                    "is too large to expand"), None
        return _described(f"closed form at d = {measure.d}", _explicit_verdict(difference, measure.d, measure.domain))
    if _vanishes(difference):
        return "closed form, symbolic d", True
    verdicts = [_explicit_verdict(difference, d, measure.domain) for d in CERTIFICATE_DIMENSIONS]
    verdict = False if False in verdicts else (True if all(verdicts) else None)
    return _described("closed form at d = 1..6", verdict)


def _described(what: str, verdict: bool | None) -> tuple[str, bool | None]:
    if verdict is None:
        return (f"{what}: SymPy could not simplify the residual to 0, but it is 0 to {DIGITS} digits at random "
                "spectra in the domain (not a proof)"), None
    return what, verdict


def _explicit_verdict(difference: sp.Expr, d: int, domain: Domain) -> bool | None:
    """True: the residual simplifies to 0 in l_1..l_d; False: it is non-zero somewhere; None: neither shown."""
    symbols = eigenvalue_symbols(d)
    residual = expand_spectrum(difference, symbols)
    if expanded_terms(residual, MAX_CERTIFICATE_TERMS) <= MAX_CERTIFICATE_TERMS and _vanishes(residual):
        return True
    evaluate = _mp_numeric(residual, symbols)
    rng = np.random.default_rng(d)
    with mpmath.workdps(DIGITS):
        for kind in SPECTRUM_KINDS:
            spectrum = _spectrum(kind, d, domain, rng)
            if spectrum is None:
                continue
            value = evaluate(*(mpmath.mpf(float(x)) for x in spectrum))
            if not mpmath.isfinite(value) or abs(value) > mpmath.mpf(10) ** (10 - DIGITS):
                return False
    return None


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
    if domain.lower > 0:  # a stated floor (the determinant's importance sampler): lift the spectrum onto it
        spectrum = domain.lower * (1 + 0.5 * np.abs(spectrum))
    # Shrink towards zero until the spectrum sits well inside the domain's finite bounds.
    for bound in (domain.lower, domain.upper):
        if math.isfinite(bound) and bound != 0 and not bound == domain.lower > 0:
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


def _placeholders(count: int) -> tuple[sp.Symbol, ...]:
    """Fixed stand-ins for a target's atoms, so the lambdified target is cached across cases."""
    return sp.symbols(f"atom0:{count}", real=True) if count else ()


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
    symbols = _placeholders(len(values))
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
    """psi components, phi, scale and offset at dimension d, as numpy callables (built once)."""
    psi = [_numeric(p.subs(D, d), (measure.psi_arg,)) for p in measure.psi]
    phi = _numeric(measure.phi.subs(D, d), measure.phi_args)
    scale, offset = (float(sp.sympify(x).subs(D, d)) for x in (measure.scale, measure.offset))
    return psi, phi, scale, offset


def _slope(phi, point: np.ndarray) -> np.ndarray:
    """grad phi at ``point`` by central differences: a standard error needs a few digits, not SymPy's diff
    (which takes minutes on the 388-term phi of det(H) at d = 6)."""
    slope = np.empty(len(point))
    for i in range(len(point)):
        step = 1e-6 * max(1.0, abs(point[i]))
        up, down = point.copy(), point.copy()
        up[i] += step
        down[i] -= step
        slope[i] = (float(phi(*up)) - float(phi(*down))) / (2 * step)
    return slope


def _estimate(measure: Measure, d: int, hessian: np.ndarray, spectrum: np.ndarray, n: int,
              rng: np.random.Generator) -> tuple[float, float]:
    """scale * phi(component means) + offset, and its delta-method standard error."""
    return _plug_in(measure, d, _draw(measure, d, hessian, spectrum, n, rng))


def _draw(measure: Measure, d: int, hessian: np.ndarray, spectrum: np.ndarray, n: int,
          rng: np.random.Generator, sampler: str = "numpy") -> np.ndarray:
    """(m, n) samples of w * psi_c(Q(v)), each group's components from the same draws of its mu.

    ``sampler="torch"`` draws with ``Distribution.sample`` and ``Distribution.weights``, the
    optimizer's own sampling code in sharpc.runtime, instead of the verifier's NumPy samplers
    (``mc_sample``); both draw the same law.
    """
    psi = _numeric_measure(measure, d)[0]
    values = np.empty((measure.m, n))
    for group in measure.groups:
        for start in range(0, n, _CHUNK):  # bounded memory: --samples 10**6 at d = 64 is 0.5 GB per array
            size = min(_CHUNK, n - start)
            if hasattr(group.distribution, "at_hessian"):  # mu depends on H: the point the optimizer converges to
                v, weights = group.distribution.at_hessian(size, hessian)
            elif sampler == "torch":
                v, weights = _torch_rows(group.distribution, size, d, rng)
            else:
                v, weights = group.distribution.mc_sample(size, d, rng, spectrum)
            q = 0.5 * np.sum((v @ hessian) * v, axis=1)
            with np.errstate(over="ignore", invalid="ignore"):
                for c in group.components:
                    values[c, start:start + size] = weights * np.broadcast_to(psi[c](q), q.shape)
    return values


def _torch_rows(distribution, n: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import torch  # only on request: the compile path stays torch-free

    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    rows = distribution.sample(n, d, generator=generator, dtype=torch.float64).numpy()
    return rows, distribution.weights(rows)


def _plug_in(measure: Measure, d: int, values: np.ndarray) -> tuple[float, float]:
    """scale * phi(means) + offset and its delta-method standard error (groups are independent)."""
    _, phi, scale, offset = _numeric_measure(measure, d)
    n = values.shape[1]
    means = values.mean(axis=1)
    covariance = np.zeros((measure.m, measure.m))
    with np.errstate(over="ignore", invalid="ignore"):
        for group in measure.groups:
            idx = np.array(group.components)
            covariance[np.ix_(idx, idx)] = np.atleast_2d(np.cov(values[idx])) / n
        slope = _slope(phi, means) if covariance.any() else np.zeros(measure.m)
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
                dimensions: tuple[int, ...] | None = None, sampler: str = "numpy") -> tuple[MonteCarloCase, ...]:
    """One case per spectrum kind and dimension: exact integrals where possible, else plug-in."""
    rng = np.random.default_rng(seed)
    dims = (measure.d,) if measure.d is not None else (dimensions or MC_DIMENSIONS)
    cases = []
    for d in dims:
        for kind in SPECTRUM_KINDS:
            spectrum = _spectrum(kind, d, measure.domain, rng)
            if spectrum is None:
                continue
            hessian = _random_hessian(spectrum, rng)
            case = _exact_case(measure, kind, spectrum, hessian, samples, rng, sampler)
            cases.append(case or _plug_in_case(measure, kind, hessian, samples, rng, z_threshold, sampler))
    return tuple(cases)


def _slack(measure: Measure, d: int) -> float:
    """How far an approximation may miss its target (its error bound at d); 0 for exact measures."""
    return 0.0 if measure.error_bound is None else float(measure.error_bound.subs(D, d))


def _plug_in_case(measure: Measure, kind: str, hessian: np.ndarray, samples: int, rng: np.random.Generator,
                  z_threshold: float, sampler: str) -> MonteCarloCase:
    """The plug-in estimate against the target, by a delta-method z-score (exact for point masses)."""
    d = hessian.shape[0]
    exact = np.linalg.eigvalsh(hessian)
    target = target_at(measure.target, hessian)
    estimate, stderr = _plug_in(measure, d, _draw(measure, d, hessian, exact, samples, rng, sampler))
    # Approximations may miss the target by their error bound; the z-score counts the excess.
    slack = _slack(measure, d)
    error = math.copysign(max(abs(estimate - target) - slack, 0.0), estimate - target)
    if abs(error) <= 1e-9 * max(1.0, abs(target)):  # exact to rounding (e.g. point masses): nothing to test
        z = 0.0
    else:
        z = error / stderr if stderr > 0 else math.inf
    passed = math.isfinite(estimate) and abs(z) <= z_threshold
    return MonteCarloCase(kind, d, tuple(float(x) for x in exact), target, estimate, stderr, float(z), bool(passed))


def _exact_case(measure: Measure, kind: str, spectrum: np.ndarray, hessian: np.ndarray, samples: int,
                rng: np.random.Generator, sampler: str) -> MonteCarloCase | None:
    """The identity at exact integrals and the median-of-means sampler check; None without references."""
    if measure.target.has(HEntry):
        return None
    integrals = [expectation(measure.distribution_of(c), psi, spectrum) for c, psi in enumerate(measure.psi)]
    if any(value is None for value in integrals):
        return None
    d = len(spectrum)
    with mpmath.workdps(DIGITS):
        target = exact_target(measure.target, spectrum)
        reference = _exact_phi(measure, d, integrals)
        ok = (mpmath.isfinite(target) and mpmath.isfinite(reference)
              and abs(reference - target) <= _slack(measure, d) + IDENTITY_TOLERANCE * max(1, abs(target)))
    estimate, stderr, z = _sampler_check(measure, spectrum, hessian, integrals, samples, rng, sampler)
    sampler_ok = not z > BLOCK_BOUND
    return MonteCarloCase(kind, d, tuple(float(x) for x in spectrum), _float(target), estimate, stderr, z,
                          bool(ok and sampler_ok), EXACT, _float(reference))


_MPMATH = {
    "exp": mpmath.exp, "log": mpmath.log, "sqrt": mpmath.sqrt, "Abs": mpmath.fabs, "sign": mpmath.sign,
    "sin": mpmath.sin, "cos": mpmath.cos, "tanh": mpmath.tanh, "pi": mpmath.pi, "E": mpmath.e,
    "Max": max, "Min": min, "RootEig": lambda k, *a: _mp_root(int(k), a),
}


def _mp_root(k: int, coefficients) -> mpmath.mpf:
    """The k-th largest real part of the roots of s^d + a_1 s^(d-1) + ... + a_d, at working precision."""
    return _mp_sorted_roots(tuple(coefficients), mpmath.mp.prec)[k]


@lru_cache(maxsize=64)
def _mp_sorted_roots(coefficients: tuple, precision: int) -> list:
    """Real parts of the roots, largest first: phi asks for several k of one polynomial (max(l) - min(l))."""
    roots = mpmath.polyroots([1, *coefficients], maxsteps=500, extraprec=4 * precision)
    return sorted((mpmath.re(r) for r in roots), reverse=True)


@lru_cache(maxsize=256)
def _mp_numeric(expr: sp.Expr, args: tuple[sp.Symbol, ...]):
    # Our own expressions in our own symbols only: user text never reaches lambdify.
    return sp.lambdify(args, expr, modules=[_MPMATH, "mpmath"])


def exact_target(target: sp.Expr, spectrum) -> mpmath.mpf:
    """The target at a spectrum in mpmath (at the caller's precision): sorted descending for l[k]."""
    values = [mpmath.mpf(float(x)) for x in spectrum]
    ordered = sorted(values, reverse=True)
    atoms = sorted(reductions(target), key=sp.default_sort_key)
    numbers = []
    for atom in atoms:
        if isinstance(atom, Eig):
            numbers.append(ordered[int(atom.args[0])])
            continue
        body = _mp_numeric(atom.body, (lam,))
        terms = [body(x) for x in values]
        numbers.append({ESum: mpmath.fsum, EProd: mpmath.fprod, EMax: max, EMin: min}[type(atom)](terms))
    symbols = _placeholders(len(atoms))
    outer = target.xreplace(dict(zip(atoms, symbols))).subs(D, len(values))
    return _mp_numeric(outer, symbols)(*numbers)


def _exact_phi(measure: Measure, d: int, integrals: list) -> mpmath.mpf:
    """scale * phi(integrals) + offset in mpmath (at the caller's precision)."""
    phi = _mp_numeric(measure.phi.subs(D, d), measure.phi_args)
    scale, offset = (_mp_numeric(sp.sympify(x).subs(D, d), ())() for x in (measure.scale, measure.offset))
    return scale * phi(*integrals) + offset


def _float(value) -> float:
    """A real mpmath value as a float; NaN for a complex one (the target left its domain)."""
    if isinstance(value, mpmath.mpc):
        return float(value.real) if value.imag == 0 else math.nan
    return float(value)


def _sampler_check(measure: Measure, spectrum: np.ndarray, hessian: np.ndarray, integrals: list, samples: int,
                   rng: np.random.Generator, sampler: str) -> tuple[float, float, float]:
    """(plug-in estimate, its delta-method std err, largest |median-of-means z| over the components).

    z is 0 where a component's exact variance is infinite or the sample is too small for blocks.
    """
    values = _draw(measure, len(spectrum), hessian, spectrum, samples, rng, sampler)
    estimate, stderr = _plug_in(measure, len(spectrum), values)
    worst = 0.0
    if samples < MIN_SAMPLER_SAMPLES:
        return estimate, stderr, worst
    for c, psi in enumerate(measure.psi):
        distribution = measure.distribution_of(c)
        second = second_moment(distribution, psi, spectrum)
        if second is None or not mpmath.isfinite(second):
            continue
        variance = float(second - integrals[c] ** 2)
        used = values[c, : samples - samples % BLOCKS]
        median = float(np.median(used.reshape(BLOCKS, -1).mean(axis=1)))
        block_std = math.sqrt(max(variance, 0.0) * BLOCKS / len(used))
        error = abs(median - float(integrals[c]))
        scale = max(block_std, 1e-12 * max(1.0, abs(float(integrals[c]))))
        worst = max(worst, error / scale if math.isfinite(error) else math.inf)
    return estimate, stderr, worst


def verify(measure: Measure, *, samples: int = 10_000, seed: int = 0, z_threshold: float = 4.5,
           symbolic: bool = True, dimensions: tuple[int, ...] | None = None,
           sampler: str = "numpy") -> VerificationReport:
    """Certificate (if a closed form exists) and a seeded Monte Carlo test of ``measure``.

    ``sampler="torch"`` draws the samples with the optimizer's own sampling code (needs torch).
    An approximation is certified against its approximant, and its Monte Carlo cases pass
    when the estimate is within the error bound of the target, up to z_threshold standard errors.
    """
    if sampler not in ("numpy", "torch"):
        raise SharpcError(f"sampler must be 'numpy' or 'torch', got {sampler!r}")
    samples = check_int("samples", samples, *SAMPLES_RANGE)
    seed = check_int("seed", seed, *SEED_RANGE)
    z_threshold = check_float("z_threshold", z_threshold, 1.0, 100.0)
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
        cases = monte_carlo(measure, samples=samples, seed=seed, z_threshold=z_threshold, dimensions=dimensions,
                            sampler=sampler)
    else:
        cases = ()
        notes.append("approximate measure (see assumptions): the identity is not exact, so the "
                     "Monte Carlo test against the target does not apply")
    return VerificationReport(certificate, certified, cases, samples, z_threshold, tuple(notes))
