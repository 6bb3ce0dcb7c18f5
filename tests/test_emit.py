"""Code generation: the torch printer, the generated source, and standalone modules.

The standalone module is run in a subprocess where ``import sharpc`` is impossible, and it
must train a model exactly as the in-process class does under the same seed.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp
import torch

from _optim_helpers import frobenius, shifted_det
import sharpc
from sharpc import OptimizerError
from sharpc.distributions import t
from sharpc.emit import emit_module, generate
from sharpc.emit.printer import PrinterError, torch_code
from sharpc.optim import SAM, optimizer_class
from sharpc.spectral import D

t1, t2 = sp.symbols("t1 t2", real=True)


def as_function(expr, args=("t",)):
    code = torch_code(expr, set(args) | {"d"})
    return eval(f"lambda {', '.join(args)}, d=torch.tensor(3.0): {code}", {"torch": torch})  # noqa: S307


# ----------------------------------------------------------------------------- printer
@pytest.mark.parametrize("expr", [
    sp.exp(-t / 3) + sp.log(1 + t**2) - sp.sqrt(t**2 + 1),
    sp.Max(t, 0) + sp.Min(t, 1, -t / 2) + sp.Max(t, 2 * t, sp.Rational(1, 3)),
    sp.Abs(t) ** sp.Rational(3, 2) + sp.pi * t - sp.E,
    sp.Piecewise((t**2, t < -1), (sp.cos(t), t < 1), (1 / t, True)),
    D * t + sp.tanh(t) / D,
])
def test_printed_expressions_agree_with_sympy(expr):
    values = np.linspace(-3, 3, 13) + 0.05
    reference = sp.lambdify((t, D), expr, "numpy")(values, 3.0)
    got = as_function(expr)(torch.tensor(values))
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-12)


def test_piecewise_gradients_are_finite_in_the_untaken_branch():
    expr = sp.Piecewise((sp.sqrt(t), t > 0), (sp.log(-t), True))
    x = torch.tensor([-2.0, 4.0], dtype=torch.float64, requires_grad=True)
    as_function(expr)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, 0.25], dtype=torch.float64))
    slopes = torch.func.vmap(torch.func.grad(as_function(expr)))(x.detach())
    torch.testing.assert_close(slopes, x.grad)


def test_sums_with_numeric_limits_are_unrolled():
    k = sp.Symbol("k", integer=True)
    assert torch_code(sp.Sum(t**k, (k, 1, 3)), {"t"}) == "t**3 + t**2 + t"
    with pytest.raises(PrinterError, match="integer limits"):
        torch_code(sp.Sum(t**k, (k, 1, sp.Symbol("m"))), {"t"})


@pytest.mark.parametrize("expr, message", [
    (sp.Symbol("x") * t, "symbol 'x' may not appear"),
    (sp.Symbol("__import__('os').system('true')") + t, "may not appear"),
    (t1 + t, "symbol 't1' may not appear"),
    (sp.Function("f")(t), "no torch translation for the function 'f'"),
    (sp.gamma(t), "no torch translation"),
    (sp.I * t, "complex constant"),
])
def test_printer_refuses_unknown_names_functions_and_complex_numbers(expr, message):
    with pytest.raises(PrinterError, match=message):
        torch_code(expr, {"t", "d"})
    assert issubclass(PrinterError, OptimizerError)


# ----------------------------------------------------------------------------- generated source
def _names_used(source: str) -> set[str]:
    """Names the source reads (assignments such as class attributes are not reads)."""
    return {node.id for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def test_generated_source_uses_only_whitelisted_names():
    source = generate(frobenius(), "FrobSAM")
    allowed = {"torch", "ts", "t", "d", "rho", "t1", "t2", "P", "n", "P0_1", "P0_2", "phi", "psi", "ustat",
               "phi_grad", "psi_slopes", "ustat_grad", "scale", "offset", "staticmethod", "PhiPsiSAM",
               "GroupSpec"}  # variables, generated functions, runtime
    assert _names_used(source) <= allowed
    tree = ast.parse(source)
    assert [type(node).__name__ for node in tree.body] == ["FunctionDef"] * 8 + ["ClassDef"]


def test_user_text_cannot_escape_its_string_literal():
    source = 'sum(l**2)"""\nimport os; os.system("true")\n"""\\'
    measure = dataclasses.replace(frobenius(), source=source)
    tree = ast.parse(generate(measure, "Evil"))
    assert all(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in tree.body)
    assert optimizer_class(measure, "Evil").target == source
    for name in ("import os", "class", "PhiPsiSAM", "9lives", "warnings", "torch", "_Hidden"):
        with pytest.raises(OptimizerError, match="cannot name"):
            generate(frobenius(), name)


def test_generated_phi_and_psi_match_sympy_numerically():
    measure = shifted_det(0.2)
    namespace = {"torch": torch}
    exec(generate(measure, "X").split("class X")[0], namespace)  # noqa: S102
    ts = torch.tensor([1.3], dtype=torch.float64)
    assert namespace["phi"](ts, torch.tensor(4.0)).item() == pytest.approx(1.3**-2)
    assert namespace["psi"](torch.tensor(0.5, dtype=torch.float64), None).tolist() == pytest.approx([np.exp(0.1)])


# ----------------------------------------------------------------------------- standalone module
TRAIN = textwrap.dedent('''
    def train(cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                                    torch.nn.Linear(8, 2))
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

        def closure():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt = cls(model.parameters(), rho=0.01, strength=0.01, lr=0.1, momentum=0.9, seed=1)
        sharpness = []
        for _ in range(4):
            opt.step(closure)
            sharpness.append(opt.sharpness)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), torch.stack(sharpness)
''')

DRIVER = textwrap.dedent('''
    import importlib.abc
    import sys

    class BlockSharpc(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "sharpc":
                raise ImportError("sharpc is not available here")

    sys.meta_path.insert(0, BlockSharpc())
    try:
        import sharpc  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("sharpc was importable")

    sys.path.insert(0, sys.argv[1])
    import torch
    import emitted

    assert not any(name.split(".")[0] == "sharpc" for name in sys.modules)
    torch.set_num_threads(1)
''') + TRAIN + textwrap.dedent('''
    params, sharpness = train(emitted.FrobeniusSAM)
    torch.save({"params": params, "sharpness": sharpness}, sys.argv[2])
''')


@pytest.mark.parametrize("measure", [frobenius(), sharpc.compile("max(l) + sum(l**2)")], ids=["frobenius", "sum"])
def test_standalone_module_trains_exactly_like_the_in_process_class(tmp_path, measure):
    (tmp_path / "emitted.py").write_text(emit_module(measure, "FrobeniusSAM"))
    (tmp_path / "driver.py").write_text(DRIVER)
    result = subprocess.run([sys.executable, "-I", str(tmp_path / "driver.py"), str(tmp_path),
                             str(tmp_path / "out.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    standalone = torch.load(tmp_path / "out.pt")

    namespace = {"torch": torch}
    exec(TRAIN, namespace)  # noqa: S102
    params, sharpness = namespace["train"](optimizer_class(measure))
    assert torch.equal(standalone["params"], params)
    assert torch.equal(standalone["sharpness"], sharpness)


def test_the_runtime_package_is_pasted_whole_and_imports_only_torch():
    """Every runtime module is in RUNTIME_MODULES (a new one cannot be left out of standalone
    modules), and each imports torch, the standard library, its siblings and sharpc.errors only."""
    from importlib import resources

    from sharpc.emit import RUNTIME_MODULES

    package = resources.files("sharpc").joinpath("runtime")
    files = {f.name[:-3] for f in package.iterdir() if f.name.endswith(".py") and f.name != "__init__.py"}
    assert files == set(RUNTIME_MODULES)
    for module in RUNTIME_MODULES:
        tree = ast.parse(package.joinpath(f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in RUNTIME_MODULES or \
                    (node.level == 2 and node.module == "errors"), (module, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(n.split(".")[0] == "torch" or n.split(".")[0] in sys.stdlib_module_names
                           for n in names), (module, names)


def test_emitted_modules_embed_the_runtime_verbatim():
    from sharpc.emit.standalone import runtime_source

    for measure, name in ((frobenius(), "FrobSAM"), (shifted_det(0.1), "ShiftedDetSAM"), (SAM.measure, "MySAM")):
        text = emit_module(measure, name)
        assert runtime_source() in text
        imports = {alias.name.split(".")[0] for node in ast.walk(ast.parse(text))
                   if isinstance(node, (ast.Import, ast.ImportFrom))
                   for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert all(name == "torch" or name in sys.stdlib_module_names for name in imports), imports
        namespace: dict = {}
        exec(compile(text, name, "exec"), namespace)  # noqa: S102
        assert namespace[name].__mro__[1].__name__ == "PhiPsiSAM"


def test_u_statistics_too_large_to_build_are_declined_in_time(monkeypatch):
    """Bell(r) set partitions per monomial of order r: past MAX_PARTITIONS the U-statistic is declined
    with the reason (the plug-in estimate is used) before SymPy starts a job that took minutes."""
    import time

    import sharpc.emit as emit

    from sharpc import compile as compile_target

    measure = compile_target("sum(l**4)")
    emit._cached_unbiased_estimator.cache_clear()
    monkeypatch.setattr(emit, "MAX_PARTITIONS", 10)
    start = time.perf_counter()
    ustat, reason = emit.unbiased_estimator(measure)
    assert ustat is None and "set partitions" in reason and time.perf_counter() - start < 0.5
    emit._cached_unbiased_estimator.cache_clear()
