"""The target parser: what it accepts, what it refuses, and that it never runs user text."""

from __future__ import annotations

import builtins
import math
import os
import time

import numpy as np
import pytest
import sympy as sp
import sympy.parsing.sympy_parser
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sharpc.errors import ParseError, SharpcError
from sharpc.parse import LANGUAGE_HELP, MAX_EXPONENT, parse
from sharpc.spectral import D, Eig, EMax, EMin, EProd, ESum, expand_spectrum, lam

# PARSE_EXAMPLES=10000 for a longer hunt; 200 keeps the file to a few seconds.
FUZZ = settings(
    max_examples=int(os.environ.get("PARSE_EXAMPLES", 200)), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

EXAMPLES = {
    "sum(l**2)": ESum(lam**2),
    "sum(l)/d": ESum(lam) / D,
    "prod(l)": EProd(lam),
    "prod(1 - l/10)": EProd(1 - lam / 10),
    "sum(l**3) - 2*sum(l)*sum(l**2)": ESum(lam**3) - 2 * ESum(lam) * ESum(lam**2),
    "sum(log(1 - l/10))": ESum(sp.log(1 - lam / 10)),
    "max(l)": EMax(lam),
    "mean(abs(l))": ESum(sp.Abs(lam)) / D,
    "min(l)": EMin(lam),
    "2*sum(l**2)": 2 * ESum(lam**2),
    "prod(1 - 0.1*l)": EProd(1 - sp.Rational(1, 10) * lam),
    "l[0]": Eig(0),
    "l[-1]": Eig(-1),
    "sum(l**2) + pi": ESum(lam**2) + sp.pi,
    "exp(sum(l))": sp.exp(ESum(lam)),
    "sqrt(sum(l**2))": sp.sqrt(ESum(lam**2)),
    "d": D,
    "sum(3)": 3 * D,
    "E + 0.25": sp.E + sp.Rational(1, 4),
    "sum(l**0.5)": ESum(sp.sqrt(lam)),
    "sum(l**-1)": ESum(1 / lam),
    "sum(maximum(l, 0)) + minimum(max(l), 1)": ESum(sp.Max(lam, 0)) + sp.Min(EMax(lam), 1),
    "sum(sin(l) + cos(l) + tanh(l) + sign(l))": ESum(sp.sin(lam) + sp.cos(lam) + sp.tanh(lam) + sp.sign(lam)),
    "  +sum(l)\t": ESum(lam),
    "(sum(l)\n + 1)": ESum(lam) + 1,
}


@pytest.mark.parametrize("text", EXAMPLES)
def test_examples(text):
    assert parse(text) == EXAMPLES[text]


def test_d_is_substituted_and_indices_checked():
    assert parse("sum(l)/d + prod(2)", d=3) == ESum(lam) / 3 + 8
    assert parse("l[-1] + l[2]", d=3) == 2 * Eig(2)
    for bad in ("l[3]", "l[-4]"):
        with pytest.raises(ParseError, match="out of range") as info:
            parse(bad, d=3)
        assert info.value.position == 2
    assert parse("d**2 + sum(1)", d=4) == 20
    with pytest.raises(ParseError, match="division by zero") as info:
        parse("1/(d - 3)", d=3)
    assert info.value.position == 3
    start = time.perf_counter()  # EProd(0.9 - l) = (9/10)**d * EProd(...): refused, not computed
    with pytest.raises(ParseError, match="number too large"):
        parse("prod(0.9 - l)", d=10**8)
    assert time.perf_counter() - start < 2.0  # generous for loaded 2-core CI machines; hangs take minutes
    for bad_d in (0, -1, 2.0, True, "3"):
        with pytest.raises(ParseError, match="d must be a positive integer"):
            parse("sum(l)", d=bad_d)


HOSTILE = [
    "__import__('os').system('echo hi')",
    "l.__class__",
    "().__class__.__bases__",
    "l**(9**9**9)",
    "sum(l**(9**9**9))",
    "9**9**9**9",
    "(2**60)**(2**60)",
    "((10**12)**64)**64",
    "exp(exp(exp(exp(10))))",
    "(lambda: 1)()",
    "open('x')",
    "l @ l",
    '"a"',
    "sum(l, start=1)",
    "sum(l*sum(l))",
    "l",
    "l + 1",
    "x" * 5000,
    "(" * 1000 + "1" + ")" * 1000,
    "(" * 900 + "1" + ")" * 900,
    "-" * 1000 + "1",
    "1/0",
    "0**-1",
    "log(0)",
    "sum((l + sin(l) + cos(l) + 1)**64)",
    "sum(l[0])",
    "l[0.5]",
    "1 if l else 2",
    "[l for l in l]",
    "f'{l}'",
    "True",
    "None",
    "1j",
    "1e999",
    "10**13 + 10000000000000",
    "sum(l)**sum(l)",
    "(-1)**0.5",
    "999999999999**(99999/100003)",  # SymPy would factor a 4-million-bit number
    "12**(972/997) * 12**(966/991)",
    "exp(972/997*log(12) + 966/991*log(12))",
    "((0.5**1.01*0.9)**1.01*0.9)**1.01*0.9",
    "(((2**-40*sum(l))**64)**64)**64",
    "exp",
    "",
    "1 +",
    "sum(l)\x00",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_input_is_refused_quickly(text):
    start = time.perf_counter()
    with pytest.raises(ParseError) as info:
        parse(text)
    assert time.perf_counter() - start < 2.0  # generous for loaded 2-core CI machines; hangs take minutes
    assert isinstance(info.value, SharpcError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "tanh(" * 45 + "1" + ")" * 45,
        "maximum(maximum(d**64 - d**63 + 3*d**7, d**62 - d**5), maximum(d**61 - 2*d**33, d**60 - d**59))",
        "sin(pi/120) + sqrt(sqrt(sqrt(6*sqrt(3)))) + exp(log(2)/3)",
        "sum(l)**0.1234567 + sum(l**0.1234567) + (2*sum(l))**(1/3)",
        "sum((l + 1)**64) + prod((1 - l/10)**7) + (10**12*sum(l))**64",
    ],
)
def test_expensive_but_valid_input_is_quick(text):
    start = time.perf_counter()
    assert isinstance(parse(text), sp.Expr)
    assert time.perf_counter() - start < 2.0  # generous for loaded 2-core CI machines; hangs take minutes


@pytest.mark.parametrize(
    "text, position, message",
    [
        ("sum(l) + foo", 9, "unknown name 'foo'; expected l, H, d, pi, E or a function"),
        ("sum(l) + l", 9, "l is a vector: reduce it with sum, prod, max, min or mean"),
        ("l.__class__", 1, "attribute access is not allowed"),
        ("sum(l, start=1)", 7, "keyword arguments are not allowed"),
        ("sum(l*sum(l))", 6, "reductions cannot be nested"),
        ("sum(l**(9**9**9))", 11, f"exponent too large (max {MAX_EXPONENT})"),
        ("2 + 1/0", 6, "division by zero"),
        ("2 @ 3", 0, "@ is not allowed"),
        ("(lambda: 1)()", 1, "lambda is not allowed"),
        ("sum(l) + (1", 9, "syntax error"),
        ("  foo", 2, "unknown name"),
        ("(1 +\n foo)", 6, "unknown name"),
        ("é + foo", 0, "unknown name 'é'"),
        ("sum('é', start=1)", 9, "keyword arguments are not allowed"),
    ],
)
def test_error_messages_and_positions(text, position, message):
    with pytest.raises(ParseError) as info:
        parse(text)
    assert info.value.position == position
    assert str(info.value).startswith(message)


def test_no_code_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("user text reached an evaluator")

    for target, name in [(builtins, "eval"), (builtins, "exec"), (sp, "sympify"),
                         (sp, "parse_expr"), (sympy.parsing.sympy_parser, "parse_expr")]:
        if hasattr(target, name):
            monkeypatch.setattr(target, name, refuse)
    for text in ("sum(l**2)", "prod(1 - 0.1*l)", "mean(abs(l)) + l[-1]", "exp(sum(l))*pi/2**0.5"):
        assert isinstance(parse(text), sp.Expr)


def test_language_help_mentions_every_construct():
    for word in ("sum", "prod", "max", "min", "mean", "l[k]", "maximum", "pi", "**"):
        assert word in LANGUAGE_HELP


# -- random text: ParseError or a result, nothing else, and fast --------------------------

TOKENS = ["l", "d", "pi", "E", "sum", "prod", "max", "min", "mean", "exp", "log", "sqrt", "abs",
          "sin", "cos", "tanh", "sign", "maximum", "minimum", "x", "__class__", "lambda", "9**9",
          "(", ")", "[", "]", ",", ".", "+", "-", "*", "/", "**", "@", "%", " ", "0", "1", "2",
          "9", "0.5", "1e3", "-1", "'", "=", ":", "\n"]
FUNCTION_NAMES = ["exp", "log", "sqrt", "abs", "sin", "cos", "tanh", "sign"]
RANDOM_TEXT = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.text(alphabet="ld()[]+-*/.,0123456789 episumxa_=:'", max_size=60),
    st.text(max_size=30),
)


