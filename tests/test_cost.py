"""Bounded cost: every target compiles and verifies with bounded SymPy work, or is refused naming a limit.

Work is counted, not timed (timings belong to benchmarks): every ``Expr.expand`` call adds the
terms it returns to a counter. The estimates in :mod:`sharpc.limits` and the parser's matrix
estimate are checked against real expansions as upper bounds.
"""

from __future__ import annotations

import ast
import contextlib
import sys

import pytest
import sympy as sp
from grammar import matrix_targets, targets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sharpc
from sharpc.limits import expanded_terms
from sharpc.spectral import hessian_matrix

parse_module = sys.modules["sharpc.parse"]

#: Terms all expand calls of one compile + verify may return together.
WORK_BOUND = 300_000
#: ... and of one refusal.
REFUSAL_BOUND = 20_000

ISSUE_EXPENSIVE = [
    ("sum(l**12)**5", {}), ("trace(H**8)", {"d": 6}), ("det(H**2)", {"d": 6}), ("trace(H@H@H@H@H@H)", {"d": 6}),
    ("det(H**8)", {"d": 4}), ("(sum(l)+sum(l**2)+sum(l**3)+1)**64", {}), ("sum(l**6)**10", {}),
    ("sum(l**8)**8", {}), ("prod(1+l+l**2)", {"d": 8}),
]


@contextlib.contextmanager
def counted_expansions(monkeypatch):
    """A one-element list holding the total terms returned by Expr.expand inside the block."""
    total = [0]
    original = sp.Expr.expand

    def expand(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        total[0] += len(sp.Add.make_args(result))
        return result

    monkeypatch.setattr(sp.Expr, "expand", expand)
    yield total
    monkeypatch.setattr(sp.Expr, "expand", original)


@pytest.mark.parametrize("expression, options", ISSUE_EXPENSIVE)
def test_issue_expensive_targets_are_refused_naming_the_limit(monkeypatch, expression, options):
    with counted_expansions(monkeypatch) as work:
        with pytest.raises(sharpc.SharpcError, match=r"over \d+ (terms|term products|monomials)"):
            sharpc.compile(expression, **options)
    assert work[0] <= REFUSAL_BOUND


@pytest.mark.parametrize("expression, options", [("det(H)", {"d": 6}), ("trace(H**4)", {"d": 6}),
                                                 ("det(H**2)", {"d": 4}), ("sum(l**8)**2", {}),
                                                 ("(sum(l)+1)**64", {})])
def test_targets_near_the_limits_are_accepted_with_bounded_work(monkeypatch, expression, options):
    with counted_expansions(monkeypatch) as work:
        report = sharpc.compile(expression, **options).verify(samples=500)
    assert report.passed and work[0] <= WORK_BOUND


SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                    HealthCheck.function_scoped_fixture])


@settings(max_examples=25, **SLOW)
@given(st.one_of(st.tuples(targets, st.sampled_from([None, 3])),
                 st.tuples(matrix_targets, st.sampled_from([2, 3, 4, 6]))))
def test_generated_targets_compile_and_verify_with_bounded_work(monkeypatch, case):
    expression, d = case
    with counted_expansions(monkeypatch) as work:
        try:
            sharpc.compile(expression, d=d, bound=2.0 if d else None).verify(samples=300)
        except sharpc.SharpcError:
            pass
    assert work[0] <= WORK_BOUND, expression


# ---------------------------------------------------------------- the estimates are upper bounds
_polynomials = st.recursive(
    st.sampled_from([sp.Symbol("x"), sp.Symbol("y"), sp.Symbol("z"), sp.Integer(2)]),
    lambda inner: st.one_of(st.tuples(inner, inner).map(lambda p: sp.Add(*p, evaluate=False)),
                            st.tuples(inner, inner).map(lambda p: sp.Mul(*p, evaluate=False)),
                            st.tuples(inner, st.integers(1, 5)).map(lambda p: sp.Pow(*p, evaluate=False))),
    max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(_polynomials)
def test_expanded_terms_bounds_the_terms_of_expand(expr):
    estimate = expanded_terms(expr, cap=10**6)
    assert len(sp.Add.make_args(sp.expand(expr))) <= estimate


_matrix_texts = st.recursive(st.just("H"), lambda m: st.one_of(
    st.tuples(m, st.sampled_from(["@", "+", "-"]), m).map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
    st.tuples(m, st.integers(1, 3)).map(lambda p: f"{p[0]}**{p[1]}"),
    m.map(lambda e: f"(2*{e})")), max_leaves=4)  # (bare, H @ 2*(H @ H) is (H @ 2) * (H @ H): refused by the parser)


@settings(max_examples=30, deadline=None)
@given(_matrix_texts, st.integers(1, 3))
@example("H**3**1**3", 3)  # the exponent 3**1**3 is an expression, not a literal: found by Hypothesis
@example("(H @ (2*(H @ H)))", 2)
def test_matrix_estimate_bounds_the_terms_of_each_entry(text, d):
    terms, _ = parse_module._matrix_estimate(ast.parse(text, mode="eval").body, d)
    hessian = hessian_matrix(d)
    namespace = {"H": hessian}
    value = eval(compile(text.replace("@", "*"), "<test>", "eval"), namespace)  # noqa: S307 - generated above
    assert max(len(sp.Add.make_args(sp.expand(entry))) for entry in value) <= terms
