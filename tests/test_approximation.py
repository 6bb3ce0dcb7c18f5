"""Approximate spectral functions for any d (chebyshev, surrogate) and recommended_samples.

Oracles: NumPy eigenvalues of random symmetric matrices and NumPy's own reductions
(np.exp, np.abs, np.max), never sharpc's evaluation of the target.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import sharpc
from sharpc.cli import main
from sharpc.cumulants import linear_estimator_variance
from sharpc.derive import Request
from sharpc.derive.chebyshev import candidates, fit
from sharpc.distributions import DiracAt, Gaussian
from sharpc.measure import SampleGroup
from sharpc.parse import parse
from sharpc.spectral import D, ESum, HEntry, lam, power_sum_order, reductions
from sharpc.verify import _estimate, estimator_variance

BOUND = 2.0
#: target text -> the target on a spectrum, in NumPy (the independent oracle)
ORACLES = {
    "sum(exp(l))": lambda l: np.sum(np.exp(l)),
    "sum(abs(l))": lambda l: np.sum(np.abs(l)),
    "mean(abs(l)) + sum(l**2)": lambda l: np.mean(np.abs(l)) + np.sum(l**2),
    "3*sum(tanh(l)) - 1": lambda l: 3 * np.sum(np.tanh(l)) - 1,
    "max(l)": np.max,
    "min(l)": np.min,
    "max(abs(l))": lambda l: np.max(np.abs(l)),
    "2*l[0] + 1": lambda l: 2 * np.max(l) + 1,
}


def eigenvalues(seed: int, d: int, bound: float) -> np.ndarray:
    """Eigenvalues of a random symmetric matrix scaled into [-bound, bound], from numpy.linalg."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    spectrum = np.linalg.eigvalsh(a + a.T)
    spectrum = spectrum / np.max(np.abs(spectrum)) * bound * rng.uniform(0.1, 1.0)
    if rng.uniform() < 0.3:  # clustered at the edge of the domain
        spectrum = bound * (1 - 0.01 * rng.uniform(size=d)) * rng.choice([-1.0, 1.0])
    return spectrum


def approximant_at(measure: sharpc.Measure, spectrum: np.ndarray) -> float:
    """The approximant (a function of power sums) in exact arithmetic: the expanded
    (bound + l)^q cancels badly in floats when every l_i is near -bound."""
    exact = [sp.Rational(float(x)) for x in spectrum]
    values = {atom: sum(x ** power_sum_order(atom) for x in exact) for atom in reductions(measure.approximant)}
    return float(sp.N(measure.approximant.xreplace(values).subs(D, len(spectrum)), 30))


@pytest.fixture(scope="module")
def measures():
    return {(text, degree): sharpc.compile(text, bound=BOUND, degree=degree, strategy=approximation(text))
            for text in ORACLES for degree in (None, 6)}


def approximation(text: str) -> str:
    """The approximating strategy for a target (max/min would otherwise go to the exact eigenvector one)."""
    return "surrogate" if "max" in text or "min" in text or "l[" in text else "chebyshev"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), d=st.integers(1, 40), index=st.integers(0, 10**6))
def test_approximation_bounds_hold_on_random_spectra(measures, seed, d, index):
    (text, _), measure = sorted(measures.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))[index % len(measures)]
    spectrum = eigenvalues(seed, d, BOUND)
    exact = ORACLES[text](spectrum)
    approximant = approximant_at(measure, spectrum)
    bound = float(measure.error_bound.subs(D, d))
    assert abs(approximant - exact) <= bound * (1 + 1e-9) + 1e-9


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), d=st.integers(1, 40))
def test_norm_surrogates_are_one_sided(measures, seed, d):
    spectrum = eigenvalues(seed, d, BOUND)
    above = approximant_at(measures["max(l)", None], spectrum)
    below = approximant_at(measures["min(l)", None], spectrum)
    norm = approximant_at(measures["max(abs(l))", None], spectrum)
    assert above >= np.max(spectrum) - 1e-9
    assert below <= np.min(spectrum) + 1e-9
    assert norm >= np.max(np.abs(spectrum)) - 1e-9


