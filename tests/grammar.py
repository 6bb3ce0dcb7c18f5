"""Hypothesis strategies for the documented target language and the CLI's options.

They follow ``sharpc compile --help`` (LANGUAGE_HELP): every reduction, function, constant and
operator, l[k], d, and the matrix forms in H for a concrete d. Generated text is often outside
the language (an exponent too large, l outside a reduction): the point is that every input
ends in one of the documented outcomes.
"""

from __future__ import annotations

from hypothesis import strategies as st

REDUCTIONS = ("sum", "prod", "max", "min", "mean")
UNARY = ("exp", "log", "sqrt", "abs", "sin", "cos", "tanh", "sign")
BINARY_FUNCTIONS = ("maximum", "minimum")
OPERATORS = ("+", "-", "*", "/", "**")

numbers = st.sampled_from(["0", "1", "2", "3", "0.5", "10", "1e-3", "64", "65", "-1", "pi", "E", "d"])


def _scalar(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One layer of operators and calls over ``inner``."""
    return st.one_of(
        st.tuples(inner, st.sampled_from(OPERATORS), inner).map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
        st.tuples(st.sampled_from(UNARY), inner).map(lambda p: f"{p[0]}({p[1]})"),
        st.tuples(st.sampled_from(BINARY_FUNCTIONS), inner, inner).map(lambda p: f"{p[0]}({p[1]}, {p[2]})"),
        inner.map(lambda e: f"-{e}"),
    )


#: A body inside a reduction: l is one eigenvalue there.
bodies = st.recursive(st.one_of(st.just("l"), numbers), _scalar, max_leaves=4)
#: A spectral atom: a reduction of a body, or l[k].
atoms = st.one_of(
    st.tuples(st.sampled_from(REDUCTIONS), bodies).map(lambda p: f"{p[0]}({p[1]})"),
    st.integers(-4, 4).map(lambda k: f"l[{k}]"),
)
#: A whole target in the eigenvalues.
targets = st.recursive(st.one_of(atoms, numbers), _scalar, max_leaves=5)

_matrices = st.recursive(st.just("H"), lambda m: st.one_of(
    st.tuples(m, st.sampled_from(["@", "+", "-"]), m).map(lambda p: f"({p[0]} {p[1]} {p[2]})"),
    st.tuples(m, st.sampled_from(["2", "3", "8", "9"])).map(lambda p: f"{p[0]}**{p[1]}"),
    m.map(lambda e: f"2*{e}"),
), max_leaves=4)
#: A target in the Hessian matrix (needs --d).
matrix_targets = st.one_of(
    st.tuples(st.sampled_from(["trace", "det"]), _matrices).map(lambda p: f"{p[0]}({p[1]})"),
    st.tuples(st.integers(0, 3), st.integers(0, 3)).map(lambda p: f"H[{p[0]}, {p[1]}]"),
)


@st.composite
def compile_argv(draw) -> list[str]:
    """``sharpc compile`` arguments: a target and any documented options, in and out of range."""
    target = draw(st.one_of(targets, matrix_targets))
    argv = ["compile", "--", target]
    if draw(st.booleans()):
        argv += ["--d", draw(st.sampled_from(["1", "2", "3", "4", "6", "0", "-2", "x", "1000000"]))]
    if draw(st.booleans()):
        argv += ["--bound", draw(st.sampled_from(["2", "0.5", "1e6", "1e300", "inf", "nan", "-1", "0"]))]
    if draw(st.booleans()):
        argv += ["--half-width", draw(st.sampled_from(["1", "0.01", "inf", "0", "-1", "1e7"]))]
    if draw(st.booleans()):
        argv += ["--strategy", draw(st.sampled_from(["table1", "mgf", "moments", "universal", "dirac",
                                                     "vandermonde", "power-roots", "nope"]))]
    if draw(st.booleans()):
        argv += ["--det-sampling", draw(st.sampled_from(["lebesgue", "hypercube", "cube"]))]
    argv += draw(st.sampled_from([[], ["--invariant", "scale"], ["--invariant", "shift"]]))
    argv += draw(st.sampled_from([[], ["--json"]]))
    argv += draw(st.sampled_from([["--no-verify"], ["--samples", "500"], ["--samples", "1"],
                                  ["--seed", "-1", "--samples", "500"], ["--seed", "7", "--samples", "500"]]))
    return argv
