"""The verifier accepts right measures and rejects wrong ones by many standard errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import sympy as sp

import sharpc
from sharpc.distributions import Gaussian, Hypercube, Lebesgue, Sphere
from sharpc.measure import SampleGroup

EXAMPLES = ["sum(l**2)", "sum(l)/d", "prod(1 - l/10)", "sum(l**3) - 2*sum(l)*sum(l**2)",
            "sum(log(1 - l/10))", "2*sum(l**2)", "prod(1 - 0.1*l)", "prod(1 - l/10)**3"]


@pytest.mark.parametrize("expression", EXAMPLES)
def test_every_issue_example_is_certified_and_passes_monte_carlo(expression):
    report = sharpc.compile(expression).verify()
    assert report.certified is True, report.certificate
    assert report.cases and report.passed, report.table()


@pytest.mark.parametrize("expression", ["prod(l)", "sum(log(l))"])
@pytest.mark.parametrize("lower", [0.25, 1.0, 3.0])
def test_lebesgue_rows_are_exact_through_the_optimizers_sampler(expression, lower):
    """The Lebesgue measure, importance-sampled from N(0, I/L) with the runtime's own weights."""
    measure = sharpc.compile(expression, lower_bound=lower)
    report = measure.verify(sampler="torch")
    assert measure.exact and measure.domain.lower == lower
    assert report.certified is True and report.cases and report.passed, report.table()
    assert any("SL" in g for g in measure.invariances)


@pytest.mark.parametrize("expression", ["prod(l)", "sum(log(l))"])
def test_adaptive_lebesgue_rows_are_exact_through_the_optimizers_sampler(expression):
    """mu_x = law of |x| v keeps the base's importance weights (they are functions of v)."""
    report = sharpc.compile(expression, invariant="scale").verify(sampler="torch")
    assert report.cases and report.passed, report.table()


def test_hypercube_det_sam_is_flagged_approximate_and_says_what_it_regularizes():
    measure = sharpc.compile("prod(l)", det_sampling="hypercube")
    assert not measure.exact and any("a^2 tr(H)/3" in a for a in measure.assumptions)


def test_concrete_d_determinant_is_exact_through_gaussian_moments():
    measure = sharpc.compile("prod(l)", d=3)
    report = measure.verify(sampler="torch")
    assert measure.strategy == "moments" and measure.exact
    assert report.certified is True and report.cases and report.passed


@pytest.mark.parametrize("expression, options", [("sum(l**2)", {}), ("sum(l)/d", {}), ("sum(l**8)", {}),
                                                 ("prod(1 - l/10)", {}), ("max(l)", {"d": 3, "bound": 2})])
def test_the_optimizers_own_sampler_passes_correct_measures(expression, options):
    report = sharpc.compile(expression, **options).verify(sampler="torch")
    assert report.passed and report.cases


@dataclasses.dataclass(frozen=True)
class _TruncatedLebesgue(Lebesgue):
    """The 0.1 optimizer's stand-in: uniform on [-1, 1]^d with the cube's volume as weight."""

    def sample(self, n, d, *, generator=None, device=None, dtype=None):
        return Hypercube(1.0).sample(n, d, generator=generator, device=device, dtype=dtype)

    def weights(self, rows):
        return np.full(len(rows), 2.0 ** rows.shape[1])


def test_a_sampler_that_differs_from_the_formal_measure_is_caught():
    """Drawn from a truncation of the Lebesgue measure (version 0.1's optimizer), the identity fails."""
    measure = sharpc.compile("prod(l)")
    truncated = dataclasses.replace(measure, groups=(SampleGroup(_TruncatedLebesgue(1.0), (0,)),))
    report = truncated.verify(symbolic=False, sampler="torch")
    assert measure.verify(symbolic=False, sampler="torch").passed
    assert not report.passed and min(case.z for case in report.cases) > 10


def test_hypercube_det_sam_measures_a_trace_at_small_half_width():
    """R - 1 = a^2 tr(H)/3 + O(a^4): spectra with det 1 but different traces give different R."""
    import numpy as np

    a, rng = 0.05, np.random.default_rng(0)
    for spectrum in ([4.0, 0.25, 1.0], [1.0, 1.0, 1.0], [2.0, 0.5, 1.0]):
        v = rng.uniform(-a, a, (400_000, 3))
        regularizer = np.mean(np.exp(-0.5 * (v**2 * np.array(spectrum)).sum(axis=1))) ** -2
        assert abs((regularizer - 1) / (a**2 * sum(spectrum) / 3) - 1) < 0.02


