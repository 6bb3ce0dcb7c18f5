"""Read a user's sharpness target into SymPy without running any of it.

The text is a Python *expression*, read by ``ast.parse`` and rebuilt node by node
by a whitelist visitor out of :mod:`sharpc.spectral` objects. Nothing in it is
ever evaluated as code: ``sympify``/``parse_expr`` call ``eval``, so they never
see user text. Sizes are bounded before anything is built, because SymPy happily
spends hours on ``l**(9**9**9)`` or on expanding a reduction's body.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings

import sympy as sp
from sympy.polys.matrices import DomainMatrix

from .errors import ParseError
from .limits import MAX_BITS, expanded_terms, leibniz_terms, radicals, too_large_at
from .spectral import D, Eig, EMax, EMin, EProd, ESum, HEntry, hessian_matrix, lam, reductions, substitute_d

MAX_LENGTH = 2000  #: characters of target text
MAX_NODES = 500  #: expression nodes in the syntax tree
MAX_DEPTH = 50  #: nesting of expression nodes
MAX_EXPONENT = 64  #: largest |exponent| in ``a**b``
MAX_LITERAL = 10**12  #: largest |number| written in the text
MAX_MAGNITUDE = 10**300  #: largest |constant| built from literals
MAX_TERMS = 500  #: estimated terms after expanding all reduction bodies
MAX_MATRIX_D = 6  #: largest d for matrix operations on H (det(H) has d! terms)
MAX_MATRIX_POWER = 8  #: largest k in H**k
#: Estimated term products in all matrix operations of one target (det(H**2) at d = 5 would take minutes).
MAX_MATRIX_WORK = 20_000
#: SymPy simplifies c**(p/q), for a number c, through numbers of about q*bits(c) bits that
#: it then factors (12**(99999/100003) takes minutes); this bounds q*bits(c).
MAX_RADICAL = 1024

LANGUAGE_HELP = """\
A target is an expression in the Hessian eigenvalues l = (l_1, ..., l_d), e.g.
  sum(l**2)    prod(1 - l/10)    max(l)    mean(abs(l))    sum(l**3) - 2*sum(l)*sum(l**2)
