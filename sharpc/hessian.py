"""Measuring sharpness of real models: Hessian-vector products and spectral estimators.

    >>> from sharpc import hessian
    >>> H = hessian.HessianOperator(model, loss_fn, (inputs, targets))
    >>> hessian.hutchinson_trace(H, probes=100)       # Estimate(value, stderr, samples, details)
    >>> hessian.lanczos(H, k=5, iterations=50).eigenvalues
    >>> hessian.evaluate(sharpc.compile("sum(l**2)"), model, loss_fn, (inputs, targets))

Conventions, and why:

* The loss is the mean over all examples of ``data``: ``loss_fn`` returns a batch's mean
  (torch's default reduction) and each batch is weighted by its size.
* :class:`HessianOperator` builds the gradient's graph once (``create_graph=True``); each
  product H v is one more backward pass through it (double backward measured 2x faster than
  jvp-of-grad on CPU). The operator is a snapshot of the model at construction: updating
  the parameters in place afterwards makes torch refuse the next product.
* Vectors and every sum over probes are float64 (``dtype``); the model keeps its own
  precision, so a float32 model gives H v to float32 accuracy, summed without further loss.
* The loops never wait for the device (no ``.item()``, ``float(t)`` or ``if tensor``):
  samples stay tensors and become Python floats in one transfer at the end. Probes are drawn
  where ``generator`` lives: give one on the operator's device to avoid copies.
* The estimators accept any :class:`Operator` (``matvec``, ``dim``, ``dtype``, ``device``),
  e.g. :class:`DiagonalScaled` for the Hessian an adaptive measure sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import sympy as sp
import torch
from sympy.utilities.iterables import multiset_partitions
from torch import Tensor, nn

from .distributions import Adaptive
from .errors import SharpcError
from .measure import Measure
from .spectral import D, Eig, EMax, EMin, ESum, HEntry, lam, reductions
from .verify import target_at

#: Largest dimension :meth:`HessianOperator.dense` builds without ``force=True``.
DENSE_LIMIT = 5000
#: Most power sums in one product that :func:`evaluate` estimates (the U-statistic has Bell(m) terms).
MAX_DEGREE = 8

Batch = tuple[Tensor, Tensor]
ProbeDistribution = Literal["rademacher", "gaussian"]


@dataclass(frozen=True)
class Estimate:
    """A value with its standard error (0 for exact values) and how it was obtained."""

    value: float
    stderr: float
    samples: int
    details: dict[str, Any] = field(default_factory=dict)


class Operator(Protocol):
    """A symmetric linear map on flat vectors: all that the estimators need."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------- operators


