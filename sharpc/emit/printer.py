"""SymPy -> torch source: a small printer subclass plus a mapping table.

SymPy 1.14's own ``TorchPrinter`` prints ``Max(t, 0)`` as ``torch.max(t, 0)`` (a
reduction over dim 0), has no printer for ``Sum``/``Product`` and turns ``Piecewise``
into a ``torch.where`` whose untaken branch still poisons gradients with NaN. This
printer fixes those three and refuses every name it does not expect: only whitelisted
symbols (``t``, ``t1``..``tm``, ``d``, ``n``, ``rho``, ``P<a>_<k>``) ever reach generated code.

Conventions of the generated code: every symbol is a tensor (``d`` too), numbers stay
Python numbers (so they adopt the tensors' dtype), and the only globals are ``torch`` and
``polynomial_root`` from :mod:`sharpc.runtime` (the universality strategy's ``RootEig``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import sympy as sp
from sympy.printing.pycode import AbstractPythonCodePrinter

from ..errors import OptimizerError

#: Names a generated function may use for its variables.
SYMBOL_NAME = re.compile(r"t|t[1-9][0-9]*|d|n|rho|P[0-9]+_[1-9][0-9]*")

_TORCH_FUNCTIONS = {
    "Abs": "torch.abs", "sign": "torch.sign", "exp": "torch.exp", "log": "torch.log",
    "Sqrt": "torch.sqrt", "expm1": "torch.expm1", "log1p": "torch.log1p",
    "sin": "torch.sin", "cos": "torch.cos", "tan": "torch.tan",
    "asin": "torch.asin", "acos": "torch.acos", "atan": "torch.atan", "atan2": "torch.atan2",
    "sinh": "torch.sinh", "cosh": "torch.cosh", "tanh": "torch.tanh",
    "asinh": "torch.asinh", "acosh": "torch.acosh", "atanh": "torch.atanh",
    "erf": "torch.erf", "erfc": "torch.erfc", "loggamma": "torch.lgamma",
    "floor": "torch.floor", "ceiling": "torch.ceil",
}


class PrinterError(OptimizerError):
    """An expression the torch printer will not turn into code."""


class TorchPrinter(AbstractPythonCodePrinter):
    """Print a SymPy expression as a torch expression over tensor-valued symbols."""

    printmethod = "_sharpc_torch"
    _kf = _TORCH_FUNCTIONS
    _kc: dict[str, str] = {}
    _default_settings = dict(AbstractPythonCodePrinter._default_settings, strict=True)

    def __init__(self, allowed: Iterable[str]):
        super().__init__()
        self.allowed = frozenset(allowed)
        # Conditions of the Piecewise branches being printed (see _print_Piecewise).
        self._guards: list[str] = []

    def doprint(self, expr, assign_to=None):
        return super().doprint(sp.sympify(expr), assign_to)

    def _print(self, expr, **kwargs):
        # Constants such as pi, E or sqrt(2) become Python floats: no math import needed.
        if isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Rational:
            value = complex(expr.evalf(17))
            if value.imag != 0:
                raise PrinterError(f"complex constant {sp.sstr(expr)} in a phi/psi expression")
            return repr(value.real) if value.real == value.real and abs(value.real) != float("inf") \
                else f"float({str(value.real)!r})"
        return super()._print(expr, **kwargs)

    def _print_Symbol(self, expr):
        name = expr.name
        if name not in self.allowed or not SYMBOL_NAME.fullmatch(name):
            raise PrinterError(f"symbol {name!r} may not appear in generated code "
                               f"(allowed here: {', '.join(sorted(self.allowed))})")
        for condition in reversed(self._guards):
            # Double-where trick: gradients reach the symbol only where its branch is taken.
            name = f"torch.where({condition}, {name}, {name}.detach())"
        return name

    def _print_Pow(self, expr, rational=False):
        return self._hprint_Pow(expr, rational=rational, sqrt="torch.sqrt")

    def _print_Max(self, expr):
        return self._fold_extremum(expr, "torch.maximum", "min", max)

    def _print_Min(self, expr):
        return self._fold_extremum(expr, "torch.minimum", "max", min)

    def _fold_extremum(self, expr, torch_binary: str, clamp_side: str, reduce) -> str:
        """torch.maximum/minimum need two tensors: fold tensors pairwise, numbers into a clamp."""
        numbers = [a for a in expr.args if a.is_number]
        tensors = [a for a in expr.args if not a.is_number]
        code = self._print(tensors[0])
        for arg in tensors[1:]:
            code = f"{torch_binary}({code}, {self._print(arg)})"
        if numbers:
            code = f"torch.clamp({code}, {clamp_side}={self._print(reduce(numbers))})"
        return code

    def _print_Piecewise(self, expr):
        # Each branch sees its symbols through torch.where(taken, x, x.detach()), so an
        # untaken branch (log of a negative, say) cannot send NaN into the gradient.
        branches, earlier = [], sp.false
        for value, condition in expr.args:
            branches.append((value, condition == sp.true, sp.And(condition, sp.Not(earlier))))
            earlier = sp.Or(earlier, condition)
        code = "float('nan')"
        for value, catch_all, taken in reversed(branches):
            if taken == sp.false:
                continue
            branch = self._print_guarded(value, taken)
            code = branch if catch_all else f"torch.where({self._print(taken)}, {branch}, {code})"
        return code

    def _print_guarded(self, value, taken) -> str:
        if taken == sp.true:
            return self._print(value)
        self._guards.append(self._print(taken))
        try:
            return self._print(value)
        finally:
            self._guards.pop()

    def _print_Relational(self, expr):
        # Python operators: tensor comparisons whichever side the tensor is on.
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return self._fold_logical("torch.logical_and", expr.args)

    def _print_Or(self, expr):
        return self._fold_logical("torch.logical_or", expr.args)

    def _print_Not(self, expr):
        return f"torch.logical_not({self._print(expr.args[0])})"

    def _fold_logical(self, op: str, args) -> str:
        code = self._print(args[0])
        for arg in args[1:]:
            code = f"{op}({code}, {self._print(arg)})"
        return code

    def _print_Sum(self, expr):
        return self._print_bounded_reduction(expr)

    def _print_Product(self, expr):
        return self._print_bounded_reduction(expr)

    def _print_bounded_reduction(self, expr):
        if not all(bound.is_Integer for _, low, high in expr.limits for bound in (low, high)):
            raise PrinterError(f"{type(expr).__name__} needs integer limits to be printed: {sp.sstr(expr)}")
        return self._print(expr.doit())

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name not in self.known_functions:
            raise PrinterError(f"no torch translation for the function {name!r} in {sp.sstr(expr)}")
        args = ", ".join(self._print(arg) for arg in expr.args)
        return f"{self.known_functions[name]}({args})"

    def _print_RootEig(self, expr):
        k, *coefficients = expr.args
        if not k.is_Integer:
            raise PrinterError(f"RootEig needs an integer index: {sp.sstr(expr)}")
        return f"polynomial_root({int(k)}, {', '.join(self._print(a) for a in coefficients)})"

    def _print_Basic(self, expr):
        raise PrinterError(f"cannot print {type(expr).__name__} as torch code: {sp.sstr(expr)}")

    _print_not_supported = _print_Basic


# The base printer registers helpers like _print_exp that bypass _print_Function; route them back.
for _name in _TORCH_FUNCTIONS:
    setattr(TorchPrinter, f"_print_{_name}", TorchPrinter._print_Function)


def torch_code(expr: sp.Expr, allowed: Iterable[str]) -> str:
    """Source text of ``expr`` as a torch expression over the ``allowed`` symbol names."""
    return TorchPrinter(allowed).doprint(expr)
