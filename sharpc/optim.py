"""Optimizer classes from measures, and the presets SAM, TraceSAM, FrobSAM and DetSAM.

``optimizer_class(measure)`` executes the source :func:`sharpc.emit.generate` writes for
the measure (our own generated code, never user text) on top of :mod:`sharpc.runtime`;
the standalone module of :mod:`sharpc.emit.standalone` contains exactly that source.
The presets are built on first access, so importing this module compiles nothing.

Preset defaults (override any of them in the constructor):

========  =================================================  =====  ========  =========
class     measure                                            rho    strength  n_samples
========  =================================================  =====  ========  =========
SAM       phi = psi = id, mu = delta(grad/|grad|) (App. H)    0.05   1         1
TraceSAM  compile("sum(l)"): sphere, E[Q] = tr(H) / (2d)       0.05   1         1
FrobSAM   compile("sum(l**2)"): Gaussian, 2(E[Q^2] - E[Q]^2)   0.01   0.001     2
DetSAM    compile("prod(l)", hypercube, half_width=0.01)      1.0    0.1       1
========  =================================================  =====  ========  =========

SAM with strength 1 is textbook SAM (the gradient at x + rho g/|g|); TraceSAM with
strength 1 descends the average loss over the sphere of radius rho; FrobSAM and DetSAM
use the middle of the paper's sweeps (Appendix O: Det-SAM samples the cube of side 0.02
at rho = 1).
"""

from __future__ import annotations

import itertools
import linecache
from typing import Any

import sympy as sp

from . import runtime
from .distributions import Dirac, t
from .emit import generate
from .errors import OptimizerError
from .measure import Measure, SampleGroup, phi_symbols

PhiPsiSAM = runtime.PhiPsiSAM

__all__ = ["optimizer_class", "PhiPsiSAM", "OptimizerError", "SAM", "TraceSAM", "FrobSAM", "DetSAM"]

_classes: dict[Any, type[PhiPsiSAM]] = {}
_serial = itertools.count(1)


def optimizer_class(measure: Measure, name: str | None = None) -> type[PhiPsiSAM]:
    """A ``torch.optim.Optimizer`` subclass minimizing L + strength * rho**2 * R for ``measure``.

    The same measure and name give the same class object.
    """
    return _build(measure, name or "SharpSAM", {})


def _build(measure: Measure, name: str, recommended: dict[str, Any]) -> type[PhiPsiSAM]:
    key = (measure, name, tuple(sorted(recommended.items())))
    try:
        return _classes[key]
    except KeyError:
        pass
    except TypeError:  # a hand-built measure with unhashable fields still works, uncached
        key = None
    source = generate(measure, name, recommended)
    filename = f"<sharpc generated {name} #{next(_serial)}>"  # tracebacks and inspect show the source
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {**vars(runtime), "__name__": __name__}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated source
    cls = namespace[name]
    cls.Error = OptimizerError
    cls.measure = measure
    if key is not None:
        _classes[key] = cls
    return cls


def _sam_measure() -> Measure:
    (t1,) = phi_symbols(1)
    return Measure(
        source="SAM", target=sp.Symbol("R_SAM"), d=None, phi=t1, psi=(t,),
        groups=(SampleGroup(Dirac(), (0,)),), strategy="appendix-h",
        steps=("Appendix H: phi = psi = identity, mu = delta at grad L / |grad L|, n = 1 recovers SAM",),
        exact=False,
    )


def _preset(name: str) -> type[PhiPsiSAM]:
    from . import compile as compile_measure

    measures = {
        "SAM": (_sam_measure, dict(rho=0.05, strength=1.0, n_samples=1)),
        "TraceSAM": (lambda: compile_measure("sum(l)"), dict(rho=0.05, strength=1.0, n_samples=1)),
        "FrobSAM": (lambda: compile_measure("sum(l**2)"), dict(rho=0.01, strength=0.001, n_samples=2)),
        "DetSAM": (lambda: compile_measure("prod(l)", det_sampling="hypercube", half_width=0.01),
                   dict(rho=1.0, strength=0.1, n_samples=1)),
    }
    make, recommended = measures[name]
    return _build(make(), name, recommended)


def __getattr__(name: str) -> type[PhiPsiSAM]:
    if name in ("SAM", "TraceSAM", "FrobSAM", "DetSAM"):
        cls = globals()[name] = _preset(name)
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
