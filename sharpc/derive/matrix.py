"""Theorem 7: any function of the Hessian matrix, through Dirac measures.

With mu_i = delta(e_i) and mu_ij = delta(e_i + e_j) and psi = identity,
    t_i  = Q(e_i)       = H_ii / 2,
    t_ij = Q(e_i + e_j) = (H_ii + H_jj) / 2 + H_ij,
so H_ii = 2 t_i and H_ij = t_ij - t_i - t_j, and phi rebuilds H and applies the target.
Only the entries the target mentions get a component, so m <= d(d+1)/2; each component
costs one gradient evaluation per step (the point masses need a single sample).
"""

from __future__ import annotations

import sympy as sp

from ..distributions import DiracAt, t
from ..measure import Measure, SampleGroup, phi_symbols
from ..spectral import HEntry
from . import Decline, Request, Strategy, make_measure

NAME = "dirac"
SUMMARY = "Theorem 7: any function of the Hessian matrix H (concrete d) via Dirac measures at e_i, e_i + e_j"
#: Components (gradient evaluations per step) allowed without ``force=True``.
MAX_COMPONENTS = 64


def derive(request: Request) -> Measure:
    entries = sorted(request.target.atoms(HEntry), key=lambda e: (int(e.args[0]), int(e.args[1])))
    diagonal = sorted({int(i) for e in entries for i in e.args})
    off_diagonal = [(int(e.args[0]), int(e.args[1])) for e in entries if e.args[0] != e.args[1]]
    supports = [(i,) for i in diagonal] + off_diagonal
    m = len(supports)
    if m > MAX_COMPONENTS and not request.force:
        raise Decline(f"needs m = {m} Dirac components, i.e. {m} gradient evaluations per step; the limit is "
                      f"{MAX_COMPONENTS} (pass force=True / --force to go on)")
    args = dict(zip(supports, phi_symbols(m)))
    rebuild = {HEntry(i, i): 2 * args[(i,)] for i in diagonal}
    rebuild.update({HEntry(i, j): args[(i, j)] - args[(i,)] - args[(j,)] for i, j in off_diagonal})
    phi = request.target.xreplace(rebuild)
    steps = (
        f"target = {sp.sstr(request.target)}",
        "Theorem 7: Q(e_i) = H_ii/2 and Q(e_i + e_j) = (H_ii + H_jj)/2 + H_ij with psi = identity",
        f"the target uses {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} of H: {m} point masses "
        f"(the full construction would use d(d+1)/2 = {request.d * (request.d + 1) // 2})",
        "phi rebuilds H_ii = 2 t_i, H_ij = t_ij - t_i - t_j and applies the target",
    )
    groups = tuple(SampleGroup(DiracAt(support), (c,)) for c, support in enumerate(supports))
    return make_measure(request, phi=phi, psi=(t,) * m, groups=groups, strategy=NAME, steps=steps,
                        assumptions=(f"d = {request.d} perturbed parameters (H is {request.d} x {request.d})",))


STRATEGIES = (Strategy(NAME, SUMMARY, derive, matrix=True),)