class HessianOperator:
    """The Hessian of the mean loss over ``data`` with respect to ``params``, as products H v.

    Args:
        model: called as ``model(inputs)``.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: one ``(inputs, targets)`` batch or an iterable of them, read once. The graphs
            of all batches are kept, so this is a fixed batch or a small subset of the data.
        params: what to differentiate with respect to (default: every parameter that
            requires grad), flattened in this order.
        mode: ``"eval"`` or ``"train"`` puts every submodule in that mode for the forward
            pass (train: batch statistics in BatchNorm, one dropout mask shared by all
            products); ``None`` keeps the modes as they are. Afterwards every submodule gets
            its own training flag back, also when the forward raises.
        dtype: the dtype of vectors and results; products are computed in the model's own
            precision and cast.

    The forward pass runs on copies of the buffers, so it never changes the model: BatchNorm
    running statistics stay as they were even in train mode.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 data: Batch | Iterable[Batch], *, params: Iterable[Tensor] | None = None,
                 mode: Literal["eval", "train"] | None = "eval", dtype: torch.dtype = torch.float64):
        if mode not in ("eval", "train", None):
            raise SharpcError(f"mode must be 'eval', 'train' or None, got {mode!r}")
        self.params = tuple(p for p in model.parameters() if p.requires_grad) if params is None else tuple(params)
        if not self.params:
            raise SharpcError("there are no parameters to differentiate")
        batches = _batches(data)
        examples = sum(len(inputs) for inputs, _ in batches)
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
        with _modes(model, mode), torch.enable_grad():
            loss = 0.0
            for inputs, targets in batches:
                outputs = torch.func.functional_call(model, buffers, (inputs,))
                batch_loss = loss_fn(outputs, targets)
                if not isinstance(batch_loss, Tensor) or batch_loss.dim() != 0:
                    got = tuple(batch_loss.shape) if isinstance(batch_loss, Tensor) else type(batch_loss).__name__
                    raise SharpcError(f"loss_fn must return the batch's mean loss as a 0-d tensor, got {got}")
                loss = loss + batch_loss * (len(inputs) / examples)
            if not torch.isfinite(loss):
                raise SharpcError(f"the loss is {float(loss)} on this data: its Hessian has no eigenvalues to measure")
            self._grads = torch.autograd.grad(loss, self.params, create_graph=True, materialize_grads=True)
        self._sizes = [p.numel() for p in self.params]
        self.dim = sum(self._sizes)
        self.dtype = dtype
        self.device = self.params[0].device

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector ``v`` of length ``dim``: the gradient of <grad L, v>."""
        if v.shape != (self.dim,):
            raise SharpcError(f"expected a vector of length {self.dim}, got shape {tuple(v.shape)}")
        with torch.enable_grad():
            pieces = v.detach().split(self._sizes)
            dot = sum((g * u.view_as(g).to(g.dtype)).sum() for g, u in zip(self._grads, pieces))
            products = torch.autograd.grad(dot, self.params, retain_graph=True, materialize_grads=True)
        return torch.cat([h.reshape(-1) for h in products]).to(self.dtype)

    @torch.no_grad()
    def dense(self, *, force: bool = False) -> Tensor:
        """The exact d x d Hessian, one product per column; refused above DENSE_LIMIT unless ``force``."""
        if self.dim > DENSE_LIMIT and not force:
            raise SharpcError(f"the Hessian is {self.dim} x {self.dim}; dense() stops at {DENSE_LIMIT} "
                              "(pass force=True, or use the estimators)")
        matrix = torch.empty(self.dim, self.dim, dtype=self.dtype, device=self.device)
        unit = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for i in range(self.dim):
            unit[i] = 1
            matrix[i] = self.matvec(unit)
            unit[i] = 0
        return (matrix + matrix.mT) / 2  # symmetric up to rounding; exactly, for eigvalsh

    def exact_eigenvalues(self, *, force: bool = False) -> Tensor:
        """All eigenvalues of :meth:`dense`, ascending."""
        return torch.linalg.eigvalsh(self.dense(force=force))


class DiagonalScaled:
    """diag(s) H diag(s): with s = |x| this is the Hessian an adaptive (scale-invariant) measure sees."""

    def __init__(self, operator: HessianOperator, scale: Tensor):
        if scale.shape != (operator.dim,):
            raise SharpcError(f"expected a scale of length {operator.dim}, got shape {tuple(scale.shape)}")
        self.operator = operator
        self.scale = scale.detach().to(device=operator.device, dtype=operator.dtype)
        self.dim, self.dtype, self.device = operator.dim, operator.dtype, operator.device

    def matvec(self, v: Tensor) -> Tensor:
        return self.scale * self.operator.matvec(self.scale * v)

    def dense(self, *, force: bool = False) -> Tensor:
        return self.scale[:, None] * self.operator.dense(force=force) * self.scale

    def exact_eigenvalues(self, *, force: bool = False) -> Tensor:
        return torch.linalg.eigvalsh(self.dense(force=force))


def _batches(data: Batch | Iterable[Batch]) -> list[Batch]:
    """``data`` as a list of batches; a single batch is a pair whose inputs are a tensor."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return [(data[0], data[1])]
    batches = [(inputs, targets) for inputs, targets in data]
    if not batches:
        raise SharpcError("data holds no batches")
    return batches


@contextmanager
def _modes(model: nn.Module, mode: str | None):
    """Every submodule in ``mode`` inside the block; each one's own training flag restored after."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        if mode is not None:
            model.train(mode == "train")
        yield
    finally:
        for module, training in flags:
            module.training = training


# --------------------------------------------------------------------------- Hutchinson family