@FUZZ
@given(RANDOM_TEXT, st.sampled_from([None, 1, 3]))
def test_random_text_parses_or_raises_parse_error(text, d):
    start = time.perf_counter()
    try:
        result = parse(text, d)
    except ParseError as error:
        assert error.position is None or 0 <= error.position <= len(text)
        assert "\n" not in str(error)
    else:
        assert isinstance(result, sp.Expr)
    assert time.perf_counter() - start < 2.0  # generous for loaded 2-core CI machines; hangs take minutes


HOSTILE_LEAVES = st.sampled_from(["0", "1", "12", "64", "0.37", "1/7", "(96/97)", "1e-20", "999999999989",
                                   "pi", "E", "d", "l", "l[0]", "sum(l)", "prod(l)"])
HOSTILE_TREES = st.recursive(
    HOSTILE_LEAVES,
    lambda inner: st.one_of(
        st.builds("({}{}{})".format, inner, st.sampled_from(["+", "-", "*", "/", "**"]), inner),
        st.builds("{}({})".format, st.sampled_from([*FUNCTION_NAMES, "sum", "prod", "max", "mean", "-"]), inner),
        st.builds("{}({}, {})".format, st.sampled_from(["maximum", "minimum"]), inner, inner),
    ),
    max_leaves=40,
)


