"""Measure -> torch source: phi, psi, the unbiased U-statistic and a small optimizer class.

:func:`generate` writes that source once; ``sharpc.optim`` executes it on top of
:mod:`sharpc.runtime` and :func:`sharpc.emit.standalone.emit_module` appends it to
the runtime package's own text, so in-process and standalone optimizers run the same code.
User text reaches the source only as ``repr`` string literals, symbols only through
the whitelisting printer.

The U-statistic. For a polynomial phi and polynomial psi, every monomial of phi is a
product of expectations E[f_1] ... E[f_r] over one sample group (groups multiply, being
independent). Its unbiased estimator averages prod_j f_j(Delta_{i_j}) over *distinct*
indices, and Moebius inversion on the lattice of set partitions writes that sum as

    sum_{i_1..i_r distinct} prod_j f_j(Delta_{i_j})
        = sum_{partitions pi of [r]} prod_{B in pi} (-1)^(|B|-1) (|B|-1)! sum_i prod_{j in B} f_j(Delta_i),

a polynomial in the power sums P_k = sum_i Delta_i^k (P_0 = n), divided by n(n-1)...(n-r+1).
For Frobenius, 2(t2 - t1^2) becomes 2 (P2/n - (P1^2 - P2)/(n(n-1))): Algorithm 3's (n-1) estimator.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from importlib import resources
from math import factorial, prod

import sympy as sp
from sympy.utilities.iterables import multiset_partitions

from ..distributions import (
    Adaptive,
    Dirac,
    DiracAt,
    Distribution,
    Eigenvector,
    Gaussian,
    Hypercube,
    Lebesgue,
    Sphere,
    t,
)
from ..errors import OptimizerError
from ..measure import Measure
from .names import check_class_name
from .printer import PrinterError, torch_code

__all__ = ["UStatistic", "unbiased_estimator", "generate", "group_specs", "runtime_functions", "emit_module",
           "recommended"]

#: The sample count in U-statistic expressions.
N = sp.Symbol("n", positive=True, integer=True)
#: Largest number of expectations multiplied in one monomial (Bell(8) = 4140 set partitions).
MAX_ORDER = 8
#: Set partitions the U-statistic may sum over, Bell(r) for each monomial of order r: a phi
#: with more (dozens of order-8 monomials) took minutes to build, twice per emitted class.
MAX_PARTITIONS = 10_000
#: Bell numbers B_0..B_MAX_ORDER: the set partitions of r distinct samples.
_BELL = (1, 1, 2, 5, 15, 52, 203, 877, 4140)


def power_sum_symbol(group: int, k: int) -> sp.Symbol:
    """P<group>_<k> = sum_i Delta_{group,i}^k."""
    return sp.Symbol(f"P{group}_{k}", real=True)


@dataclass(frozen=True)
class UStatistic:
    """An unbiased estimator of phi(E psi) as an expression in power sums, n and d."""

    expr: sp.Expr
    power_sums: tuple[tuple[int, int], ...]  # (group, k) of each P argument, in order
    order: int                               # distinct samples needed per group


def unbiased_estimator(measure: Measure) -> tuple[UStatistic | None, str]:
    """The U-statistic of ``measure``, or None and the reason there is none (cached per measure:
    emitting a class asks for it twice)."""
    try:
        return _cached_unbiased_estimator(measure)
    except TypeError:  # a hand-built measure with unhashable fields
        return _unbiased_estimator(measure)


def _unbiased_estimator(measure: Measure) -> tuple[UStatistic | None, str]:
    args = measure.phi_args
    if not measure.phi.is_polynomial(*args):
        return None, f"phi = {sp.sstr(measure.phi)} is not a polynomial"
    for i, component in enumerate(measure.psi):
        if not component.is_polynomial(t):
            return None, f"psi_{i + 1} = {sp.sstr(component)} is not a polynomial"
    if any(isinstance(g.distribution, (Dirac, DiracAt)) for g in measure.groups):
        return None, "a Dirac group has one deterministic sample"
    monomials = [(powers, coeff, [[measure.psi[c] for c in group.components for _ in range(powers[c])]
                                  for group in measure.groups])
                 for powers, coeff in sp.Poly(measure.phi, *args).terms()]
    exact = [_base(g.distribution).deterministic for g in measure.groups]  # one sample, Q itself
    orders = [len(factors) for _, _, per_group in monomials for a, factors in enumerate(per_group) if not exact[a]]
    if max(orders, default=0) > MAX_ORDER:
        return None, f"a monomial of phi multiplies {max(orders)} > {MAX_ORDER} expectations"
    work = sum(prod(_BELL[len(factors)] for factors in per_group) for _, _, per_group in monomials)
    if work > MAX_PARTITIONS:
        return None, (f"the U-statistic would sum over {work} set partitions (> {MAX_PARTITIONS}, about 0.3 ms "
                      "each to build)")
    terms = [coeff * sp.Mul(*(_distinct_mean(factors, a, exact[a]) for a, factors in enumerate(per_group)))
             for _, coeff, per_group in monomials]
    total, order = sp.Add(*terms), max(orders, default=0)
    symbols = sorted((s for s in total.free_symbols if s.name.startswith("P")), key=lambda s: s.name)
    if not symbols:
        return None, f"phi = {sp.sstr(measure.phi)} does not depend on the samples"
    power_sums = tuple(sorted((int(a), int(k)) for a, k in (s.name[1:].split("_") for s in symbols)))
    return UStatistic(total, power_sums, max(order, 1)), ""


_cached_unbiased_estimator = functools.lru_cache(maxsize=64)(_unbiased_estimator)


def _distinct_mean(factors: list[sp.Expr], group: int, exact: bool = False) -> sp.Expr:
    """Average of prod_j f_j(Delta_{i_j}) over distinct i_1..i_r, in power sums of the group.

    An ``exact`` group (a point mass: one sample, whose Delta is Q itself) needs no distinct
    samples: the product at its one sample is the expectation, sum_k c_k P_k.
    """
    r = len(factors)
    if r == 0:
        return sp.Integer(1)
    if exact:
        return _power_sum(sp.Mul(*factors), group).subs(N, 1)
    total = sp.Integer(0)
    for partition in multiset_partitions(list(range(r))):
        mobius = prod((-1) ** (len(block) - 1) * factorial(len(block) - 1) for block in partition)
        total += mobius * sp.Mul(*(_power_sum(sp.Mul(*(factors[j] for j in block)), group) for block in partition))
    return sp.expand(total) / sp.Mul(*(N - j for j in range(r)))


def _power_sum(h: sp.Expr, group: int) -> sp.Expr:
    """sum_i h(Delta_i) for a polynomial h, with P_0 = n."""
    poly = sp.Poly(sp.expand(h), t)
    return sum((N if k == 0 else power_sum_symbol(group, k)) * c for (k,), c in poly.terms())


# ----------------------------------------------------------------------------- sampling
def group_specs(measure: Measure) -> tuple[dict, ...]:
    """runtime.GroupSpec's fields (those that differ from its defaults) per sample group."""
    components = sorted(c for group in measure.groups for c in group.components)
    if measure.m == 0 or components != list(range(measure.m)):
        raise OptimizerError(f"the sample groups must cover the psi components 0..{measure.m - 1} once each, "
                             f"got {[tuple(g.components) for g in measure.groups]}")
    specs = []
    for group in measure.groups:
        distribution = _base(group.distribution)
        sampler = _sampler(distribution)
        spec = dict(kind=sampler.pop("kind"), components=tuple(group.components), **sampler)
        if isinstance(group.distribution, Adaptive):
            spec["adaptive"] = True
        specs.append(spec)
    return tuple(specs)