Reductions (not nested): sum, prod, max, min, mean; inside one, l is a single eigenvalue.
l[k] is the k-th largest eigenvalue (l[-1] the smallest); d is the number of eigenvalues.
Functions: exp log sqrt abs sin cos tanh sign, maximum(a, b), minimum(a, b); constants pi, E.
Operators: + - * / ** (exponents are constants with |value| <= 64).
With a concrete d, H is the d x d Hessian: H[i, j], trace(M), det(M), M @ N, M**k
(matrix operations need d <= 6); a target uses l or H, not both.
"""

_REDUCTIONS = {"sum": ESum, "prod": EProd, "max": EMax, "min": EMin, "mean": ESum}
#: name -> (SymPy function, number of arguments)
_FUNCTIONS = {
    "exp": (sp.exp, 1), "log": (sp.log, 1), "sqrt": (sp.sqrt, 1), "abs": (sp.Abs, 1),
    "sin": (sp.sin, 1), "cos": (sp.cos, 1), "tanh": (sp.tanh, 1), "sign": (sp.sign, 1),
    "maximum": (sp.Max, 2), "minimum": (sp.Min, 2),
}
_CONSTANTS = {"pi": sp.pi, "E": sp.E}
_MATRIX_FUNCTIONS = ("trace", "det")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
#: Constants that can outgrow (or leave the reals from) their arguments; others are not re-checked.
_GROWING = (sp.Rational, sp.Add, sp.Mul, sp.Pow, sp.exp, sp.log, type(sp.I))
_UNDEFINED = (sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity)
_VECTOR = "l is a vector: reduce it with sum, prod, max, min or mean"
_UNKNOWN = "expected l, H, d, pi, E or a function ({})".format(
    ", ".join([*_REDUCTIONS, *_FUNCTIONS, *_MATRIX_FUNCTIONS]))
#: What to call the constructs the language leaves out, in error messages.
_CONSTRUCTS = {
    ast.Attribute: "attribute access", ast.Lambda: "lambda", ast.Compare: "comparison",
    ast.BoolOp: "and/or", ast.IfExp: "if/else", ast.NamedExpr: "assignment (:=)",
    ast.ListComp: "a comprehension", ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension", ast.JoinedStr: "an f-string", ast.Tuple: "a tuple",
    ast.List: "a list", ast.Set: "a set", ast.Dict: "a dict", ast.Starred: "unpacking (*)",
    ast.Slice: "slicing", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.MatMult: "@", ast.Mod: "%", ast.FloorDiv: "//", ast.LShift: "<<", ast.RShift: ">>",
    ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&", ast.Invert: "~", ast.Not: "not",
}


def parse(text: str, d: int | None = None) -> sp.Expr:
    """The target ``text`` as a SymPy expression built from :mod:`sharpc.spectral`.

    ``d``, when given, replaces the symbol ``D`` and bounds the indices of ``l[k]``
    (negative ones are normalized to ``d + k``). Every failure, for any input, is a
    :class:`ParseError` with a one-line message and, when known, a 0-based position;
    the MAX_* limits above keep every call fast.
    """
    try:
        return _parse(text, d)
    except ParseError:
        raise
    except (RecursionError, MemoryError):
        raise ParseError("target is too deeply nested or too large", _as_text(text)) from None
    except Exception as exc:  # noqa: BLE001 - the promise is "only ParseError escapes"
        raise ParseError(f"could not parse: {_one_line(exc)}", _as_text(text)) from exc


def _parse(text: str, d: int | None) -> sp.Expr:
    if not isinstance(text, str):
        raise ParseError(f"target must be a string, not {type(text).__name__}")
    if d is not None:
        if isinstance(d, bool) or not hasattr(type(d), "__index__") or operator.index(d) < 1:
            raise ParseError(f"d must be a positive integer, got {d!r}")
        d = operator.index(d)
    if len(text) > MAX_LENGTH:
        raise ParseError(f"target is too long ({len(text)} characters, max {MAX_LENGTH})")
    source = text.lstrip(" \t\f\r\n")  # ast rejects leading indentation; eval() would not
    if not source.strip():
        raise ParseError("target is empty", text, 0)
    builder = _Builder(text, len(text) - len(source), d)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escapes in string literals
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise builder.error(f"syntax error: {exc.msg}", exc.lineno, exc.offset, one_based=True) from None
    builder.check_size(tree)
    value = builder.visit(tree)
    if isinstance(value, sp.MatrixBase):
        raise ParseError("the target is a matrix: reduce H with trace(...), det(...) or an entry H[i, j]", text)
    if value.has(HEntry) and (reductions(value) or value.has(Eig)):
        raise ParseError("a target uses either the eigenvalues l or the matrix H, not both", text)
    return value


class _Builder(ast.NodeVisitor):
    """Turns a syntax tree into SymPy, one whitelisted node type per method."""

    def __init__(self, text: str, lead: int, d: int | None):
        self.text, self.lead, self.d = text, lead, d
        self.source = text[lead:]
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", self.source)]
        self.in_reduction = False
        self.terms_left = MAX_TERMS
        self.matrix_work_left = MAX_MATRIX_WORK

    # -- errors and limits ---------------------------------------------------------

    def error(self, message: str, line: int | None, col: int | None, one_based: bool = False) -> ParseError:
        """A ParseError at (line, col), converted to an offset into the whole text."""
        position = None
        if line is not None and col is not None and 1 <= line <= len(self.line_starts):
            start = self.line_starts[line - 1]
            if one_based:  # SyntaxError: 1-based characters (0 when unknown)
                chars = col - 1 if col > 0 else len(self.source) - start
            else:  # ast nodes: 0-based UTF-8 bytes
                chars = len(self.source[start:].encode()[:col].decode(errors="ignore"))
            position = min(max(self.lead + start + chars, 0), len(self.text))
        return ParseError(message, self.text, position)

    def fail(self, message: str, node: ast.AST) -> ParseError:
        return self.error(message, getattr(node, "lineno", None), getattr(node, "col_offset", None))

    def check_size(self, tree: ast.AST) -> None:
        """Node count and depth, measured without recursion so deep trees cannot crash it."""
        count, stack = 0, [(tree, 0)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, ast.expr):
                count, depth = count + 1, depth + 1
                if count > MAX_NODES:
                    raise ParseError(f"target is too large (over {MAX_NODES} nodes)", self.text)
                if depth > MAX_DEPTH:
                    raise self.fail(f"target is nested too deeply (over {MAX_DEPTH} levels)", node)
            stack.extend((child, depth) for child in ast.iter_child_nodes(node))

    def visit(self, node: ast.AST) -> sp.Expr:
        """Build ``node``, then refuse undefined or huge constants at the node that made them."""
        value = super().visit(node)
        if isinstance(value, sp.MatrixBase):  # entries are polynomials in H[i, j]: nothing to bound
            return value
        if value.has(*_UNDEFINED):
            raise self.fail("division by zero or undefined value", node)
        problem = "number too large" if radicals(value)[1] > MAX_BITS else None
        if not problem and isinstance(value, _GROWING) and value.is_number and not value.has(Eig):
            problem = _constant_problem(value)
        if problem:
            raise self.fail(problem, node)
        return value

    def generic_visit(self, node: ast.AST) -> sp.Expr:
        what = _CONSTRUCTS.get(type(node), type(node).__name__)
        if isinstance(node, ast.Attribute):  # point at the dot, not at what precedes it
            raise self.error(f"{what} is not allowed", node.value.end_lineno, node.value.end_col_offset)
        raise self.fail(f"{what} is not allowed", node)

    # -- leaves --------------------------------------------------------------------

    def visit_Expression(self, node: ast.Expression) -> sp.Expr:
        return self.visit(node.body)

    def visit_Constant(self, node: ast.Constant) -> sp.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kinds = {str: "strings are", bytes: "strings are", complex: "complex numbers are"}
            raise self.fail(f"{kinds.get(type(value), repr(value) + ' is')} not allowed", node)
        if not abs(value) <= MAX_LITERAL:  # also catches inf
            raise self.fail(f"number too large (max {MAX_LITERAL:.0e})", node)
        # repr of a float is its shortest decimal form: 0.1 -> 1/10 exactly.
        return sp.Integer(value) if isinstance(value, int) else sp.Rational(repr(value))

    def visit_Name(self, node: ast.Name) -> sp.Expr:
        name = node.id
        if name == "l":
            if not self.in_reduction:
                raise self.fail(_VECTOR, node)
            return lam
        if name == "H":
            self._need_matrix_d(node, "matrix operations on H")
            return hessian_matrix(self.d)
        if name == "d":  # bound now when known, so constant checks see its value
            return D if self.d is None else sp.Integer(self.d)
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        if name in _REDUCTIONS or name in _FUNCTIONS or name in _MATRIX_FUNCTIONS:
            raise self.fail(f"{name} is a function: call it as {name}(...)", node)
        raise self.fail(f"unknown name {name!r}; {_UNKNOWN}", node)

    def visit_Subscript(self, node: ast.Subscript) -> sp.Expr:
        """``l[k]``: the k-th largest eigenvalue, for an integer literal k; ``H[i, j]``: an entry."""
        if isinstance(node.value, ast.Name) and node.value.id == "H":
            return self._entry(node)
        if not (isinstance(node.value, ast.Name) and node.value.id == "l"):
            raise self.fail("indexing is only allowed as l[k] or H[i, j]", node)
        if self.in_reduction:
            raise self.fail("l[k] cannot be used inside a reduction (there l is one eigenvalue)", node)
        index = _int_literal(node.slice)
        if index is None:
            raise self.fail("the index in l[k] must be an integer literal", node.slice)
        if self.d is not None:
            if not -self.d <= index < self.d:
                raise self.fail(f"index {index} is out of range for d = {self.d}", node.slice)
            index %= self.d
        elif abs(index) > MAX_LITERAL:
            raise self.fail(f"number too large (max {MAX_LITERAL:.0e})", node.slice)
        return Eig(index)

    def _entry(self, node: ast.Subscript) -> sp.Expr:
        """``H[i, j]`` with integer literals 0 <= i, j < d; built without the whole matrix."""
        if self.d is None:
            raise self.fail("H needs a concrete d (--d N): it is the d x d Hessian", node)
        if self.in_reduction:
            raise self.fail("H[i, j] cannot be used inside a reduction", node)
        indices = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        values = [_int_literal(index) for index in indices]
        if len(values) != 2 or None in values:
            raise self.fail("an entry of H is written H[i, j] with integer literals i and j", node.slice)
        for index, value in zip(indices, values):
            if not 0 <= value < self.d:
                raise self.fail(f"index {value} is out of range for d = {self.d}", index)
        return HEntry(*values)

    def _need_matrix_d(self, node: ast.AST, what: str) -> None:
        if self.d is None:
            raise self.fail("H needs a concrete d (--d N): it is the d x d Hessian", node)
        if self.d > MAX_MATRIX_D:
            raise self.fail(f"{what} need d <= {MAX_MATRIX_D} (got {self.d}); entries H[i, j] work for any d", node)
        if self.in_reduction:
            raise self.fail("H cannot be used inside a reduction", node)

    def _check_matrix_work(self, node: ast.Call) -> None:
        """Refuse trace(...)/det(...) before building it when its estimated work is over MAX_MATRIX_WORK."""
        terms, work = _matrix_estimate(node.args[0], self.d)
        work += self.d * terms if node.func.id == "trace" else leibniz_terms(self.d, terms, MAX_MATRIX_WORK)
        self.matrix_work_left -= work
        if self.matrix_work_left < 0:
            raise self.fail(f"the matrix operations would expand to over {MAX_MATRIX_WORK} term products (the "
                            "limit that keeps compiling under a few seconds); use a smaller d or power", node)

    def _matrix_function(self, name: str, matrix: sp.MatrixBase) -> sp.Expr:
        """trace or det of a matrix of polynomials in H's entries, expanded; det in a polynomial ring."""
        if name == "trace":
            return sp.expand(matrix.trace())
        ring_matrix = DomainMatrix.from_Matrix(matrix)
        return sp.expand(ring_matrix.domain.to_sympy(ring_matrix.det()))

    def _matrix_binop(self, node: ast.BinOp, left, right) -> sp.Expr:
        """+, -, @ between matrices; * and / by a scalar; M**k for a small positive integer k."""
        both = isinstance(left, sp.MatrixBase) and isinstance(right, sp.MatrixBase)
        if isinstance(node.op, ast.MatMult) and both:
            return _ring_product(left, right)
        if isinstance(node.op, (ast.Add, ast.Sub)) and both:
            return left + right if isinstance(node.op, ast.Add) else left - right
        if isinstance(node.op, ast.Mult) and not both:
            return left * right
        if isinstance(node.op, ast.Div) and isinstance(right, sp.Expr) and not _is_zero(right):
            return left / right
        if isinstance(node.op, ast.Pow) and isinstance(left, sp.MatrixBase) and not both:
            if not (right.is_Integer and 0 < right <= MAX_MATRIX_POWER):
                raise self.fail(f"a matrix power needs an integer exponent 1..{MAX_MATRIX_POWER}", node.right)
            return _ring_product(*[left] * int(right))
        hint = "; use @ for matrix products" if isinstance(node.op, ast.Mult) else ""
        raise self.fail(f"this operation does not combine a matrix and {'a matrix' if both else 'a scalar'}{hint}",
                        node)

    # -- operators -----------------------------------------------------------------

    def visit_UnaryOp(self, node: ast.UnaryOp) -> sp.Expr:
        if isinstance(node.op, ast.USub):
            return -self.visit(node.operand)
        if isinstance(node.op, ast.UAdd):
            return self.visit(node.operand)
        raise self.fail(f"{_CONSTRUCTS.get(type(node.op), 'this operator')} is not allowed", node)

    def visit_BinOp(self, node: ast.BinOp) -> sp.Expr:
        if _mentions_matrix(node):
            return self._matrix_binop(node, self.visit(node.left), self.visit(node.right))
        if isinstance(node.op, ast.Pow):
            return self._power(node)
        if not isinstance(node.op, (*_BINARY, ast.Div)):
            raise self.fail(f"{_CONSTRUCTS.get(type(node.op), 'this operator')} is not allowed", node)
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, (ast.Mult, ast.Div)) and radicals(left)[0] > 1 < radicals(right)[0]:
            self._check_radicals(node, 1, left, right)  # c**(p/q) * c**(r/s) = c**((ps+qr)/qs)
        if isinstance(node.op, ast.Div):
            if _is_zero(right):
                raise self.fail("division by zero", node.right)
            return left / right
        return _BINARY[type(node.op)](left, right)

    def _power(self, node: ast.BinOp) -> sp.Expr:
        """``a**b`` with a constant, real, bounded ``b``, checked before SymPy computes it."""
        base, exponent = self.visit(node.left), self.visit(node.right)
        if not exponent.is_number or exponent.has(Eig):
            raise self.fail("exponent must be a constant (no l, d or l[k])", node.right)
        approx = _approximate(exponent)
        if approx is None or approx.imag != 0:
            raise self.fail("exponent must be a real number", node.right)
        if not abs(approx.real) <= MAX_EXPONENT:
            raise self.fail(f"exponent too large (max {MAX_EXPONENT})", node.right)
        if approx.real < 0 and _is_zero(base):
            raise self.fail("division by zero", node)
        if exponent.is_Rational:  # (c*x)**n = c**n * x**n, computed exactly
            if radicals(base)[1] * abs(exponent) > MAX_BITS:
                raise self.fail("number too large", node)
            self._check_radicals(node, exponent.q, base)
        return base**exponent

    def _check_radicals(self, node: ast.AST, root: int, *values: sp.Expr) -> None:
        """Refuse, before SymPy starts it, the exact work of a new root of a number (MAX_RADICAL)."""
        sizes = [radicals(value) for value in values]
        root *= math.prod(size[0] for size in sizes)
        if root > 1 and root * max(size[1] for size in sizes) > MAX_RADICAL:
            raise self.fail("fractional power of a constant is too complex (use simpler exponents)", node)

    # -- calls ---------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            self.visit(node.func)  # names the forbidden construct, e.g. attribute access
            raise self.fail("only the listed functions can be called", node)
        name = node.func.id
        if name in _MATRIX_FUNCTIONS:
            if node.keywords or len(node.args) != 1:
                raise self.fail(f"{name} takes exactly 1 argument, a matrix", node)
            if self.d is not None and self.d <= MAX_MATRIX_D and _mentions_matrix(node.args[0]):
                self._check_matrix_work(node)
            matrix = self.visit(node.args[0])
            if not isinstance(matrix, sp.MatrixBase):
                raise self.fail(f"{name} needs a matrix such as H or H @ H", node.args[0])
            return self._matrix_function(name, matrix)
        if name not in _REDUCTIONS and name not in _FUNCTIONS:
            if name in ("l", "d", *_CONSTANTS):
                raise self.fail(f"{name} is not a function", node.func)
            raise self.fail(f"unknown name {name!r}; {_UNKNOWN}", node.func)
        if node.keywords:
            raise self.fail("keyword arguments are not allowed", node.keywords[0])
        arity = _FUNCTIONS[name][1] if name in _FUNCTIONS else 1
        if len(node.args) != arity:
            plural = "s" if arity > 1 else ""
            hint = f"; for two values use {name}imum(a, b)" if name in ("max", "min") else ""
            raise self.fail(f"{name} takes exactly {arity} argument{plural} ({len(node.args)} given){hint}", node)
        if name in _REDUCTIONS:
            return self._reduce(name, node)
        function, args = _FUNCTIONS[name][0], [self.visit(arg) for arg in node.args]
        if function is sp.sqrt:
            self._check_radicals(node, 2, args[0])
        if function is sp.exp and args[0].has(sp.log):  # exp(r*log(c)) becomes c**r
            self._check_radicals(node, max(number.q for number in args[0].atoms(sp.Rational) | {sp.S.One}), args[0])
        if function in (sp.Max, sp.Min):
            if any(arg.has(Eig) for arg in args):  # sp.Max/Min reject Eig(k): it claims is_number
                raise self.fail(f"{name} of l[k] is not supported yet", node)
            # Simplifying symbolic arguments runs pairwise assumption queries (seconds).
            return function(*args, evaluate=all(arg.is_number for arg in args))
        return function(*args)

    def _reduce(self, name: str, node: ast.Call) -> sp.Expr:
        """A reduction: its argument is built elementwise, in the generic eigenvalue."""
        if self.in_reduction:
            raise self.fail("reductions cannot be nested", node)
        self.in_reduction = True
        try:
            body = self.visit(node.args[0])
        finally:
            self.in_reduction = False
        # ESum/EProd expand their body on construction; bound that work first.
        self.terms_left -= expanded_terms(body, self.terms_left)
        if self.terms_left < 0:
            raise self.fail(f"target is too complex (expands to over {MAX_TERMS} terms)", node)
        value = _REDUCTIONS[name](body)
        if name == "mean":
            value = value / D
        if self.d is not None:  # ESum(c) = c*D, EProd(c) = c**D: c**D may be huge at this d
            if too_large_at(value, self.d) is not None:
                raise self.fail(f"number too large (a constant to the power d = {self.d})", node)
            value = substitute_d(value, self.d)
        return value


