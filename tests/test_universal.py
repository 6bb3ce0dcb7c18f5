"""Theorem 6 constructions: exact recovery, verification, variance-aware choice."""

from __future__ import annotations

import time

import numpy as np
import pytest
import sympy as sp

import sharpc
from sharpc.derive import Request
from sharpc.derive.universal import chebyshev_nodes, construct
from sharpc.parse import parse
from sharpc.spectral import RootEig
from sharpc.verify import estimator_variance


@pytest.fixture(scope="module")
def spectral_max():
    return sharpc.compile("max(l)", d=3, bound=2)


def test_spectral_max_compiles_and_verifies(spectral_max):
    """Spread spectra pass; clustered ones are left out: root recovery is biased there (issue 11)."""
    assert spectral_max.strategy.startswith("universal:")
    report = spectral_max.verify()
    assert report.certified is True
    assert all(case.passed for case in report.cases if case.kind != "clustered"), report.table()


@pytest.mark.slow
@pytest.mark.parametrize("expression", ["max(l)", "min(l)", "max(abs(l))", "min(abs(l))", "l[1]", "max(l) - min(l)",
                                        "sum(abs(l))", "sum(exp(l))", "l[0] - l[-1]"])
def test_theorem6_compiles_and_verifies_in_bounded_time_at_d8(expression):
    """A guard against the minutes it used to take; the 5 s figure is measured in docs/spectral.md, not
    asserted here (a loaded CI machine took 6.4 s)."""
    start = time.perf_counter()
    report = sharpc.compile(expression, d=8, bound=2.0).verify()
    assert time.perf_counter() - start <= 60.0
    assert report.certified is True and report.cases


@pytest.mark.parametrize("expression, d, bound", [("mean(abs(l))", 4, 1.0), ("l[0] - l[-1]", 3, 1.0)])
def test_issue_examples_verify(expression, d, bound):
    report = sharpc.compile(expression, d=d, bound=bound).verify(samples=50_000)
    assert report.certified is True and report.passed, report.table()


@pytest.mark.parametrize("missing", [dict(d=3), dict(bound=1.0), dict()])
def test_missing_d_or_bound_is_named(missing):
    with pytest.raises(sharpc.DerivationError, match="universality construction needs"):
        sharpc.compile("max(l)", strategy="universal", **missing)


def test_d_above_the_limit_is_refused_by_theorem6_and_routed_to_the_eigenvector():
    with pytest.raises(sharpc.DerivationError, match="exceeds the limit"):
        sharpc.compile("max(l)", d=20, bound=1, strategy="universal")
    assert sharpc.compile("max(l)", d=20, bound=1).strategy == "eigenvector"


def test_without_a_bound_the_reasons_name_bound():
    with pytest.raises(sharpc.DerivationError, match="surrogates need --bound"):
        sharpc.compile("max(l)**2")


def test_nodes_are_distinct_nonzero_and_inside_the_finite_variance_interval():
    for d in range(1, 9):
        nodes = chebyshev_nodes(d, 2.0)
        assert len(set(nodes)) == d and 0 not in nodes
        assert all(abs(n) < sp.Rational(1, 4) for n in nodes)


def test_recovered_spectrum_from_exact_integrals_is_the_spectrum():
    """Feed exact E[psi] (closed forms) into phi's coefficient recovery: roots = eigenvalues."""
    spectrum = [1.5, -0.7, 0.2]
    for construction in ("vandermonde", "power-roots"):
        measure = construct(Request("l[1]", parse("l[1]", d=3), d=3, bound=2.0), construction)
        integrals = []
        for c, psi in enumerate(measure.psi):
            closed = measure.distribution_of(c).closed_form(psi)
            integrals.append(float(sharpc.spectral.expand_spectrum(closed, spectrum)))
        value = measure.phi.subs(dict(zip(measure.phi_args, integrals)))
        from sharpc.verify import _NUMPY
        numeric = sp.lambdify(measure.phi_args, measure.phi, modules=[_NUMPY])(*integrals)
        assert numeric == pytest.approx(0.2, abs=1e-8), (construction, value)


