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


def _option(draw, name: str, good: list[str], bad: list[str]) -> list[str]:
    """``[name, value]`` with a documented value 9 times in 10, else an out-of-range or malformed one."""
    values = bad if draw(st.integers(1, 10)) == 5 else good  # a middle value: Hypothesis favours the ends
    return [name, draw(st.sampled_from(values))]


@st.composite
def compile_argv(draw, emit_path: str | None = None) -> list[str]:
    """``sharpc compile`` arguments: a target and any documented options, mostly in range.

    With ``emit_path``, some command lines also write a module there (``--emit --force --name``).
    """
    matrix = draw(st.booleans())
    target = draw(matrix_targets if matrix else targets)
    argv = ["compile"]
    if matrix or draw(st.booleans()):
        argv += _option(draw, "--d", ["1", "2", "3", "4"] + ["6"] * (not matrix), ["0", "-2", "x", "10000000000000"])
        if draw(st.booleans()):
            argv += _option(draw, "--bound", ["2", "0.5", "1e6", "1e-6"], ["1e300", "inf", "nan", "-1", "0"])
    if draw(st.integers(1, 5)) == 3:
        argv += _option(draw, "--half-width", ["1", "0.01", "1e6"], ["inf", "0", "-1", "1e7"])
    if draw(st.integers(1, 5)) == 3:
        argv += _option(draw, "--lower-bound", ["1", "0.25", "1e6"], ["inf", "0", "-1", "1e7"])
    if draw(st.integers(1, 5)) == 3:
        argv += _option(draw, "--strategy", ["table1", "mgf", "moments", "universal", "dirac", "vandermonde",
                                             "power-roots"], ["nope"])
    if draw(st.integers(1, 5)) == 3:
        argv += _option(draw, "--det-sampling", ["lebesgue", "hypercube"], ["cube"])
    if draw(st.integers(1, 5)) == 3:
        argv += _option(draw, "--invariant", ["scale"], ["shift"])
    argv += draw(st.sampled_from([[], ["--json"]]))
    argv += draw(st.sampled_from([["--no-verify"], []]))
    argv += _option(draw, "--samples", ["500", "2000"], ["1", "1e11", "100000000000"])
    if draw(st.booleans()):
        argv += _option(draw, "--seed", ["0", "7", str(2**63 - 1)], ["-1", "1.5"])
    if draw(st.integers(1, 5)) == 3:
        argv += _option(draw, "--sampler", ["numpy", "torch"], ["jax"])
    if emit_path is not None and draw(st.booleans()):
        argv += ["--emit", emit_path, "--force", *_option(draw, "--name", ["SharpSAM", "Frob2"],
                                                          ["super", "float", "ｔｏｒｃｈ", "1x", ""])]
    return [*argv, "--", target]  # after --, a target may start with '-'