def test_concrete_d_prod_via_moments_passes():
    report = sharpc.compile("prod(l)", d=3, strategy="moments").verify(samples=200_000)
    assert report.certified and report.passed, report.table()


def _broken(measure, **changes):
    return dataclasses.replace(measure, **changes)


@pytest.mark.parametrize("mutation", [
    lambda m: _broken(m, phi=m.phi / 2),                                        # wrong constant in phi
    lambda m: _broken(m, phi=m.phi.subs(m.phi_args[1], 2 * m.phi_args[1])),     # wrong phi shape
    lambda m: _broken(m, groups=(SampleGroup(Sphere(), (0, 1)),)),              # wrong mu
    lambda m: _broken(m, offset=sp.Integer(1)),                                 # wrong offset
])
def test_wrong_frobenius_measures_fail(mutation):
    wrong = mutation(sharpc.compile("sum(l**2)"))
    report = wrong.verify()
    assert report.certified is False
    assert not report.passed
    # The identity fails at exact integrals in every case where the target is not ~0.
    assert all(not case.passed and abs(case.reference - case.target) > 1e-6 * abs(case.target)
               for case in report.cases if abs(case.target) > 1e-3)


def test_monte_carlo_alone_catches_a_wrong_measure():
    wrong = _broken(sharpc.compile("prod(1 - l/10)"), phi=sharpc.compile("prod(1 - l/10)").phi ** 2)
    report = wrong.verify(symbolic=False)
    assert report.certified is None and not report.passed


def test_wrong_distribution_for_trace_fails():
    trace = sharpc.compile("sum(l)")
    report = _broken(trace, groups=(SampleGroup(Gaussian(), (0,)),)).verify()
    assert not report.passed


def test_verification_is_seeded():
    measure = sharpc.compile("sum(l**2)")
    assert measure.verify(seed=3).to_dict() == measure.verify(seed=3).to_dict()
    assert measure.verify(seed=3).to_dict() != measure.verify(seed=4).to_dict()


def test_monte_carlo_spectra_respect_the_domain():
    measure = sharpc.compile("prod(1 - l/2)")       # variance finite only for l < 1
    report = measure.verify()
    assert all(max(case.spectrum) < 1.0 for case in report.cases)
    assert {case.kind for case in report.cases} >= {"indefinite", "singular", "clustered"}


def test_positive_definite_domain_skips_indefinite_spectra():
    report = sharpc.compile("log(sum(l))").verify()
    assert {case.kind for case in report.cases} == {"clustered", "positive"}
    assert all(min(case.spectrum) > 0 for case in report.cases)


def test_approximate_measures_say_why_monte_carlo_does_not_apply():
    report = sharpc.compile("prod(l)", det_sampling="hypercube").verify()
    assert report.cases == () and "approximate" in report.notes[0]
    assert report.certified is None


def test_large_concrete_d_is_certified_in_atoms_without_expanding_or_sampling():
    report = sharpc.compile("sum(l**2)", d=100_000).verify()
    assert report.certified is True and report.cases == () and report.checked
    assert "too large for the Monte Carlo test" in report.notes[0]


def test_nothing_checked_is_reported_as_such():
    report = sharpc.compile("prod(l)", det_sampling="hypercube").verify()
    assert report.passed and not report.checked


@pytest.mark.parametrize("expression", ["exp(exp(sum(l)))", "exp(64*sum(l**2))**64", "sum(l)/1e-12**25",
                                        "exp(1e12*sum(l))"])
def test_targets_that_overflow_floats_verify_without_errors_or_warnings(expression):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = sharpc.compile(expression).verify(samples=1000)
    assert report.passed and report.cases


def test_rows_beyond_float64_say_how_they_were_checked():
    """exp(exp(exp(sum(l)))) overflows float64 at most probe spectra; the identity is checked in mpmath there."""
    report = sharpc.compile("exp(exp(exp(sum(l))))").verify(dimensions=(2,))
    assert any(not math.isfinite(case.target) for case in report.cases)
    assert report.passed and "beyond float64" in report.table()
