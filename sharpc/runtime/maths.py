"""Scalar maths of a step: derivatives of phi and psi where the compiler printed none, and the
polynomial roots the universality constructions' generated code calls."""

import warnings
from collections.abc import Callable

import torch


def polynomial_root(k: int, *coefficients: torch.Tensor) -> torch.Tensor:
    """Real part of the k-th largest root of s^d + a_1 s^(d-1) + ... + a_d (sharpc's RootEig).

    The roots are the eigenvalues of the companion matrix, so the result is differentiable
    in the coefficients wherever the roots are simple.
    """
    a = torch.stack(coefficients)
    d = a.shape[0]
    companion = torch.cat([-a.unsqueeze(0), torch.eye(d - 1, d, dtype=a.dtype, device=a.device)])
    roots = torch.linalg.eigvals(companion).real
    return torch.sort(roots, descending=True).values[k]


def autodiff_slopes(f: Callable, t: torch.Tensor, *args) -> torch.Tensor:
    """d f(t, *args) / dt for every output of f, by one forward-mode pass (t is a scalar).

    Automatic differentiation, not hand derivatives; dual numbers cost ~10x less per call
    than torch.func.jacfwd on CPU, and this runs once per perturbed pass.
    """
    with torch.autograd.forward_ad.dual_level():
        out = f(torch.autograd.forward_ad.make_dual(t, torch.ones_like(t)), *args)
        tangent = torch.autograd.forward_ad.unpack_dual(out).tangent
    return torch.zeros_like(out) if tangent is None else tangent


def load_forward_ad() -> None:
    """Make torch load its forward-AD decompositions now, outside any step.

    torch scripts them on first use and warns that torch.jit.script is deprecated (its own
    warning); under -W error that would abort a step, so the load happens here, quietly.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
        with torch.autograd.forward_ad.dual_level():
            torch.autograd.forward_ad.make_dual(torch.zeros(()), torch.ones(()))


def value_and_grad(f: Callable, x: torch.Tensor, *args) -> tuple:
    """f(x, *args) and its gradient in x by reverse mode (once per step; ~3x cheaper than torch.func.grad)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y = f(x, *args)
        if not y.requires_grad:  # phi does not depend on its arguments
            return y.detach(), torch.zeros_like(x)
        (grad,) = torch.autograd.grad(y, x)
    return y.detach(), grad


class Scalars:
    """Constants (numbers, or tuples of them) as tensors, made once per (value, dtype, device).

    An operation between two 0-d tensors dispatches about three times faster than one that
    wraps a Python number first, and a tiny model's step does dozens of them. The result is
    the same: a Python number in an operation with a tensor is converted to the tensor's dtype.
    They are filled on the device (``torch.full``): copying a host tensor there would wait for
    the device, and an annealed rho makes a new constant every step.
    """

    def __init__(self) -> None:
        self._made: dict = {}

    def __call__(self, value: float, like: torch.Tensor) -> torch.Tensor:
        key = (value, like.dtype, like.device)
        made = self._made.get(key)
        if made is None:
            if len(self._made) > 64:  # an annealed rho makes a new constant each step: start over
                self._made.clear()
            made = self._made[key] = filled(value, like.dtype, like.device)
        return made


def filled(value: float | tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``value`` (a number, or a tuple of them) as a tensor made by fill kernels on the device, not by
    a host-to-device copy (which waits for the device)."""
    if isinstance(value, tuple):
        return torch.stack([torch.full((), v, dtype=dtype, device=device) for v in value])
    return torch.full((), value, dtype=dtype, device=device)
