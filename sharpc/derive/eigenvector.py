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

import sympy as sp

from ..distributions import Eigenvector, t
from ..measure import Domain, SampleGroup, phi_symbols
from ..spectral import Eig, EMax, EMin, lam, reductions
from . import Decline, Request, Strategy, affine_in, extremes_as_reductions, make_measure, relation, sign_of

NAME = "eigenvector"
SUMMARY = "max(l), min(l), max(abs(l)) for any d: a point mass at the extreme eigenvector (power iteration)"

(_t1,) = phi_symbols(1)


def _extreme(request: Request) -> tuple[str, sp.Expr, sp.Expr]:
    """(which, c, k) with target = c * extreme + k."""
    target = extremes_as_reductions(request, "l[{k}] is not an extreme eigenvalue (only l[0] = max(l) and "
                                             "l[-1] = min(l))")
    atoms = reductions(target)
    if len(atoms) != 1:
        raise Decline("not c * max(l) + k, c * min(l) + k or c * max(abs(l)) + k")
    (atom,) = atoms
    which = {EMax(lam): "top", EMin(lam): "bottom", EMax(sp.Abs(lam)): "magnitude"}.get(atom)
    if which is None:
        raise Decline(f"{sp.sstr(atom)} is not max(l), min(l) or max(abs(l))")
    fit = affine_in(target, atom)
    if fit is None:
        raise Decline("the extreme eigenvalue enters non-linearly; only c * max(l) + k is exact here")
    return which, *fit


def derive(request: Request):
    if not request.target.has(EMax, EMin, Eig):
        raise Decline("no max, min or l[k] in the target")
    if request.degree is not None:
        raise Decline("--degree asks for an approximation's order (the surrogate strategy)")
    which, c, k = _extreme(request)
    sign = sign_of(c)
    shift = 0.0 if which == "magnitude" or request.bound is None else float(request.bound)
    mu = Eigenvector(which, shift)
    phi = 2 * sp.Abs(_t1) if which == "magnitude" else 2 * _t1
    pass_bound = "" if shift else "; pass --bound B to shift by B"
    if which == "top":
        domain = Domain(lower=-shift if shift else 0.0,
                        reason=f"power iteration on H{f' + {shift:g} I' if shift else ''} finds the top eigenvector "
                               f"when no eigenvalue is below {-shift if shift else 0:g}{pass_bound}")
    elif which == "bottom":
        domain = Domain(upper=shift, reason=f"power iteration on {f'{shift:g} I - H' if shift else '-H'} finds the "
                                            f"bottom eigenvector when no eigenvalue is above {shift:g}{pass_bound}")
    else:
        domain = Domain()
    scale = sp.simplify(sign * c)
    steps = (
        f"target = {sp.sstr(request.target)}",
        "for a unit eigenvector u of H, Q(u) = u^T H u / 2 = l / 2 (Rayleigh quotient)",
        f"mu = {mu.describe()}, psi = t, phi = {sp.sstr(phi)}: S = "
        + {"top": "max(l)", "bottom": "min(l)", "magnitude": "max(abs(l))"}[which],
        "the optimizer updates u by one power-iteration step per optimizer step, from its own perturbed pair",
        relation(scale, sign, k),
    )
    assumptions = (
        "mu depends on x (as SAM's does): S is the target once the power iteration has converged, "
        "which takes about log(d) / log(l_1 / l_2) steps for eigenvalue gap l_1 / l_2",
        f"{domain.describe()} ({domain.reason})" if domain != Domain() else
        "the eigenvalue largest in magnitude (either sign)",
    )
    return make_measure(request, phi=sign * phi, psi=(t,), groups=(SampleGroup(mu, (0,)),), strategy=NAME,
                        steps=steps, scale=scale, offset=k, domain=domain, assumptions=assumptions)


STRATEGIES = (Strategy(NAME, SUMMARY, derive),)
