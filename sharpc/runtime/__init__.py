"""(phi, psi, mu)-SAM on torch: the engine under every optimizer class sharpc emits.

This package imports torch, the standard library and ``sharpc.errors`` (torch-free) only.
``sharpc.emit.standalone`` pastes its modules verbatim, in the order of
``sharpc.emit.RUNTIME_MODULES``, into the standalone modules it writes (with a local
OptimizerError), and ``sharpc.optim`` builds its in-process classes on it, so the two cannot
drift apart. A generated subclass supplies phi, psi (and, for
polynomial measures, an unbiased U-statistic) as torch functions plus its sample groups.

A step minimizes L(x) + strength * target(x), target = scale * S + offset (the constants the
derivation dropped, folded back), with S estimated as in Algorithm 2 of Tahmasebi et al. (2024):
for samples v_i of mu,

    Delta_i = (L(x + rho v_i) - L(x)) / rho**2,     S = phi(mean_i psi(Delta_i)),
    grad = g0 + strength * scale / rho**2 * sum_l d_l phi * mean_i psi_l'(Delta_i) (g_i - g0),

g0 = grad L(x) and g_i = grad L(x + rho v_i) (``difference`` also offers antithetic pairs
x +- rho v_i and a control variate; ``relative`` divides strength by a running |target - its flat value|).
The unbiased estimator replaces phi(means) by a U-statistic U(P_1, ..., P_K) of the power
sums P_k = sum_i Delta_i**k, whose gradient is sum_k dU/dP_k * k * sum_i Delta_i**(k-1)
(g_i - g0). Either way only running sums are
kept: a backup of the perturbed parameters, g0, and one accumulator per psi component
(plug-in) or per power sum (U-statistic), never n gradients. Each is one flat buffer per
(device, dtype), allocated once and kept while the parameter set is unchanged (``Kept``),
so a step's bookkeeping costs a number of kernels independent of the number of tensors.
phi', psi' and dU/dP come from the compiler (SymPy, ``derivatives = "symbolic"``); where it
could not print them the step differentiates by autograd (``derivatives = "autograd"``).

Every perturbed pass replays the clean pass's global RNG state (common random numbers:
identical dropout masks), while perturbations come from the optimizer's own generator.
Scalars stay 0-d tensors on the parameters' device; the only host read is the finiteness
check (one per step; ``nonfinite="ignore"`` drops it, and ``nonfinite="skip"`` with a fused base
optimizer keeps the verdict on the device).

At scale (docs/scaling.md). With ``distributed="sync"`` the ranks of a process group act as
one optimizer on the global batch: the perturbation generators run in lockstep and every
pass's loss is averaged over ranks (a scalar all-reduce), so all ranks compute the same
global Delta_i and weights; the combined gradient is linear in the local gradients once the
weights are known, so it is averaged by a single all-reduce per step, the gradient traffic
of plain data-parallel SGD. ``memory="lean"`` drops the accumulators for n extra forward
passes: losses first (forward only), then the weights, then one weighted backward pass
per point straight into .grad, with the perturbations regenerated from a saved generator state.

The pieces, one module each: ``sampling`` (the measures' draws), ``maths`` (autodiff
fallbacks, polynomial roots), ``replay`` (common random numbers), ``storage`` (flat
buffers), ``ranks`` (communication, FSDP2 shards), ``power`` (power iteration), ``step``
(a step's settings and working set), ``estimator`` (S and the weights from the Deltas),
``accumulate`` (memory="sums" or "lean", chosen at construction) and ``optimizer`` (the step).
"""

import torch  # the generated classes' code refers to torch, GroupSpec, PhiPsiSAM and polynomial_root

from ..errors import OptimizerError
from .maths import polynomial_root
from .optimizer import DEFAULT_RADIUS, DIFFERENCES, POINT_RADIUS, PhiPsiSAM
from .sampling import GroupSpec, draw_, lebesgue_log_weight, sample_rows

__all__ = ["OptimizerError", "GroupSpec", "PhiPsiSAM", "draw_", "sample_rows", "lebesgue_log_weight",
           "polynomial_root", "DEFAULT_RADIUS", "DIFFERENCES", "POINT_RADIUS", "torch"]