def _mentions_matrix(node: ast.expr) -> bool:
    """Whether ``node`` is a matrix expression: it has a bare H (not an entry) outside trace/det."""
    stack = [node]
    while stack:
        child = stack.pop()
        if isinstance(child, ast.Name) and child.id == "H":
            return True
        if isinstance(child, ast.Subscript) or (isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                                                 and child.func.id in _MATRIX_FUNCTIONS):
            continue  # H[i, j], trace(...), det(...) are scalars
        if isinstance(child, (ast.BinOp, ast.UnaryOp)):
            stack.extend(ast.iter_child_nodes(child))
    return False


def _ring_product(*matrices: sp.MatrixBase) -> sp.MatrixBase:
    """The product of matrices of polynomials, multiplied in a polynomial ring (SymPy's expand is ~20x slower)."""
    product = DomainMatrix.from_Matrix(matrices[0])
    for matrix in matrices[1:]:
        left, right = product.unify(DomainMatrix.from_Matrix(matrix))
        product = left.matmul(right)
    return product.to_Matrix()


def _matrix_estimate(node: ast.expr, d: int) -> tuple[int, int]:
    """(terms per entry, term products to build it) for a matrix expression, from its syntax alone.

    Upper bounds before like terms merge: an entry of A @ B has at most d * tA * tB terms, and
    building A @ B takes d**3 * tA * tB products. Scalar factors count as one term.
    """
    cap = MAX_MATRIX_WORK + 1
    if isinstance(node, ast.UnaryOp):
        return _matrix_estimate(node.operand, d)
    if not isinstance(node, ast.BinOp):
        return 1, 0  # H itself, or a scalar factor
    left, right = _matrix_estimate(node.left, d), _matrix_estimate(node.right, d)
    if isinstance(node.op, ast.MatMult):
        terms = min(d * left[0] * right[0], cap)
        return terms, min(left[1] + right[1] + d**3 * left[0] * right[0], cap)
    if isinstance(node.op, (ast.Add, ast.Sub)):
        return min(left[0] + right[0], cap), min(left[1] + right[1], cap)
    if isinstance(node.op, ast.Pow):
        exponent = _int_value(node.right)
        if exponent is None:  # not a small integer expression: assume the worst
            return cap, cap
        terms, work = left
        for _ in range(max(exponent, 1) - 1):
            work = min(work + d**3 * terms * left[0], cap)
            terms = min(d * terms * left[0], cap)
        return terms, work
    return max(left[0], right[0]), min(left[1] + right[1], cap)  # a scalar times a matrix