def _base(distribution: Distribution) -> Distribution:
    return distribution.base if isinstance(distribution, Adaptive) else distribution


def _sampler(distribution: Distribution) -> dict:
    if isinstance(distribution, DiracAt):
        return dict(kind="point", support=tuple(distribution.support))
    if isinstance(distribution, Gaussian):
        return dict(kind="gaussian")
    if isinstance(distribution, Sphere):
        return dict(kind="sphere")
    if isinstance(distribution, Hypercube):
        return dict(kind="hypercube", half_width=float(distribution.half_width))
    if isinstance(distribution, Lebesgue):  # exactly, by importance (see Lebesgue)
        return dict(kind="importance", precision=float(distribution.lower))
    if isinstance(distribution, Dirac):
        return dict(kind="dirac")
    if isinstance(distribution, Eigenvector):
        return dict(kind="eigenvector", shift=float(distribution.shift), sign=distribution.sign)
    raise OptimizerError(f"the optimizer cannot sample {distribution.describe()}")


def runtime_functions(measure: Measure) -> tuple[sp.Expr, tuple[sp.Expr, ...]]:
    """phi and psi as the runtime evaluates them.

    An importance-weighted group (the Lebesgue measure) works in logs: its components are
    log E[w psi], so phi receives exp(t_c) for them and psi returns log psi_c, which must be
    linear in t (psi = c exp(r t)); the weights, of size exp(d/2), then never overflow.
    """
    weighted = [c for g in measure.groups if isinstance(_base(g.distribution), Lebesgue) for c in g.components]
    psi = list(measure.psi)
    for c in weighted:
        psi[c] = sp.expand_log(sp.log(psi[c]), force=True)
        if not psi[c].is_polynomial(t) or sp.degree(psi[c], t) > 1:
            raise OptimizerError("the Lebesgue importance sampler needs psi = c*exp(r*t), "
                                 f"got {sp.sstr(measure.psi[c])}")
    phi = measure.phi.subs({measure.phi_args[c]: sp.exp(measure.phi_args[c]) for c in weighted})
    return sp.expand_log(phi, force=True) if weighted else phi, tuple(psi)