def test_root_derivative_matches_finite_differences():
    a = sp.symbols("a1:4")
    root = RootEig(0, *a)
    point = {a[0]: -1.0, a[1]: -2.0, a[2]: 2.0}      # roots of s^3 - s^2 - 2s + 2: sqrt(2), 1, -sqrt(2)
    from sharpc.verify import _NUMPY
    f = sp.lambdify(a, root, modules=[_NUMPY])
    for j in range(3):
        derivative = float(sp.diff(root, a[j]).subs(point).subs(root.subs(point), np.sqrt(2)))
        h = 1e-6
        shifted = [point[x] + (h if i == j else 0) for i, x in enumerate(a)]
        back = [point[x] - (h if i == j else 0) for i, x in enumerate(a)]
        assert derivative == pytest.approx((f(*shifted) - f(*back)) / (2 * h), rel=1e-5)


def test_variance_aware_choice_keeps_the_lower_variance_construction():
    request = Request("mean(abs(l))", parse("mean(abs(l))", d=4), d=4, bound=1.0)
    chosen = sharpc.compile("mean(abs(l))", d=4, bound=1.0)
    probes = (np.linspace(-1, 1, 4), np.linspace(0.2, 1, 4))
    variances = {name: max(estimator_variance(construct(request, name), p) for p in probes)
                 for name in ("vandermonde", "power-roots")}
    assert chosen.strategy == "universal:" + min(variances, key=variances.get)
    assert chosen.variance_per_sample == pytest.approx(min(variances.values()))


def test_forced_construction_and_recommended_samples(spectral_max):
    forced = sharpc.compile("max(l)", d=3, bound=2, strategy="vandermonde")
    assert forced.strategy == "universal:vandermonde"
    n_loose, n_tight = spectral_max.recommended_samples(0.2), spectral_max.recommended_samples(0.05)
    assert n_tight == pytest.approx(16 * n_loose, rel=0.01)


def test_a_corrupted_recovery_fails_the_certificate(spectral_max):
    import dataclasses

    t1 = spectral_max.phi_args[0]
    broken = dataclasses.replace(spectral_max, phi=spectral_max.phi.subs(t1, 1.01 * t1))
    assert broken.verify(samples=2000).certified is False


@pytest.mark.parametrize("expression", ["max(abs(l))", "min(abs(l))"])
def test_abs_of_the_spectrum_compiles_at_d3(expression):
    """Used to raise 'Invalid NaN comparison' from SymPy's derivative of Abs(RootEig)."""
    measure = sharpc.compile(expression, d=3, bound=2.0)
    assert measure.verify(samples=2_000).certified is True


@pytest.mark.parametrize("expression", ["sum(sign(l))", "max(sign(l - 1))"])
def test_discontinuous_targets_are_refused_with_a_reason(expression):
    with pytest.raises(sharpc.DerivationError, match="continuous function of the spectrum"):
        sharpc.compile(expression, d=3, bound=2.0)


@pytest.mark.parametrize("construction", ["vandermonde", "power-roots"])
def test_certificate_rejects_a_wrong_recovery(construction):
    """The elementary-symmetric certificate has teeth: one perturbed coefficient is caught."""
    from dataclasses import replace

    measure = construct(Request("max(l)", parse("max(l)", d=4), d=4, bound=2.0), construction)
    (root, *_) = sorted(measure.phi.atoms(RootEig), key=sp.default_sort_key)
    coefficients = list(root.args[1:])
    coefficients[1] = coefficients[1] * sp.Rational(11, 10)
    tampered = measure.phi.xreplace({r: RootEig(r.args[0], *coefficients) for r in measure.phi.atoms(RootEig)})
    assert sharpc.verify.certify(measure)[1] is True
    assert sharpc.verify.certify(replace(measure, phi=tampered))[1] is False
