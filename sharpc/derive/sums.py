"""Sums of targets that different strategies represent: one measure per part, side by side.

If target = A + B with A = scale_A * phi_A(E psi_A) + offset_A and B likewise, then

    target = phi(t_A, t_B) + offset_A + offset_B,   phi = scale_A * phi_A(t_A) + scale_B * phi_B(t_B),

with psi and the sample groups of both parts concatenated: each part keeps its own samples
(``max(l) + sum(l**2)`` tracks the top eigenvector *and* draws Gaussians). Tried last, when no
strategy takes the whole target: one strategy's joint form (a polynomial in power sums, one
Chebyshev series) needs fewer samples than two parts. The target splits into the terms with
an extreme eigenvalue and the rest, or, where one of those is empty, into its terms.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import sympy as sp

from ..domains import intersect
from ..errors import DerivationError
from ..measure import Domain, Measure, SampleGroup, phi_symbols
from ..spectral import D, Eig, EMax, EMin, reductions
from . import Decline, Request, Strategy

NAME = "sum"
SUMMARY = "A + B where other strategies represent A and B: both measures side by side (their samples add up)"
#: Parts at most: each brings its own samples, so every part adds passes to a step.
MAX_PARTS = 4


def _parts(target: sp.Expr) -> tuple[list[sp.Expr], sp.Expr]:
    """(the parts to derive one by one, the constant term)."""
    if not isinstance(target, sp.Add):
        raise Decline("not a sum of terms")
    constant = sp.Add(*[term for term in target.args if not reductions(term)])
    terms = [term for term in target.args if reductions(term)]
    extreme = [term for term in terms if term.has(EMax, EMin, Eig)]
    rest = [term for term in terms if not term.has(EMax, EMin, Eig)]
    if not rest:
        raise Decline("every term has an extreme eigenvalue: those are the eigenvector strategy's, together")
    parts = [sp.Add(*extreme), sp.Add(*rest)] if extreme else terms
    if len(parts) < 2:
        raise Decline("one spectral term: nothing to split")
    if len(parts) > MAX_PARTS:
        raise Decline(f"{len(parts)} separate terms (at most {MAX_PARTS}: each part draws its own samples)")
    return parts, constant


def _intersect(domains: list[Domain]) -> Domain:
    """Spectra where every part's identity holds (a Decline where that leaves at most one point)."""
    try:
        domain = functools.reduce(intersect, domains)
    except DerivationError:
        domain = None
    if domain is None or domain.lower >= domain.upper:
        reasons = "; ".join(dm.reason for dm in domains if dm.reason)
        raise Decline(f"the parts' domains leave no interval of spectra ({reasons})")
    return domain


def derive(request: Request) -> Measure:
    from . import derive as derive_target  # the registry, for each part

    parts, constant = _parts(request.target)
    measures = []
    for part in parts:
        try:
            measures.append(derive_target(replace(request, source=sp.sstr(part), target=part)))
        except DerivationError as error:
            raise Decline(f"the part {sp.sstr(part)} has no measure of its own") from error
        if not measures[-1].scale.is_polynomial(D):  # (2 pi)^d: inside phi it would overflow at model sizes
            raise Decline(f"the part {sp.sstr(part)} has scale {sp.sstr(measures[-1].scale)}, exponential in d: "
                          "inside a sum's phi it overflows at model sizes")
    args, psi, groups, steps, phi = phi_symbols(sum(m.m for m in measures)), (), (), [], sp.Integer(0)
    for measure in measures:
        first = len(psi)
        own = args[first:first + measure.m]
        phi += measure.scale * measure.phi.xreplace(dict(zip(measure.phi_args, own)))
        psi += measure.psi
        groups += tuple(SampleGroup(g.distribution, tuple(first + c for c in g.components)) for g in measure.groups)
        steps += [f"part {sp.sstr(measure.target)} ({measure.strategy}, psi components "
                  f"{first + 1}..{first + measure.m}): " + "; ".join(measure.steps)]
    approximate = [m for m in measures if not m.exact]
    approximant = None if not approximate else sp.Add(
        constant, *[m.approximant if m.approximant is not None else m.target for m in measures])
    bounds = [m.error_bound for m in approximate]
    variances = [0.0 if all(g.distribution.deterministic for g in m.groups) else m.variance_per_sample
                 for m in measures]  # independent samples: the parts' variances add
    offset = sp.expand(constant + sum(m.offset for m in measures))
    return Measure(
        source=request.source, target=request.target, d=request.d, phi=sp.expand(phi), psi=psi, groups=groups,
        strategy=NAME,
        steps=(f"target = {' + '.join(sp.sstr(p) for p in parts)}"
               + (f" + {sp.sstr(constant)}" if constant != 0 else "") + ": each part its own measure",
               *steps, "phi = the sum of the parts' scale * phi, each on its own psi components",
               "target = S" + (f" + {sp.sstr(offset)}" if offset != 0 else "")),
        offset=offset,
        assumptions=tuple(dict.fromkeys(a for m in measures for a in m.assumptions)),
        domain=_intersect([m.domain for m in measures]), exact=not approximate,
        approximant=approximant, variance_per_sample=None if None in variances else sum(variances),
        error_bound=None if not approximate or any(b is None for b in bounds) else sp.Add(*bounds))


STRATEGIES = [Strategy(NAME, SUMMARY, derive)]