# ----------------------------------------------------------------------------- defaults
#: The default relative strength of a target of degree 1 in the eigenvalues (see :func:`recommended`).
RELATIVE_STRENGTH = 0.03
#: The default bound on the regularizer's gradient, as a multiple of the loss gradient's norm.
CLIP = 1.0
#: From this degree on, estimates of E[Q^k] are heavy-tailed: the U-statistic then averages twice
#: its minimum number of samples. Measured for sum(l**4) (benchmarks/delivery.py, 3 seeds):
#: with 4 samples the target ended 1.64x (MLP) and 1.22x (CNN, one seed 106x) SGD's; with 8,
#: 0.70x and 0.57x at equal accuracy.
HEAVY_TAILED_DEGREE = 3


def recommended(measure: Measure) -> dict:
    """Every generated class's default hyperparameters (measured: docs/results.md, benchmarks/delivery.py).

    strength is relative (per unit of the target's running magnitude), so one value serves
    every target and model size; it is divided by the target's degree k in the eigenvalues,
    since grad log sum(l**k) grows like k. rho is left to the runtime, which makes |rho v| a
    fixed fraction of the parameters' norm. Random and eigenvector measures take antithetic differences,
    which cancel the term g.v / rho that one-sided differences feed into psi. Targets of
    degree 3 or more take twice the U-statistic's minimum sample count (HEAVY_TAILED_DEGREE).
    """
    # antithetic pairs also give the power iteration H u without the gradient's term g / rho
    paired = any(not g.distribution.deterministic or isinstance(_base(g.distribution), Eigenvector)
                 for g in measure.groups)
    defaults = dict(strength=RELATIVE_STRENGTH / _degree(measure), relative=True,
                    difference="antithetic" if paired else "one-sided", clip=CLIP)
    ustat = unbiased_estimator(measure)[0]
    if _degree(measure) >= HEAVY_TAILED_DEGREE:
        defaults["n_samples"] = 2 * (ustat.order if ustat is not None else _moment_order(measure))
    return defaults


def _moment_order(measure: Measure) -> int:
    """Distinct samples per random group that phi(sample means of psi) needs: the highest power of
    Q among the group's polynomial psi components (with psi = (t, t**2), one sample makes the
    sample variance exactly 0 and its gradient exactly 0, or infinite under a square root)."""
    orders = [sp.Poly(measure.psi[c], t).degree() for group in measure.groups if not group.distribution.deterministic
              for c in group.components if measure.psi[c].is_polynomial(t)]
    return max([1, *orders])


def _degree(measure: Measure) -> int:
    """The highest power of Q among the polynomial psi components (E[Q^k] carries l**k), at least 1."""
    degrees = [sp.Poly(c, t).degree() for c in measure.psi if c.is_polynomial(t)]
    return max([1, *degrees])