def _random(op: Operator, distribution: ProbeDistribution, generator: torch.Generator | None, *batch: int) -> Tensor:
    """Probes of shape (*batch, dim) with E[z z^T] = I, drawn where the generator lives."""
    device = op.device if generator is None else generator.device
    shape = (*batch, op.dim)
    if distribution == "gaussian":
        z = torch.randn(shape, generator=generator, dtype=op.dtype, device=device)
    elif distribution == "rademacher":
        z = torch.empty(shape, dtype=op.dtype, device=device).bernoulli_(0.5, generator=generator).mul_(2).sub_(1)
    else:
        raise SharpcError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    return z.to(op.device)


def _check_count(name: str, value: int, least: int) -> None:
    if not isinstance(value, int) or value < least:
        raise SharpcError(f"{name} must be an integer >= {least}, got {value!r}")


def _estimate(samples: Tensor, **details: Any) -> Estimate:
    """Mean and standard error of i.i.d. samples, moved to the host in one transfer."""
    n = samples.numel()
    value, stderr = torch.stack([samples.mean(), samples.std() / math.sqrt(n)]).tolist()
    return Estimate(value, stderr, n, details)


@torch.no_grad()
def power_samples(op: Operator, orders: Sequence[int], probes: int, *, distribution: ProbeDistribution = "rademacher",
                  generator: torch.Generator | None = None) -> Tensor:
    """z_i^T H^k z_i for each probe z_i (rows) and each k in ``orders`` (columns); E = tr(H^k).

    One Krylov sequence z, Hz, ..., H^a z with a = ceil(max(orders) / 2) serves all orders,
    since z^T H^k z = (H^(k//2) z)^T (H^(k - k//2) z): a probe costs a products.
    """
    _check_count("probes", probes, 1)
    if not orders or any(not isinstance(k, int) or k < 0 for k in orders):
        raise SharpcError(f"orders must be non-negative integers, got {orders!r}")
    rows = []
    for _ in range(probes):
        krylov = [_random(op, distribution, generator)]
        for _ in range((max(orders) + 1) // 2):
            krylov.append(op.matvec(krylov[-1]))
        rows.append(torch.stack([krylov[k // 2] @ krylov[k - k // 2] for k in orders]))
    return torch.stack(rows)


def power_sum(op: Operator, k: int, probes: int = 100, *, distribution: ProbeDistribution = "rademacher",
              generator: torch.Generator | None = None) -> Estimate:
    """tr(H^k) = sum_i l_i^k by Hutchinson: the mean of z^T H^k z over probes."""
    _check_count("probes", probes, 2)
    samples = power_samples(op, [k], probes, distribution=distribution, generator=generator)[:, 0]
    return _estimate(samples, method="hutchinson", k=k, distribution=distribution, matvecs=probes * ((k + 1) // 2))


def hutchinson_trace(op: Operator, probes: int = 100, *, distribution: ProbeDistribution = "rademacher",
                     generator: torch.Generator | None = None) -> Estimate:
    """tr(H); Rademacher probes have the smaller variance, 2 sum_{i != j} H_ij^2."""
    return power_sum(op, 1, probes, distribution=distribution, generator=generator)


def frobenius_squared(op: Operator, probes: int = 100, *, distribution: ProbeDistribution = "gaussian",
                      generator: torch.Generator | None = None) -> Estimate:
    """||H||_F^2 = tr(H^2) as the mean of ||H z||^2 (the paper's Figure 1 uses Gaussian z)."""
    return power_sum(op, 2, probes, distribution=distribution, generator=generator)


@torch.no_grad()
def hutchpp_trace(op: Operator, matvecs: int = 102, *, distribution: ProbeDistribution = "rademacher",
                  generator: torch.Generator | None = None) -> Estimate:
    """tr(H) by Hutch++ (Meyer, Musco, Musco and Woodruff 2021), using ``matvecs`` products.

    A third of them sketch H's range (Q = qr(H S)), a third give tr(Q^T H Q) exactly, and
    the rest estimate the trace of the deflated (I - QQ^T) H (I - QQ^T) by Hutchinson. Only
    that part is random, so the standard error is its own; when a few large eigenvalues
    dominate, it is far smaller than plain Hutchinson's at the same cost.
    """
    _check_count("matvecs", matvecs, 4)
    sketch = matvecs // 3
    rest = matvecs - 2 * sketch
    sketched = torch.stack([op.matvec(s) for s in _random(op, distribution, generator, sketch)])
    basis = torch.linalg.qr(sketched.mT).Q  # (d, sketch), orthonormal columns
    range_trace = sum(q @ op.matvec(q) for q in basis.mT)
    samples = []
    for _ in range(rest):
        z = _random(op, distribution, generator)
        z = z - basis @ (basis.mT @ z)
        samples.append(z @ op.matvec(z))
    return _estimate(range_trace + torch.stack(samples), method="hutch++", distribution=distribution,
                     matvecs=2 * sketch + rest, sketch=sketch)


# --------------------------------------------------------------------------- Lanczos family


def _orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    """``w`` minus its projection on the orthonormal rows of ``basis``, twice ("twice is enough")."""
    for _ in range(2):
        w = w - basis.mT @ (basis @ w)
    return w


def _tridiagonal(diagonal: Tensor, off: Tensor) -> Tensor:
    return torch.diag_embed(diagonal) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


def _lanczos(op: Operator, start: Tensor, steps: int,
             generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """``steps`` Lanczos steps from ``start`` with full reorthogonalization.

    Returns T's diagonal, the betas and the orthonormal basis (rows). ``beta[:-1]`` is T's
    off-diagonal and ``beta[-1]`` the norm of the last residual. When the Krylov space is
    exhausted (beta below sqrt(eps) ||H v||) the next vector is a fresh random one orthogonal
    to the basis and its beta is 0, so T splits into blocks instead of normalizing rounding
    noise; torch.where makes that choice without waiting for the device.
    """
    basis = start.new_zeros(steps, op.dim)
    alpha, beta = start.new_zeros(steps), start.new_zeros(steps)
    tolerance = math.sqrt(torch.finfo(op.dtype).eps)
    v = start / start.norm()
    for j in range(steps):
        basis[j] = v
        w = op.matvec(v)
        alpha[j] = v @ w
        residual = _orthogonalize(w, basis[: j + 1])
        exhausted = residual.norm() <= tolerance * w.norm()
        beta[j] = torch.where(exhausted, 0.0, residual.norm())
        if j + 1 < steps:
            fresh = _orthogonalize(_random(op, "gaussian", generator), basis[: j + 1])
            v = torch.where(exhausted, fresh / fresh.norm(), residual / residual.norm())
    return alpha, beta, basis


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """The top-k Ritz pairs and how far each has converged (tensors on the operator's device).

    ``residuals[i]`` = ||H x_i - theta_i x_i|| (as |beta_m y_i[-1]|): some eigenvalue lies
    within it of ``eigenvalues[i]``. ``changes[i]`` is how far the last step moved that Ritz
    value (inf when the step before had fewer than i + 1 of them).
    """

    eigenvalues: Tensor  #: (k,), descending
    vectors: Tensor  #: (k, d), orthonormal rows
    residuals: Tensor  #: (k,)
    changes: Tensor  #: (k,)
    iterations: int


@torch.no_grad()
def lanczos(op: Operator, k: int = 1, *, iterations: int = 30,
            generator: torch.Generator | None = None) -> LanczosResult:
    """The k largest eigenvalues by Lanczos with full reorthogonalization.

    ``iterations`` (capped at d) is both the number of products and the Krylov dimension.
    Extreme eigenvalues converge first, but clustered ones need many steps (hessian-eigenthings
    defaults to 2): read the convergence report rather than trusting a fixed count.
    The basis costs iterations x d numbers of memory.
    """
    _check_count("k", k, 1)
    _check_count("iterations", iterations, 1)
    steps = min(iterations, op.dim)
    if steps < k:
        raise SharpcError(f"k = {k} eigenvalues need at least k Lanczos iterations (got {iterations}, d = {op.dim})")
    alpha, beta, basis = _lanczos(op, _random(op, "gaussian", generator), steps, generator)
    values, ritz = torch.linalg.eigh(_tridiagonal(alpha, beta[:-1]))
    values, ritz = values.flip(0)[:k], ritz.flip(1)[:, :k]
    previous = torch.linalg.eigvalsh(_tridiagonal(alpha[:-1], beta[:-2])).flip(0)[:k]
    changes = torch.full_like(values, math.inf)
    changes[: len(previous)] = (values[: len(previous)] - previous).abs()
    return LanczosResult(values, ritz.mT @ basis, (beta[-1] * ritz[-1]).abs(), changes, steps)


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """SLQ's Gauss quadratures of H's spectral measure, one per probe (rows).

    Each row's weights sum to 1; the density estimate is their average over probes,
    (1/n) sum_i sum_j weights_ij delta(x - nodes_ij). With m nodes a quadrature is exact for
    polynomials of degree up to 2m - 1, so tr(H) and tr(H^2) carry only probe noise.
    """

    nodes: Tensor  #: (probes, m) Ritz values
    weights: Tensor  #: (probes, m) squared first components of T's eigenvectors
    squared_norms: Tensor  #: (probes,) ||z||^2: z^T f(H) z = ||z||^2 sum_j weights_j f(nodes_j)
    dim: int

    def density(self, grid: Tensor | np.ndarray | Sequence[float], width: float) -> Tensor:
        """The density smoothed by a Gaussian kernel of standard deviation ``width``, at ``grid`` (integral 1)."""
        x = torch.as_tensor(grid, dtype=self.nodes.dtype, device=self.nodes.device)
        kernel = torch.exp(-0.5 * ((x[:, None, None] - self.nodes) / width) ** 2) / (width * math.sqrt(2 * math.pi))
        return (kernel * self.weights).sum((1, 2)) / self.nodes.shape[0]

    def trace(self, f: Callable[[Tensor], Tensor]) -> Estimate:
        """tr f(H) for an elementwise torch function f, with its standard error across probes."""
        _check_count("probes", self.nodes.shape[0], 2)
        return _estimate(self.squared_norms * (self.weights * f(self.nodes)).sum(1), method="slq",
                         iterations=self.nodes.shape[1])


@torch.no_grad()
def slq(op: Operator, probes: int = 10, iterations: int = 30, *, distribution: ProbeDistribution = "rademacher",
        generator: torch.Generator | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature (Ubaru, Chen and Saad 2017; Ghorbani et al. 2019).

    Each probe z runs ``iterations`` Lanczos steps (capped at d) from z / ||z||; T's
    eigenvalues are the nodes and the squared first components of its eigenvectors the
    weights of a Gauss quadrature of z^T f(H) z / ||z||^2. The small tridiagonal matrices
    are diagonalized together after the loop.
    """
    _check_count("probes", probes, 1)
    _check_count("iterations", iterations, 1)
    steps = min(iterations, op.dim)
    tridiagonals, squared_norms = [], []
    for _ in range(probes):
        z = _random(op, distribution, generator)
        alpha, beta, _ = _lanczos(op, z, steps, generator)
        tridiagonals.append(_tridiagonal(alpha, beta[:-1]))
        squared_norms.append(z @ z)
    nodes, vectors = torch.linalg.eigh(torch.stack(tridiagonals))
    return SpectralDensity(nodes, vectors[:, 0, :] ** 2, torch.stack(squared_norms), op.dim)


@torch.no_grad()
def logdet(op: HessianOperator | DiagonalScaled, threshold: float, *, exact_limit: int = DENSE_LIMIT,
           probes: int = 30, iterations: int = 30, generator: torch.Generator | None = None) -> Estimate:
    """sum of log|l| over the eigenvalues with |l| > threshold: log det of H on its non-zero spectrum.

    Exact (dense eigenvalues) when d <= exact_limit. Otherwise an SLQ estimate, and only an
    approximate one: the cut at the threshold is not smooth, so a quadrature with few nodes
    misplaces the mass near it, a bias that the standard error does not include.
    """
    if not threshold >= 0:
        raise SharpcError(f"threshold must be >= 0, got {threshold!r}")
    if op.dim <= exact_limit:
        eigenvalues = op.exact_eigenvalues(force=True)
        kept = eigenvalues.abs() > threshold
        value, count = torch.stack([eigenvalues[kept].abs().log().sum(), kept.sum()]).tolist()
        return Estimate(value, 0.0, 0, {"method": "exact", "threshold": threshold, "kept": int(count)})
    density = slq(op, probes, iterations, generator=generator)
    estimate = density.trace(lambda x: torch.where(x.abs() > threshold, x.abs().log(), 0.0))
    return replace(estimate, details={**estimate.details, "threshold": threshold, "approximate": True})


# --------------------------------------------------------------------------- compiled measures


def evaluate(measure: Measure, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
             data: Batch | Iterable[Batch], *, exact_limit: int = DENSE_LIMIT, probes: int = 100,
             generator: torch.Generator | None = None, params: Iterable[Tensor] | None = None,
             mode: Literal["eval", "train"] | None = "eval",
             distribution: ProbeDistribution = "rademacher", iterations: int = 40,
             slq_probes: int = 20) -> Estimate:
    """The measure's target (the sharpness as written, e.g. sum(l**2)) at the model's Hessian.

    Exact when there are at most ``exact_limit`` parameters: the target at the dense Hessian
    (stderr 0). Otherwise stochastic, for targets of the form

        polynomial in power sums  +  sum_i c_i * extreme_i  +  sum_j c_j * sum(f_j(l)):

    products of power sums are averaged over distinct probes (a U-statistic of Hutchinson
    samples z^T H^k z, unbiased, jackknife stderr); max(l), min(l), max(abs(l)) (l[0], l[-1])
    come from Lanczos with ``iterations`` steps, whose residual bounds the error (added to the
    stderr in quadrature, and reported in ``details``); sums of other functions f from
    stochastic Lanczos quadrature (``slq_probes`` probes, ``iterations`` nodes; their stderr is
    over probes, the quadrature's bias is not in it). Anything else above the limit (prod,
    l[k], products of extremes, entries of H) is a SharpcError. For an adaptive
    (scale-invariant) measure, l are the eigenvalues of diag|x| H diag|x|, as in its
    optimizer. ``params`` and ``mode`` are passed to :class:`HessianOperator`.
    """
    if not isinstance(exact_limit, int) or isinstance(exact_limit, bool) or exact_limit < 0:
        raise SharpcError(f"exact_limit must be an integer >= 0 (0: always estimate), got {exact_limit!r}")
    hessian = HessianOperator(model, loss_fn, data, params=params, mode=mode)
    if measure.d is not None and measure.d != hessian.dim:
        raise SharpcError(f"the measure was compiled for d = {measure.d}, but the model has {hessian.dim} parameters")
    op: HessianOperator | DiagonalScaled = hessian
    if any(isinstance(group.distribution, Adaptive) for group in measure.groups):
        op = DiagonalScaled(hessian, torch.cat([p.detach().abs().reshape(-1) for p in hessian.params]))
    if op.dim <= exact_limit:
        value = target_at(measure.target, op.dense(force=True).cpu().numpy())
        return Estimate(value, 0.0, 0, {"method": "exact", "d": op.dim})
    parts = _parts_at_scale(measure.target.subs(D, op.dim))
    if parts is None:
        raise SharpcError(f"{measure.source!r} is not a polynomial in power sums plus multiples of max(l), min(l), "
                          "max(abs(l)) and sums sum(f(l)), so it has no estimate at scale, and the model has "
                          f"{op.dim} > exact_limit = {exact_limit} parameters for the exact Hessian (raise "
                          "exact_limit, or see lanczos, slq and logdet)")
    polynomial, extremes, sums = parts
    pieces = [_polynomial(op, polynomial, probes, distribution, generator)] if polynomial else []
    if extremes:
        pieces.append(_extremes(op, extremes, iterations, generator))
    if sums:
        pieces.append(_spectral_sums(op, sums, slq_probes, iterations, distribution, generator))
    value = sum(piece.value for piece in pieces)
    stderr = math.sqrt(sum(piece.stderr ** 2 for piece in pieces))
    if len(pieces) == 1:
        return pieces[0]
    return Estimate(value, stderr, max(piece.samples for piece in pieces),
                    {"method": "sum of parts", "parts": [piece.details for piece in pieces]})


#: The extreme eigenvalues evaluate estimates by Lanczos, as (top of H, top of -H) combinations.
_EXTREMES = {EMax(lam): "top", EMin(lam): "bottom", EMax(sp.Abs(lam)): "magnitude",
             Eig(0): "top", Eig(-1): "bottom"}


def _parts_at_scale(target: sp.Expr) -> tuple | None:
    """(power-sum terms or [], [(c, which)], [(c, f)]) with target = their sum; None if it is not so."""
    polynomial, extremes, sums = sp.Integer(0), [], []
    for term in sp.Add.make_args(sp.expand(target)):
        others = [a for a in reductions(term) | term.atoms(Eig) if _power_order(a) is None]
        if not others:
            polynomial += term
            continue
        if len(others) != 1:
            return None
        (atom,) = others
        coefficient = sp.simplify(term / atom)
        if reductions(coefficient) or coefficient.has(Eig) or not coefficient.is_number:
            return None
        if atom in _EXTREMES:
            extremes.append((float(coefficient), _EXTREMES[atom]))
        elif isinstance(atom, ESum) and atom.body.free_symbols <= {lam}:
            sums.append((float(coefficient), atom.body))
        else:
            return None
    terms = _power_sum_terms(polynomial)
    if terms is None:
        return None
    return ([] if polynomial == 0 else terms), extremes, sums


class Negated:
    """-H: Lanczos at the top of -H finds the bottom of H."""

    def __init__(self, op: Operator):
        self.op, self.dim, self.dtype, self.device = op, op.dim, op.dtype, op.device

    def matvec(self, v: Tensor) -> Tensor:
        return -self.op.matvec(v)


def _extremes(op: Operator, extremes: list, iterations: int, generator: torch.Generator | None) -> Estimate:
    """sum_i c_i extreme_i by Lanczos at each end of the spectrum that is needed; residuals as errors."""
    whiches = {which for _, which in extremes}
    ends = {}
    if whiches & {"top", "magnitude"}:
        ends["top"] = lanczos(op, iterations=iterations, generator=generator)
    if whiches & {"bottom", "magnitude"}:
        ends["bottom"] = lanczos(Negated(op), iterations=iterations, generator=generator)
    value_of = {"top": (float(ends["top"].eigenvalues[0]), float(ends["top"].residuals[0])) if "top" in ends else None,
                "bottom": (-float(ends["bottom"].eigenvalues[0]), float(ends["bottom"].residuals[0]))
                if "bottom" in ends else None}
    if "magnitude" in whiches:
        value_of["magnitude"] = max(((abs(v), r) for v, r in (value_of["top"], value_of["bottom"])))
    coefficient = {which: sum(c for c, w in extremes if w == which) for which in whiches}  # one error per end
    value = sum(c * value_of[which][0] for which, c in coefficient.items())
    error = math.sqrt(sum((c * value_of[which][1]) ** 2 for which, c in coefficient.items()))
    return Estimate(value, error, 0, {"method": "lanczos", "iterations": iterations,
                                      "residuals": {which: value_of[which][1] for which in whiches}})


def _spectral_sums(op: Operator, sums: list, probes: int, iterations: int, distribution: ProbeDistribution,
                   generator: torch.Generator | None) -> Estimate:
    """sum_j c_j tr f_j(H) by stochastic Lanczos quadrature: one set of probes for all, stderr over probes."""
    _check_count("slq_probes", probes, 2)  # a standard error needs two
    density = slq(op, probes=probes, iterations=iterations, distribution=distribution, generator=generator)
    nodes = density.nodes.cpu().numpy()
    # Our own SymPy expressions in lam only (the parser built them): no user text reaches lambdify.
    total = sum(c * np.broadcast_to(sp.lambdify(lam, body, "numpy")(nodes), nodes.shape) for c, body in sums)
    samples = density.squared_norms * (density.weights * torch.as_tensor(total, dtype=density.weights.dtype,
                                                                          device=density.weights.device)).sum(1)
    return _estimate(samples, method="slq", iterations=density.nodes.shape[1])


def _power_order(atom: sp.Expr) -> int | None:
    """k for the power sum ESum(lam**k), k >= 1; None for any other spectral atom."""
    if isinstance(atom, ESum):
        if atom.body == lam:
            return 1
        if atom.body.is_Pow and atom.body.base == lam and atom.body.exp.is_Integer and atom.body.exp > 0:
            return int(atom.body.exp)
    return None


def _power_sum_terms(target: sp.Expr) -> list[tuple[float, tuple[int, ...]]] | None:
    """``target`` as terms (c, (k_1, ..., k_m)) meaning c p_k1 ... p_km; None if it is not such a polynomial."""
    if target.has(HEntry):
        return None
    atoms = sorted(reductions(target), key=sp.default_sort_key)
    orders = [_power_order(atom) for atom in atoms]
    if None in orders:
        return None
    symbols = [sp.Dummy() for _ in atoms]
    expr = sp.expand(target.xreplace(dict(zip(atoms, symbols))))
    if expr.free_symbols - set(symbols) or not expr.is_polynomial(*symbols):
        return None
    terms = sp.Poly(expr, *symbols).terms() if symbols else [((), expr)]
    return [(float(c), tuple(k for k, e in zip(orders, exponents) for _ in range(e))) for exponents, c in terms]


def _polynomial(op: Operator, terms: list[tuple[float, tuple[int, ...]]], probes: int,
                distribution: ProbeDistribution, generator: torch.Generator | None) -> Estimate:
    """sum_t c_t prod_j p_{k_tj} from one set of probes, unbiased, with a jackknife standard error.

    A product of power sums needs independent estimates of its factors, or E[p^ q^] picks up
    their covariance. Each product is therefore averaged over ordered tuples of *distinct*
    probes (a U-statistic: unbiased, and the lowest-variance unbiased average), and the standard
    error is the jackknife's over leave-one-probe-out values.
    """
    orders = sorted({k for _, factors in terms for k in factors})
    if not orders:
        return Estimate(sum(c for c, _ in terms), 0.0, 0, {"method": "constant"})
    degree = max(len(factors) for _, factors in terms)
    if degree > MAX_DEGREE:
        raise SharpcError(f"products of {degree} power sums are beyond the estimator (at most {MAX_DEGREE})")
    _check_count("probes", probes, max(degree + 1, 2))
    samples = power_samples(op, orders, probes, distribution=distribution, generator=generator)
    column = {k: samples[:, i] for i, k in enumerate(orders)}
    value, left_out = 0.0, 0.0
    for coefficient, factors in terms:
        u, u_left_out = _u_statistic([column[k] for k in factors], probes)
        value, left_out = value + coefficient * u, left_out + coefficient * u_left_out
    variance = (probes - 1) / probes * ((left_out - left_out.mean()) ** 2).sum()
    value, stderr = torch.stack([torch.as_tensor(value, dtype=samples.dtype), variance.sqrt()]).tolist()
    return Estimate(value, stderr, probes, {"method": "hutchinson U-statistic, jackknife stderr", "orders": orders,
                                            "distribution": distribution,
                                            "matvecs": probes * ((max(orders) + 1) // 2)})


def _u_statistic(factors: list[Tensor], n: int) -> tuple[Tensor | float, Tensor | float]:
    """The mean of prod_j factors[j][i_j] over ordered tuples of distinct probes, and its leave-one-out values.

    Sums over distinct tuples come from plain sums by Moebius inversion on set partitions:
    sum_distinct = sum_pi mu(pi) prod_{B in pi} S_B, with S_B = sum_i prod_{j in B} factors[j][i]
    and mu(pi) = prod_B (-1)^(|B|-1) (|B|-1)!. Leaving probe i out subtracts its term from each S_B.
    """
    m = len(factors)
    if m == 0:
        return 1.0, 1.0
    total, left_out = 0.0, 0.0
    for partition in multiset_partitions(list(range(m))):
        mu = math.prod((-1) ** (len(block) - 1) * math.factorial(len(block) - 1) for block in partition)
        terms = [math.prod(factors[j] for j in block) for block in partition]
        total = total + mu * math.prod(term.sum() for term in terms)
        left_out = left_out + mu * math.prod(term.sum() - term for term in terms)
    return total / math.perm(n, m), left_out / math.perm(n - 1, m)