@pytest.mark.parametrize("degree", [1, 3, 8])
def test_fit_error_bounds_the_error_off_the_grid(degree):
    rng = np.random.default_rng(degree)
    result = fit(np.exp, 3.0, degree)
    points = rng.uniform(-3.0, 3.0, 100_000)
    actual = np.max(np.abs(np.exp(points) - np.polynomial.Polynomial(result.coefficients)(points)))
    assert actual <= result.error <= 1.5 * actual + 1e-12  # a bound, and not a loose one


@pytest.mark.parametrize("text", ["sum(exp(l))", "sum(abs(l))", "max(l)", "min(l)", "max(abs(l))"])
def test_compiles_without_d_and_verifies_against_the_bound(text):
    measure = sharpc.compile(text, bound=BOUND, strategy=approximation(text))
    assert measure.d is None and not measure.exact
    assert measure.strategy in ("chebyshev", "surrogate")
    assert measure.error_bound.free_symbols <= {D} and measure.variance_per_sample > 0
    report = measure.verify(samples=4_000)
    assert report.certified is True and report.passed and report.cases, report.table()


def test_wrong_error_bound_fails_verification():
    """The Monte Carlo check has teeth: a bound 100x too small is caught."""
    measure = sharpc.compile("sum(abs(l))", bound=BOUND, degree=2)
    report = replace(measure, error_bound=measure.error_bound / 100).verify(samples=4_000)
    assert not report.passed


@pytest.mark.parametrize("text", ["sum(exp(l))", "max(l)"])
def test_cli_reports_bound_variance_and_samples_without_d(capsys, text):
    code = main(["compile", text, "--bound", "2", "--samples", "2000", "--strategy", approximation(text)])
    out = capsys.readouterr().out
    assert code == 0
    assert "error bound  |target - S| <=" in out and "per-sample variance" in out and "samples      about" in out


@pytest.mark.parametrize("text", ["max(l)", "min(l)", "max(abs(l))"])
def test_cli_reports_exact_extremes_without_d(capsys, text):
    """The default route for extreme eigenvalues: a point mass, so no bias and no sampling variance."""
    code = main(["compile", text, "--bound", "2", "--no-verify"])
    out = capsys.readouterr().out
    assert code == 0
    assert "strategy     eigenvector" in out and "error bound  0 (exact)" in out
    assert "samples      1 per step" in out


def test_degree_is_chosen_by_bias_and_variance():
    """More samples per step or fewer eigenvalues make variance cheaper: the degree never drops."""
    degrees = [sharpc.compile("sum(exp(l))", bound=1.0, budget=budget, size=size).steps[1]
               for budget, size in ((1, 10_000), (10**6, 10_000), (10**6, 10))]
    chosen = [int(text.split("degree ")[1].split(":")[0]) for text in degrees]
    assert chosen[0] <= chosen[1] <= chosen[2] and chosen[0] < chosen[2]
    request = Request("sum(exp(l))", parse("sum(exp(l))"), bound=1.0, budget=64)
    found = candidates(request, 1000)
    best = min(found, key=lambda c: c.risk(64))
    assert sharpc.compile("sum(exp(l))", bound=1.0, budget=64, size=1000).steps[1].count(f"degree {best.degree}:")


def test_degree_keyword_and_refusals():
    assert "degree 5" in sharpc.compile("sum(exp(l))", bound=1.0, degree=5).steps[1]
    with pytest.raises(sharpc.DerivationError, match="outside 1..12"):
        sharpc.compile("sum(exp(l))", bound=1.0, degree=13)
    with pytest.raises(sharpc.DerivationError, match="not one of"):
        sharpc.compile("max(abs(l))", bound=1.0, degree=3)  # |l|^q = l^q needs an even q
    with pytest.raises(sharpc.SharpcError, match="degree must be an integer in"):
        sharpc.compile("sum(exp(l))", bound=1.0, degree=0)