# ----------------------------------------------------------------------------- source
def generate(measure: Measure, name: str, recommended_overrides: dict | None = None) -> str:
    """Python source defining phi, psi, ustat, scale, offset and ``class <name>(PhiPsiSAM)``."""
    check_class_name(name, _taken_names())
    m = measure.m
    phi_args = [s.name for s in measure.phi_args]
    phi, psi = runtime_functions(measure)
    phi_code = torch_code(phi, {*phi_args, "d"})
    if not phi.free_symbols & set(measure.phi_args):
        phi_code = f"torch.zeros_like(t1) + ({phi_code})"
    logs = "" if psi == measure.psi else " (in logs for the importance-weighted components)"
    blocks = [_function("phi", "ts, d", f"phi({', '.join(phi_args)}) = {sp.sstr(phi)}{logs}",
                        _unpack(phi_args, "ts"), phi_code)]
    components = ", ".join(_component(c) for c in psi)
    blocks.append(
        f"def psi(t, d):\n"
        f"    {_docstring('psi(t) = (' + ', '.join(sp.sstr(c) for c in psi) + (',)' if m == 1 else ')') + logs)}\n"
        f"    return torch.stack(({components}{',' if m == 1 else ''}))\n")
    ustat, unavailable = unbiased_estimator(measure)
    if ustat is not None:
        names = [power_sum_symbol(a, k).name for a, k in ustat.power_sums]
        doc = (f"Unbiased estimate of phi(E psi) from the power sums P = ({', '.join(names)}).\n\n"
               "Pa_k = sum_i Delta_{a,i}**k over the n samples of sample group a.")
        blocks.append(_function("ustat", "P, n, d", doc, _unpack(names, "P"),
                                torch_code(ustat.expr, {*names, "n", "d"})))

    derivatives = _derivative_blocks(measure, ustat)
    blocks += derivatives
    for name_, expr, what in (("scale", measure.scale, "positive factor"), ("offset", measure.offset, "constant")):
        blocks.append(_function(name_, "d, rho", f"The target's dropped {what}: {sp.sstr(expr)}.", "",
                                f"torch.zeros_like(d) + ({torch_code(expr, {'d', 'rho'})})"))

    specs = ", ".join("GroupSpec(" + ", ".join(f"{key}={value!r}" for key, value in spec.items()) + ")"
                      for spec in group_specs(measure))
    dropped = "; ".join(measure.constants_dropped) or "none"
    doc = (f"(phi, psi, mu)-SAM for the sharpness target {sp.sstr(measure.target)}.\n\n"
           f"Minimizes L(x) + strength * target(x), the target estimated at radius rho as\n"
           f"target = {sp.sstr(measure.scale)} * S + {sp.sstr(measure.offset)} (the derivation dropped: {dropped}),\n"
           f"S = phi(E[psi_1(Q)], ..., E[psi_m(Q)]) with Q = v^T H v / 2.\n"
           + "".join(f"mu for components {tuple(i + 1 for i in g.components)}: {g.distribution.describe()}\n"
                     for g in measure.groups)
           + f"Estimator: {'unbiased U-statistic available' if ustat else 'plug-in only (' + unavailable + ')'}.\n"
           f"See PhiPsiSAM (sharpc.runtime) for the constructor arguments.")
    lines = [
        f"class {name}(PhiPsiSAM):",
        f"    {_docstring(doc, indent='    ')}",
        "",
        f"    target = {measure.source!r}",
        f"    m = {m}",
        "    phi = staticmethod(phi)",
        "    psi = staticmethod(psi)",
        f"    ustat = {'staticmethod(ustat)' if ustat else 'None'}",
        f"    derivatives = {'symbolic' if derivatives else 'autograd'!r}",
        *([f"    {f} = staticmethod({f})" for f in ("phi_grad", "psi_slopes")]
          + (["    ustat_grad = staticmethod(ustat_grad)"] if ustat else []) if derivatives else []),
        "    scale = staticmethod(scale)",
        "    offset = staticmethod(offset)",
        f"    ustat_unavailable = {unavailable!r}",
        f"    power_sums = {ustat.power_sums if ustat else ()!r}",
        f"    ustat_order = {ustat.order if ustat else 1}",
        f"    moment_order = {_moment_order(measure)}",
        f"    sample_groups = ({specs},)",
        f"    fixed_d = {measure.d!r}",
        f"    recommended = {recommended(measure) | dict(recommended_overrides or {})!r}",
    ]
    blocks.append("\n".join(lines) + "\n")
    return "\n\n".join(blocks)


def _derivative_blocks(measure: Measure, ustat: UStatistic | None) -> list[str]:
    """phi_grad, psi_slopes and ustat_grad, differentiated by SymPy at compile time.

    A step then runs no autograd outside the user's closure. Empty when some derivative has
    no torch translation (RootEig's, the universality strategy's root of a polynomial):
    the runtime then differentiates phi, psi and the U-statistic by autograd.
    """
    phi_args = [s.name for s in measure.phi_args]
    phi, psi = runtime_functions(measure)
    try:
        phi_grads = [_printed(sp.diff(phi, a), {*phi_args, "d"}, phi_args[0]) for a in measure.phi_args]
        slopes = [_printed(sp.diff(c, t), {"t", "d"}, "t") for c in psi]
        blocks = [_function("phi_grad", "ts, d", "The gradient of phi in (t1, ..., tm), differentiated by SymPy.",
                            _unpack(phi_args, "ts"), f"torch.stack(({', '.join(phi_grads)},))"),
                  _function("psi_slopes", "t, d", "d psi_l / dt for every component l, differentiated by SymPy.",
                            "", f"torch.stack(({', '.join(slopes)},))")]
        if ustat is not None:
            names = [power_sum_symbol(a, k).name for a, k in ustat.power_sums]
            grads = [_printed(sp.diff(ustat.expr, power_sum_symbol(a, k)), {*names, "n", "d"}, names[0])
                     for a, k in ustat.power_sums]
            blocks.append(_function("ustat_grad", "P, n, d",
                                    "dU / dP for every power sum P, differentiated by SymPy.",
                                    _unpack(names, "P"), f"torch.stack(({', '.join(grads)},))"))
    except PrinterError:
        return []
    return blocks


