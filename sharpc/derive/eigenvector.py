"""max(l), min(l) and max(abs(l)) for any d, exactly: a point mass at the extreme eigenvector.

For a unit eigenvector u of H, Q(u) = u^T H u / 2 = l / 2. So mu = delta(u_top), psi = t and
phi = 2 t give S = max(l) (bottom: min(l); the eigenvalue largest in magnitude with
phi = 2 |t|: max(abs(l))). The optimizer tracks u by power iteration, one step per optimizer
step, from the perturbed pair it evaluates anyway (see ``Eigenvector``), so a step costs what
SAM's costs with antithetic differences. Like SAM's direction, mu depends on x: the identity
holds once the iterate has converged.

Power iteration finds the eigenvalue of sign H + shift I largest in magnitude. With
``--bound B`` the shift is B, and the top (bottom) eigenvector is found whenever every
l_i >= -B (<= B); without it the shift is 0 and the identity needs l_i >= 0 (<= 0): near the
minima of trained networks the top eigenvalue dominates the (small) negative ones, so
max(l) needs no bound in practice (docs/spectral.md), min(l) does.
"""

from __future__ import annotations

import functools

import sympy as sp

from ..distributions import Eigenvector, t
from ..domains import intersect
from ..measure import Domain, SampleGroup, phi_symbols
from ..spectral import Eig, EMax, EMin, lam, reductions
from . import Decline, Request, Strategy, affine_in, extremes_as_reductions, make_measure, relation, sign_of

NAME = "eigenvector"
SUMMARY = ("max(l), min(l), max(abs(l)) and sums of them for any d: point masses at the extreme "
           "eigenvectors (power iteration)")

#: The extremes this strategy tracks, and what power iteration calls them.
WHICH = {EMax(lam): "top", EMin(lam): "bottom", EMax(sp.Abs(lam)): "magnitude"}
TEXT = {"top": "max(l)", "bottom": "min(l)", "magnitude": "max(abs(l))"}


def _extremes(request: Request) -> tuple[dict, sp.Expr]:
    """({atom: c}, k) with target = sum of c * atom + k over max(l), min(l), max(abs(l))."""
    target = extremes_as_reductions(request, "l[{k}] is not an extreme eigenvalue (only l[0] = max(l) and "
                                             "l[-1] = min(l))")
    atoms = reductions(target)
    others = [atom for atom in atoms if atom not in WHICH]
    if not atoms or others:
        raise Decline(f"{sp.sstr(others[0]) if others else 'no extreme'} is not max(l), min(l) or max(abs(l))")
    if len(atoms) == 1:
        (atom,) = atoms
        fit = affine_in(target, atom)
        if fit is None:
            raise Decline("the extreme eigenvalue enters non-linearly; only c * max(l) + k is exact here")
        return {atom: fit[0]}, fit[1]
    symbols = {atom: sp.Dummy() for atom in sorted(atoms, key=list(WHICH).index)}  # a stable phi
    replaced = sp.expand(target.xreplace(symbols))
    slopes = {atom: sp.diff(replaced, y) for atom, y in symbols.items()}
    if any(slope.free_symbols & set(symbols.values()) for slope in slopes.values()):
        raise Decline("the extreme eigenvalues enter non-linearly; only sums of c * max(l), c * min(l) and "
                      "c * max(abs(l)) are exact here")
    return slopes, sp.expand(replaced.subs({y: 0 for y in symbols.values()}))


def _group(which: str, bound: float | None) -> tuple[Eigenvector, Domain]:
    """The point mass for one extreme, and the spectra on which its power iteration converges."""
    shift = 0.0 if which == "magnitude" or bound is None else float(bound)
    pass_bound = "" if shift else "; pass --bound B to shift by B"
    if which == "top":
        return Eigenvector(which, shift), Domain(
            lower=-shift if shift else 0.0,
            reason=f"power iteration on H{f' + {shift:g} I' if shift else ''} finds the top eigenvector "
                   f"when no eigenvalue is below {-shift if shift else 0:g}{pass_bound}")
    if which == "bottom":
        return Eigenvector(which, shift), Domain(
            upper=shift, reason=f"power iteration on {f'{shift:g} I - H' if shift else '-H'} finds the bottom "
                                f"eigenvector when no eigenvalue is above {shift:g}{pass_bound}")
    return Eigenvector(which, shift), Domain()


def derive(request: Request):
    if not request.target.has(EMax, EMin, Eig):
        raise Decline("no max, min or l[k] in the target")
    if request.degree is not None:
        raise Decline("--degree asks for an approximation's order (the surrogate strategy)")
    slopes, k = _extremes(request)
    whiches = [WHICH[atom] for atom in slopes]
    if {"top", "bottom"} <= set(whiches) and request.bound is None:
        raise Decline("max(l) and min(l) together need --bound B: power iteration on H + B I and on B I - H "
                      "(without it, one needs l >= 0 and the other l <= 0)")
    args = phi_symbols(len(slopes))
    pieces = [_group(which, request.bound) for which in whiches]
    bases = [2 * sp.Abs(a) if which == "magnitude" else 2 * a for a, which in zip(args, whiches)]
    if len(slopes) == 1:  # target = scale * S + k, S the extreme itself
        sign = sign_of(next(iter(slopes.values())))
        scale, phi = sp.simplify(sign * next(iter(slopes.values()))), sign * bases[0]
    else:
        sign, scale, phi = 1, sp.Integer(1), sum(c * base for c, base in zip(slopes.values(), bases))
    domains = [domain for _, domain in pieces]
    domain = functools.reduce(intersect, domains)  # never empty: max and min together have a --bound
    described = ", ".join(f"{TEXT[which]}: {mu.describe()}" for which, (mu, _) in zip(whiches, pieces))
    steps = (
        f"target = {sp.sstr(request.target)}",
        "for a unit eigenvector u of H, Q(u) = u^T H u / 2 = l / 2 (Rayleigh quotient)",
        f"mu = {described}; psi = t, phi = {sp.sstr(phi)}: S = " + sp.sstr(
            sum((c * sp.Symbol(TEXT[w]) for c, w in zip(slopes.values(), whiches))) if len(slopes) > 1
            else sp.Symbol(TEXT[whiches[0]])),
        "the optimizer updates each u by one power-iteration step per optimizer step, from its own perturbed pair",
        relation(scale, sign, k),
    )
    assumptions = (
        "mu depends on x (as SAM's does): S is the target once the power iteration has converged, "
        "which takes about log(d) / log(l_1 / l_2) steps for eigenvalue gap l_1 / l_2",
        f"{domain.describe()} ({domain.reason})" if domain != Domain() else
        "the eigenvalue largest in magnitude (either sign)",
    )
    groups = tuple(SampleGroup(mu, (j,)) for j, (mu, _) in enumerate(pieces))
    return make_measure(request, phi=phi, psi=(t,) * len(slopes), groups=groups, strategy=NAME,
                        steps=steps, scale=scale, offset=k, domain=domain, assumptions=assumptions)


STRATEGIES = (Strategy(NAME, SUMMARY, derive),)
