"""Hypothesis strategies for *correct* targets: every one has a measure that verification must pass.

Power-sum polynomials up to degree 8, Gaussian MGF rows, Table 1 rows and small-d universal
targets, each as (expression, compile options). Used by the corpus tests of the verifier.
"""

from __future__ import annotations

from hypothesis import strategies as st

coefficients = st.sampled_from(["1", "2", "3", "-1", "1/2", "-3/4"])


@st.composite
def power_sum_monomials(draw, budget: int = 8) -> tuple[str, int]:
    """A product of power sums sum(l**k) of total degree <= budget, and its degree."""
    factors, degree = [], 0
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, budget - degree)) if degree < budget else None
        if k is None:
            break
        factors.append("sum(l)" if k == 1 else f"sum(l**{k})")
        degree += k
    return "*".join(factors), degree


@st.composite
def power_sum_polynomials(draw) -> tuple[str, dict]:
    terms = [f"{draw(coefficients)}*{draw(power_sum_monomials())[0]}" for _ in range(draw(st.integers(1, 3)))]
    constant = draw(st.sampled_from(["", " + 1", " - 2"]))
    return " + ".join(terms) + constant, {}


@st.composite
def mgf_rows(draw) -> tuple[str, dict]:
    c, k = draw(coefficients), draw(st.sampled_from(["", " + 1", " - 5"]))
    s = draw(st.sampled_from(["1/10", "1/4", "-1/5", "1/20"]))
    if draw(st.booleans()):
        power = draw(st.sampled_from(["1", "2", "3", "-1", "1/2", "-1/2"]))
        return f"{c}*prod(1 - {s}*l)**({power}){k}", {}
    a0 = draw(st.sampled_from(["1", "2", "1/2"]))
    return f"{c}*sum(log({a0} - {s}*l)){k}", {}


@st.composite
def table1_rows(draw) -> tuple[str, dict]:
    atom = draw(st.sampled_from(["sum(l)", "sum(l**2)", "prod(l)", "sum(log(l))", "sum(l)/d", "mean(l**2)"]))
    return f"{draw(coefficients)}*{atom}{draw(st.sampled_from(['', ' + 1', ' - 3']))}", {}


@st.composite
def universal_targets(draw) -> tuple[str, dict]:
    d = draw(st.integers(2, 4))
    k = draw(st.integers(-d, d - 1))
    body = draw(st.sampled_from(["max(l)", "min(l)", f"l[{k}]", "mean(abs(l))", "max(l) - min(l)",
                                 "sum(tanh(l))", f"l[{k}]**2 + sum(l)"]))
    return body, {"d": d, "bound": draw(st.sampled_from([1.0, 2.0, 0.5]))}


@st.composite
def sums_of_parts(draw) -> tuple[str, dict]:
    """An extreme eigenvalue plus a power-sum polynomial at any d: the sum strategy's two measures."""
    extreme = draw(st.sampled_from(["max(l)", "min(l)", "max(abs(l))", "max(l) - min(l)"]))
    rest = draw(st.sampled_from(["sum(l)", "sum(l**2)", "sum(l**3)", "sum(l)**2"]))
    return f"{draw(coefficients)}*{extreme} + {draw(coefficients)}*{rest}", {"bound": 2.0}


correct_targets = st.one_of(power_sum_polynomials(), mgf_rows(), table1_rows(), universal_targets(), sums_of_parts())