@FUZZ
@given(HOSTILE_TREES, st.sampled_from([None, 3, 10**6]))
def test_random_expressions_parse_or_fail_quickly(text, d):
    start = time.perf_counter()
    try:
        assert isinstance(parse(text, d), sp.Expr)
    except ParseError:
        pass
    assert time.perf_counter() - start < 2.0  # generous for loaded 2-core CI machines; hangs take minutes, text


# -- random well-formed targets agree with an independent numpy evaluator ---------------

NUMBERS = st.sampled_from(["1", "2", "3", "0.5", "0.25", "1.5"])
FUNCTIONS = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin,
             "cos": np.cos, "tanh": np.tanh}
PAIRWISE = {"maximum": np.maximum, "minimum": np.minimum}
NP_REDUCTIONS = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min, "mean": np.mean}


def _grow(children):
    return st.one_of(
        st.tuples(st.just("op"), st.sampled_from("+-*"), children, children),
        st.tuples(st.just("div"), children, NUMBERS),  # only by non-zero literals
        st.tuples(st.just("neg"), children),
        st.tuples(st.just("fn"), st.sampled_from(sorted(FUNCTIONS)), children),
        st.tuples(st.just("fn2"), st.sampled_from(sorted(PAIRWISE)), children, children),
        st.tuples(st.just("pow"), children, st.integers(0, 3)),
    )


ATOMS = st.one_of(NUMBERS.map(lambda n: ("num", n)), st.sampled_from([("d",), ("pi",), ("E",)]))
ELEMENTWISE = st.recursive(st.one_of(st.just(("l",)), ATOMS), _grow, max_leaves=6)
SCALAR = st.recursive(
    st.one_of(
        ATOMS,
        st.integers(-3, 2).map(lambda k: ("eig", k)),
        st.tuples(st.just("reduce"), st.sampled_from(sorted(NP_REDUCTIONS)), ELEMENTWISE),
    ),
    _grow,
    max_leaves=5,
)