def _int_value(node: ast.expr, limit: int = 10**6) -> int | None:
    """An integer literal or an arithmetic of them (``3**1**3``), when its value stays within
    ``limit``; else None. Exponents such as ``H**(2**3)`` must count as what they are."""
    literal = _int_literal(node)
    if literal is not None:
        return literal if abs(literal) <= limit else None
    if not isinstance(node, ast.BinOp) or not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Pow)):
        return None
    left, right = _int_value(node.left, limit), _int_value(node.right, limit)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Pow):
        if not 0 <= right <= 64 or right * abs(left).bit_length() > 64:  # keep the power itself small
            return None
        value = left**right
    else:
        value = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
    return value if abs(value) <= limit else None


def _int_literal(node: ast.expr) -> int | None:
    """The value of ``k``, ``-k`` or ``+k`` for an int literal k, else None."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign, node = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sign * node.value
    return None


def _is_zero(value: sp.Expr) -> bool:
    """Whether a constant is 0 (also when SymPy keeps it unsimplified, as cos(1)**2 + sin(1)**2 - 1).

    Only values that evaluate to nearly 0 get the exact (slower) test; an undecidable one counts as 0.
    """
    if value == 0:
        return True
    if not value.is_number or value.has(Eig):
        return False
    approx = _approximate(value)
    if approx is None or abs(approx) > 1e-12:
        return False
    return value.equals(0) is not False


def _approximate(value: sp.Expr) -> complex | None:
    """A numeric value for a constant built from bounded parts (so evalf stays cheap)."""
    try:
        return complex(value.evalf(15))
    except OverflowError:
        return complex(math.inf)
    except (TypeError, ValueError):
        return None


def _constant_problem(value: sp.Expr) -> str | None:
    """Why a constant is refused: beyond MAX_MAGNITUDE, or not real."""
    if value.is_Rational:
        return "number too large" if abs(value.p) > MAX_MAGNITUDE * value.q else None
    approx = _approximate(value)
    if approx is None:
        return None
    if not abs(approx) <= MAX_MAGNITUDE:
        return "number too large"
    return "value is not a real number" if approx.imag != 0 else None


def _as_text(text: object) -> str:
    return text if isinstance(text, str) else ""


def _one_line(exc: BaseException) -> str:
    try:
        message = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - str() of some exceptions fails (e.g. huge ints)
        message = type(exc).__name__
    return " ".join(message.split())[:200]
