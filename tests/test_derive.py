"""Derivations against independent oracles: quadrature, multinomial moments, Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import sharpc
from oracles import gaussian_expectation, gaussian_moment, lebesgue_integral, sphere_expectation
from sharpc.cumulants import gaussian_raw_moment
from sharpc.derive.moments import symmetric_in_power_sums
from sharpc.distributions import Gaussian, Lebesgue, Sphere
from sharpc.spectral import D, eigenvalue_symbols, expand_spectrum

eigenvalue = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)
positive = st.floats(0.3, 3.0)


def target_at(measure: sharpc.Measure, spectrum) -> float:
    symbols = eigenvalue_symbols(len(spectrum))
    explicit = expand_spectrum(measure.target, symbols)
    return float(explicit.subs(dict(zip(symbols, spectrum))).evalf())


def measure_at(measure: sharpc.Measure, integrals, d: int) -> float:
    """scale * phi(integrals) + offset, evaluated numerically."""
    phi = measure.phi.subs(D, d).subs(dict(zip(measure.phi_args, integrals)))
    value = (measure.scale * phi + measure.offset).subs(D, d)
    return float(sp.N(value))


def psi_function(measure: sharpc.Measure, component: int):
    return sp.lambdify(measure.psi_arg, measure.psi[component], "math")


def integrals_by_quadrature(measure: sharpc.Measure, spectrum) -> list[float]:
    oracle = {Gaussian: gaussian_expectation, Sphere: sphere_expectation, Lebesgue: lebesgue_integral}
    return [oracle[type(measure.distribution_of(c))](spectrum, psi_function(measure, c)) for c in range(measure.m)]


# ----------------------------------------------------------------------------- Table 1
@pytest.mark.parametrize("expression, strategy, scale", [
    ("sum(l**2)", "table1", 1), ("2*sum(l**2)", "table1", 2), ("sum(l)/d", "table1", 2),
    ("sum(l)", "table1", 2 * D), ("prod(l)", "table1", (2 * sp.pi) ** D), ("prod(1 - l/10)", "table1", 1),
    ("prod(1 - 0.1*l)", "table1", 1), ("sum(log(1 - l/10))", "mgf", 1), ("prod(1 - l/10)**3", "mgf", 1),
    ("sum(l**3) - 2*sum(l)*sum(l**2)", "moments", 1),
])
def test_issue_examples_pick_the_documented_strategy(expression, strategy, scale):
    measure = sharpc.compile(expression)
    assert measure.strategy == strategy
    assert sp.simplify(measure.scale - scale) == 0


def test_table1_keeps_the_papers_phi_and_reports_dropped_constants():
    frob = sharpc.compile("2*sum(l**2) + 3")
    t1, t2 = frob.phi_args
    assert sp.expand(frob.phi - 2 * (t2 - t1**2)) == 0
    assert frob.scale == 2 and frob.offset == 3
    assert frob.constants_dropped == ("positive factor 2: target = 2 * S", "additive constant 3")
    det = sharpc.compile("prod(l)")
    assert "(2*pi)**d" in det.constants_dropped[0]
    assert det.assumptions[0].startswith("H >= 1 I (the stated lower bound)") and det.domain.lower == 1


def test_negative_factor_flips_phi_instead_of_being_dropped():
    measure = sharpc.compile("-sum(l**2)")
    t1, t2 = measure.phi_args
    assert measure.scale == 1 and sp.expand(measure.phi + 2 * (t2 - t1**2)) == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(eigenvalue, min_size=2, max_size=2))
def test_trace_and_frobenius_rows_by_quadrature(spectrum):
    for expression in ("sum(l)", "sum(l**2)", "3*sum(l**2) - 1"):
        measure = sharpc.compile(expression, d=2)
        value = measure_at(measure, integrals_by_quadrature(measure, spectrum), 2)
        assert value == pytest.approx(target_at(measure, spectrum), rel=1e-6, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.lists(positive, min_size=1, max_size=2))
def test_determinant_rows_by_quadrature(spectrum):
    d = len(spectrum)
    for expression in ("prod(l)", "sum(log(l))"):
        measure = sharpc.compile(expression, d=d)
        value = measure_at(measure, integrals_by_quadrature(measure, spectrum), d)
        assert value == pytest.approx(target_at(measure, spectrum), rel=1e-5, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-3.0, 2.4), min_size=1, max_size=2), st.sampled_from(
    ["prod(1 - l/10)", "prod(1 - l/5)**2", "sum(log(1 - l/10))", "sum(log(2 + l/4))", "prod(1 + l/10)**0.5"]))
def test_mgf_rows_by_quadrature(spectrum, expression):
    measure = sharpc.compile(expression, d=len(spectrum))
    assert measure.domain.contains(spectrum)
    value = measure_at(measure, integrals_by_quadrature(measure, spectrum), len(spectrum))
    assert value == pytest.approx(target_at(measure, spectrum), rel=1e-6, abs=1e-8)


# ----------------------------------------------------------------------------- moments
@settings(max_examples=30, deadline=None)
@given(st.lists(eigenvalue, min_size=1, max_size=4), st.integers(1, 6))
def test_gaussian_raw_moments_match_the_multinomial_oracle(spectrum, k):
    closed = expand_spectrum(gaussian_raw_moment(k), [sp.Float(x, 30) for x in spectrum])
    assert float(closed) == pytest.approx(gaussian_moment(spectrum, k), rel=1e-9, abs=1e-12)


power_sum_polynomial = st.lists(
    st.tuples(st.integers(-3, 3), st.lists(st.integers(1, 6), min_size=1, max_size=2)), min_size=1, max_size=3)


def _as_text(terms) -> str:
    return " + ".join(f"({c})*" + "*".join(f"sum(l**{k})" for k in ks) for c, ks in terms)


@settings(max_examples=30, deadline=None)
@given(power_sum_polynomial, st.lists(eigenvalue, min_size=1, max_size=3))
def test_moment_strategy_is_exact_up_to_order_six(terms, spectrum):
    expression = _as_text(terms)
    measure = sharpc.compile(expression, strategy="moments")
    d = len(spectrum)
    moments = [gaussian_moment(spectrum, k) for k in range(1, measure.m + 1)]
    assert measure_at(measure, moments, d) == pytest.approx(target_at(measure, spectrum), rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("expression, d", [("prod(l)", 3), ("prod(1 + l)", 2), ("sum(l)**2 - sum(l**2)", None)])
def test_symmetric_polynomials_with_concrete_d(expression, d):
    measure = sharpc.compile(expression, d=d, strategy="moments")
    for seed in range(3):
        spectrum = np.random.default_rng(seed).uniform(-2, 2, d or 3)
        moments = [gaussian_moment(spectrum, k) for k in range(1, measure.m + 1)]
        assert measure_at(measure, moments, len(spectrum)) == pytest.approx(target_at(measure, spectrum), rel=1e-8)


def test_non_symmetric_polynomial_is_an_error_that_says_so():
    l1, l2 = eigenvalue_symbols(2)
    with pytest.raises(sharpc.DerivationError, match="not symmetric"):
        symmetric_in_power_sums(l1**2 + l2, (l1, l2))


def test_prod_with_symbolic_d_asks_for_d_in_the_moment_strategy():
    with pytest.raises(sharpc.DerivationError, match="concrete --d"):
        sharpc.compile("prod(l)", strategy="moments")


def test_unrepresentable_target_names_every_strategy_and_why():
    with pytest.raises(sharpc.DerivationError) as error:
        sharpc.compile("max(l)**2")
    message = str(error.value)
    for name, entry in sharpc.STRATEGIES.items():
        assert (f"{name}:" in message) == (entry.auto and not entry.matrix)
    assert "needs --d and --bound" in message


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(sharpc.DerivationError, match="unknown strategy 'nope'"):
        sharpc.compile("sum(l)", strategy="nope")


@pytest.mark.parametrize("options", [dict(d=0), dict(d=-1), dict(det_sampling="cube"), dict(half_width=0.0)])
def test_bad_compile_options(options):
    with pytest.raises(sharpc.SharpcError):
        sharpc.compile("sum(l)", **options)


def test_hypercube_determinant_is_reported_as_an_approximation():
    measure = sharpc.compile("prod(l)", det_sampling="hypercube", half_width=0.5)
    assert not measure.exact
    assert any("Det-SAM" in a and "R - 1 = a^2 tr(H)/3" in a for a in measure.assumptions)
    assert measure.groups[0].distribution.describe() == "Uniform([-0.5, 0.5]^d)"


def test_concrete_d_is_bound_everywhere():
    measure = sharpc.compile("sum(l)/d + d", d=5)
    assert not any(x.has(D) for x in (measure.phi, measure.scale, measure.offset, *measure.psi))
    assert measure.offset == 5 and math.isclose(float(measure.scale), 2.0)


@pytest.mark.parametrize("logged, summed", [
    ("log(prod(l))", "sum(log(l))"),
    ("3*log(prod(1 + l/10)) - 1", "3*sum(log(1 + l/10)) - 1"),
])
def test_a_log_of_a_product_is_derived_as_the_sum_of_logs(logged, summed):
    """log det written log(prod(l)) reaches the same exact measure as sum(log(l)) (equal for l > 0)."""
    a, b = sharpc.compile(logged), sharpc.compile(summed)
    assert (a.phi, a.psi, a.groups, a.domain) == (b.phi, b.psi, b.groups, b.domain)
    assert a.verify(samples=2000).passed


@pytest.mark.parametrize("d", [100_000, 10**12])
def test_a_constant_exponential_in_a_huge_concrete_d_is_declined_not_computed(d):
    """(2 pi)**d at d = 10**12 would take SymPy hours as an exact number (and at 10**5 Python refuses
    to print it); the strategies decline with the reason and the way out (leave d symbolic)."""
    with pytest.raises(sharpc.DerivationError, match="too large to compute exactly.*compile without d"):
        sharpc.compile("prod(l)", d=d)
    assert sharpc.compile("prod(l)").d is None  # the symbolic-d measure is the way out


def test_the_moments_strategy_declines_a_huge_concrete_d_before_building_its_symbols():
    with pytest.raises(sharpc.DerivationError, match="moments: with d = 1000000000000 the target"):
        sharpc.compile("sum(l)**2 - sum(l**2) + prod(l)", d=10**12, strategy="moments")