def render(tree) -> str:
    kind, *rest = tree
    if kind == "num":
        return rest[0]
    if kind in ("l", "d", "pi", "E"):
        return kind
    if kind == "eig":
        return f"l[{rest[0]}]"
    if kind == "op":
        return f"({render(rest[1])} {rest[0]} {render(rest[2])})"
    if kind == "div":
        return f"({render(rest[0])} / {rest[1]})"
    if kind == "neg":
        return f"(-{render(rest[0])})"
    if kind in ("fn", "reduce"):
        return f"{rest[0]}({render(rest[1])})"
    if kind == "fn2":
        return f"{rest[0]}({render(rest[1])}, {render(rest[2])})"
    return f"({render(rest[0])})**{rest[1]}"  # pow


def reference(tree, eigenvalues: np.ndarray, sizes: list[float]):
    """Evaluate ``tree`` with numpy (``l`` is the whole vector); ``sizes`` collects every
    intermediate magnitude, inf where floats cannot be trusted."""
    kind, *rest = tree
    sub = [reference(arg, eigenvalues, sizes) if isinstance(arg, tuple) else arg for arg in rest]
    if kind == "num":
        value = float(rest[0])
    elif kind == "l":
        value = eigenvalues
    elif kind == "d":
        value = float(len(eigenvalues))
    elif kind == "pi":
        value = math.pi
    elif kind == "E":
        value = math.e
    elif kind == "eig":
        value = np.sort(eigenvalues)[::-1][rest[0]]
    elif kind == "op":
        value = {"+": np.add, "-": np.subtract, "*": np.multiply}[rest[0]](sub[1], sub[2])
    elif kind == "div":
        value = sub[0] / float(rest[1])
    elif kind == "neg":
        value = -sub[0]
    elif kind == "fn":
        if rest[0] in ("sqrt", "log") and np.min(np.abs(sub[1])) < 1e-6:
            sizes.append(math.inf)  # near a singularity floats and exact values part ways
        value = FUNCTIONS[rest[0]](sub[1])
    elif kind == "fn2":
        value = PAIRWISE[rest[0]](sub[1], sub[2])
    elif kind == "pow":
        value = np.power(sub[0], float(rest[1]))
    else:  # reduce
        value = NP_REDUCTIONS[rest[0]](np.broadcast_to(sub[1], eigenvalues.shape))
    sizes.append(float(np.max(np.abs(value))))
    return value


def pairs_with_eig(tree) -> bool:
    """maximum/minimum over l[k]: refused until spectral.Eig stops claiming ``is_number``."""
    if tree[0] == "fn2" and "'eig'" in repr(tree[2:]):
        return True
    return any(pairs_with_eig(arg) for arg in tree[1:] if isinstance(arg, tuple))


def test_maximum_of_sorted_eigenvalue_is_refused_cleanly():
    with pytest.raises(ParseError, match="maximum of l\\[k\\] is not supported") as info:
        parse("1 + maximum(l[0], 1)")
    assert info.value.position == 4


def evaluate(expr: sp.Expr, eigenvalues: list[sp.Rational]) -> complex:
    """The parsed target at a concrete spectrum, through sharpc.spectral."""
    ordered = sorted(eigenvalues, reverse=True)
    explicit = expand_spectrum(expr, eigenvalues)
    explicit = explicit.xreplace({eig: ordered[int(eig.args[0])] for eig in explicit.atoms(Eig)})
    return complex(sp.N(explicit, 30))


@FUZZ
@given(SCALAR, st.lists(st.sampled_from([-2, -1.5, -0.5, 0.25, 0.5, 1, 2.5]), min_size=3, max_size=3))
def test_random_targets_match_numpy(tree, spectrum):
    assume(not pairs_with_eig(tree))
    text = render(tree)
    sizes: list[float] = []
    with np.errstate(all="ignore"):
        expected = float(reference(tree, np.array(spectrum, dtype=float), sizes))
    assume(all(math.isfinite(size) and size < 1e100 for size in sizes))
    eigenvalues = [sp.Rational(str(value)) for value in spectrum]
    for d in (None, 3):
        got = evaluate(parse(text, d), eigenvalues)
        tolerance = 1e-9 * (1 + max(sizes))
        assert abs(got.imag) <= tolerance, text
        assert abs(got.real - expected) <= tolerance, (text, got, expected)