@pytest.mark.parametrize("text, reason", [
    ("l[1]", "l\\[1\\] has no surrogate"),
    ("sum(sign(l))", "not a continuous function"),
    ("sum(sqrt(l))", "not finite and real"),
    ("min(abs(l))", "negative powers"),
])
def test_refusals_at_large_d_are_one_line(text, reason):
    with pytest.raises(sharpc.DerivationError, match=reason) as error:
        sharpc.compile(text, d=2410, bound=BOUND)
    assert "\n" not in str(error.value)


def test_large_d_compiles_quickly_through_the_surrogate():
    measure = sharpc.compile("max(l)", d=2410, bound=10, strategy="surrogate")
    assert measure.strategy == "surrogate" and measure.error_bound.is_Float


@pytest.mark.parametrize("weights", [[0.0, 1.0], [1.0, 0.5, -0.3], [0.2, 0.0, 0.0, 0.1]])
def test_exact_variance_matches_the_simulated_estimator(weights):
    """The delta-method variance in exact arithmetic against a Monte Carlo of the compiled estimator."""
    spectrum = np.array([1.5, -0.7, 0.3, 0.9])
    target = sum(w * ESum(lam ** (k + 1)) for k, w in enumerate(weights) if w)
    measure = sharpc.compile(sp.sstr(target).replace("lambda", "l"), strategy="moments")
    power_sums = [float(np.sum(spectrum**k)) for k in range(1, 2 * len(weights) + 1)]
    exact = linear_estimator_variance(weights, power_sums)
    simulated = np.mean([estimator_variance(measure, spectrum, samples=400_000, seed=s) for s in range(3)])
    assert exact == pytest.approx(simulated, rel=0.1)


# ----------------------------------------------------------------------------- recommended_samples
def test_recommended_samples_is_one_for_deterministic_measures():
    assert sharpc.compile("H[0, 1]**2 + H[1, 1]", d=3).recommended_samples(0.01) == 1


def test_recommended_samples_for_a_target_that_vanishes_at_a_probe():
    measure = sharpc.compile("l[1]", d=3, bound=2)
    assert np.isclose(np.median(measure.domain.probe(3)), 0.0)  # the middle eigenvalue of the probe is 0
    assert measure.recommended_samples(0.1) >= 1


def test_recommended_samples_for_a_mixed_measure_counts_the_random_group():
    frobenius = sharpc.compile("sum(l**2)")
    (t1, t2, t3) = sp.symbols("t1:4", real=True)
    mixed = replace(frobenius, target=ESum(lam**2) + HEntry(0, 0), phi=frobenius.phi + 2 * t3,
                    psi=(*frobenius.psi, frobenius.psi_arg),
                    groups=(*frobenius.groups, SampleGroup(DiracAt((0,)), (2,))), d=None)
    assert isinstance(mixed.groups[0].distribution, Gaussian)
    spectrum = np.linspace(-1, 1, 8)
    n = mixed.recommended_samples(0.05, spectrum)
    expected = estimator_variance(frobenius, spectrum) / (0.05 * abs(np.sum(spectrum**2) + spectrum[0])) ** 2
    assert n > 1 and n == math.ceil(expected)


def test_recommended_samples_delivers_the_standard_error():
    """At the worst probe, n = recommended_samples(0.2) gives estimates within about 20% of the scale."""
    measure = sharpc.compile("sum(l**2)")
    n = measure.recommended_samples(0.2)
    probes = measure.probe_spectra(8)
    scale = max(abs(np.sum(p**2)) for p in probes)
    worst = 0.0
    for probe in probes:
        estimates = [_estimate(measure, 8, np.diag(probe), probe, n, np.random.default_rng(s))[0] for s in range(200)]
        worst = max(worst, np.std(estimates))
    assert 0.1 * scale <= worst <= 0.26 * scale


def test_recommended_samples_covers_clustered_spectra():
    measure = sharpc.compile("max(l)", d=3, bound=2)
    spread = measure.domain.probe(3)
    assert len(measure.probe_spectra(3)) == 2
    assert measure.recommended_samples(0.1) >= measure.recommended_samples(0.1, spread)
