"""Optimizer classes from measures, and the presets SAM, TraceSAM, FrobSAM and DetSAM.

``optimizer_class(measure)`` executes the source :func:`sharpc.emit.generate` writes for
the measure (our own generated code, never user text) on top of :mod:`sharpc.runtime`;
the standalone module of :mod:`sharpc.emit.standalone` contains exactly that source.
The presets are built on first access, so importing this module compiles nothing.

Presets (every class's defaults are :func:`sharpc.emit.recommended`; a preset overrides some):

    SAM       phi = psi = identity, mu = delta(grad / |grad|), Appendix H   rho 0.05, strength 1, absolute
    TraceSAM  compile("sum(l)"): sphere, E[Q] = tr(H) / (2d)                the defaults
    FrobSAM   compile("sum(l**2)"): Gaussian, 2 (E[Q^2] - E[Q]^2)           the defaults
    DetSAM    compile("prod(l)", det_sampling="hypercube", half_width=0.01)  rho 1 (the cube sets the scale)

SAM's target is rho**2 S = L(x + rho g/|g|) - L(x), so strength 1 is textbook SAM.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any

import sympy as sp

from . import compile as compile_measure
from . import runtime
from .distributions import Dirac, t
from .emit import generate
from .errors import OptimizerError
from .measure import Measure, SampleGroup, phi_symbols
from .spectral import RHO

PhiPsiSAM = runtime.PhiPsiSAM

__all__ = ["optimizer_class", "PhiPsiSAM", "OptimizerError", "SAM", "TraceSAM", "FrobSAM", "DetSAM"]  # noqa: F822

_classes: dict[Any, type[PhiPsiSAM]] = {}
_serial = itertools.count(1)


def optimizer_class(measure: Measure, name: str | None = None) -> type[PhiPsiSAM]:
    """A ``torch.optim.Optimizer`` subclass minimizing L + strength * target for ``measure``.

    The class's defaults are :func:`sharpc.emit.recommended`; the same measure and name give the
    same class object.
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
    cls.measure = measure
    if key is not None:
        _classes[key] = cls
    return cls


def _sam_measure() -> Measure:
    (t1,) = phi_symbols(1)
    return Measure(
        source="SAM", target=sp.Symbol("R_SAM"), d=None, phi=t1, psi=(t,),
        groups=(SampleGroup(Dirac(), (0,)),), strategy="appendix-h",
        steps=("Appendix H: phi = psi = identity, mu = delta at grad L / |grad L|, n = 1 recovers SAM",
               "target = rho**2 * S = L(x + rho g / |g|) - L(x), so strength 1 is textbook SAM"),
        scale=RHO**2, exact=False,
    )


def _compiled(expression: str, **options: Any) -> Callable[[], Measure]:
    return lambda: compile_measure(expression, **options)


#: Each preset's measure and the defaults it overrides in :func:`sharpc.emit.recommended`.
_PRESETS: dict[str, tuple[Callable[[], Measure], dict[str, Any]]] = {
    "SAM": (_sam_measure, dict(rho=0.05, strength=1.0, relative=False, clip=None)),
    "TraceSAM": (_compiled("sum(l)"), {}),
    "FrobSAM": (_compiled("sum(l**2)"), {}),
    "DetSAM": (_compiled("prod(l)", det_sampling="hypercube", half_width=0.01), dict(rho=1.0)),
}


def __getattr__(name: str) -> type[PhiPsiSAM]:
    """Build a preset class on first access (and keep it as a module attribute)."""
    if name not in _PRESETS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    make, overrides = _PRESETS[name]
    cls = globals()[name] = _build(make(), name, overrides)
    return cls