def _printed(expr: sp.Expr, allowed: set[str], like: str) -> str:
    """torch code for a derivative, with ``like``'s shape and dtype (it may be a constant).

    An expression in ``like`` has them already (the other arguments are 0-d); a number is
    filled in one kernel; anything else is broadcast by adding it to zeros.
    """
    if expr.has(sp.Derivative, sp.Subs):
        raise PrinterError(f"no closed-form derivative: {sp.sstr(expr)}")
    if expr.is_number and expr.is_real:
        return f"torch.full_like({like}, {float(expr)!r})"
    code = torch_code(expr, allowed)
    return code if like in {s.name for s in expr.free_symbols} else f"torch.zeros_like({like}) + ({code})"


#: sharpc/runtime's modules in dependency order: the standalone module pastes them in this order.
RUNTIME_MODULES = ("sampling", "maths", "replay", "storage", "ranks", "power", "step", "estimator", "accumulate",
                   "optimizer")


def runtime_text() -> str:
    """sharpc/runtime's code as one module, read from the package: emitting never imports torch.

    Each module's code follows its imports; the package-relative imports go (the pieces are
    pasted in dependency order), the absolute ones are hoisted and merged, and
    ``sharpc.errors.OptimizerError`` becomes a local class of the same name.
    """
    package = resources.files("sharpc").joinpath("runtime")
    modules, names, bodies = set(), {}, []
    for module in RUNTIME_MODULES:
        text = package.joinpath(f"{module}.py").read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        tree = ast.parse(text)
        dropped = set()
        for node in tree.body:
            docstring = node is tree.body[0] and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            if isinstance(node, (ast.Import, ast.ImportFrom)) or docstring:
                dropped.update(range(node.lineno - 1, node.end_lineno))
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.setdefault(node.module, set()).update(alias.name for alias in node.names)
        bodies.append("".join(line for i, line in enumerate(lines) if i not in dropped).strip("\n"))
    header = "\n".join([*(f"import {m}" for m in sorted(modules - {"torch"})),
                        *(f"from {m} import {', '.join(sorted(n))}" for m, n in sorted(names.items())),
                        "", "import torch"])
    error = ('class OptimizerError(ValueError):\n'
             '    """Misuse of the optimizer, or a step that could not be completed safely."""')
    return "\n\n\n".join([header, error, *bodies]) + "\n"


@functools.cache
def _taken_names() -> frozenset[str]:
    """Module-level names of the runtime and of the generated code: a class must not shadow them."""
    tree = ast.parse(runtime_text())
    names = {"phi", "psi", "ustat", "scale", "offset", "phi_grad", "psi_slopes", "ustat_grad"}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return frozenset(names)


def _function(name: str, signature: str, doc: str, body: str, code: str) -> str:
    return f"def {name}({signature}):\n    {_docstring(doc)}\n{body}    return {code}\n"


def _component(expr: sp.Expr) -> str:
    code = torch_code(expr, {"t", "d"})
    return code if t in expr.free_symbols else f"torch.zeros_like(t) + ({code})"


def _unpack(names: list[str], source: str) -> str:
    return f"    {', '.join(names)}{',' if len(names) == 1 else ''} = {source}.unbind(0)\n"


def _docstring(text: str, indent: str = "    ") -> str:
    """A triple-quoted docstring when that is safe, else an escaped one-line literal."""
    if '"""' in text or "\\" in text or text.endswith('"'):
        return repr(text)
    lines = [(indent + line if line else "") for line in text.split("\n")]
    lines[0] = lines[0][len(indent):]
    return '"""' + "\n".join(lines) + ("\n" + indent if len(lines) > 1 else "") + '"""'


from .standalone import emit_module  # noqa: E402  (standalone builds on generate above)
