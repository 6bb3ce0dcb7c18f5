"""The estimator: S and each accumulator's weight from a step's Deltas.

The plug-in estimate phi(mean psi(Delta)) (Algorithm 2) or the U-statistic of the power sums
(polynomial measures), importance-weighted groups in logs, and the target's scale, offset and
flat value. Built once per optimizer from the generated class's functions.
"""

import math

import torch

from .maths import Scalars, autodiff_slopes, filled, value_and_grad
from .step import Settings


class RunningMean:
    """A bias-corrected exponential mean of |target - target at H = 0|, kept on the device (``relative=True``)."""

    decay = 0.99

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0
        self._pending: torch.Tensor | None = None

    def proposed(self, value: torch.Tensor) -> torch.Tensor:
        """The mean if ``value`` were added; nothing changes until ``commit``."""
        total = value.abs() * (1 - self.decay) + (0 if self.total is None else self.total * self.decay)
        self._pending = total
        return total / (1 - self.decay ** (self.count + 1))

    def commit(self, keep: torch.Tensor | None = None) -> None:
        """Keep the proposed value (a step that went through); with ``keep``, a 0-d bool on the
        device, only where it is true (a step skipped on the device leaves the mean as it was)."""
        if self._pending is None:
            return
        if keep is None:
            self.total, self.count = self._pending, self.count + 1
        else:
            before = torch.zeros_like(self._pending) if self.total is None else self.total
            self.total, self.count = torch.where(keep, self._pending, before), self.count + keep.long()
        self._pending = None

    def state(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load(self, state: dict) -> None:
        self.total, self.count = state["total"], state["count"]


class Estimator:
    """phi, psi (or the U-statistic) and their derivatives, applied to one step's samples."""

    def __init__(self, owner) -> None:
        self.phi, self.psi, self.ustat = owner.phi, owner.psi, owner.ustat
        self.phi_grad, self.psi_slopes, self.ustat_grad = owner.phi_grad, owner.psi_slopes, owner.ustat_grad
        self.symbolic = owner.derivatives == "symbolic"
        self.groups, self.power_sums, self.m = owner.sample_groups, owner.power_sums, owner.m
        self.scale, self.offset = owner.scale, owner.offset
        self.magnitude = RunningMean()     # relative=True: the running |target - flat value|
        self._constants: dict = {}         # the target's scale, offset and shift at the last (d, rho)
        self.scalars = Scalars()
        self.all_components = tuple(range(self.m))
        self.powers = tuple(float(k) for _, k in self.power_sums)

    def delta(self, loss: torch.Tensor, loss0: torch.Tensor, linear: torch.Tensor | None,
              cfg: Settings) -> torch.Tensor:
        """Delta = (L(x + e) - L(x) [- g0 . e]) / rho**2, the estimate of v^T H v / 2."""
        if linear is not None:
            loss = loss - linear
        return (loss - loss0) / self.scalars(cfg.rho ** 2, loss)

    def weights(self, group: int, delta: torch.Tensor, d: torch.Tensor, cfg: Settings):
        """(slot, weight) pairs: how much of this sample's direction each accumulator takes (None: all of it)."""
        if cfg.estimator == "plugin":
            symbolic = self.symbolic
            slopes = (self.psi_slopes(delta, d) if symbolic else autodiff_slopes(self.psi, delta, d)).unbind()
            return [(c, slopes[c]) for c in self.groups[group].components]
        return [(slot, None if k == 1 else delta if k == 2 else delta ** (k - 1))  # None: weight 1
                for slot, (a, k) in enumerate(self.power_sums) if a == group]

    def importance(self, group: int, samples: torch.Tensor, d: torch.Tensor, log_weights: list) -> tuple:
        """For an importance group: per component, log E[w psi] (a log-mean-exp), the sum of
        exp(a_i - max a) (the normalizer of Sums' accumulators) and those terms;
        a_i = log w_i + log psi(Delta_i). Three empty dicts for other groups."""
        means, totals, terms = {}, {}, {}
        if self.groups[group].weighted:
            log_psi, log_w = self.psi(samples, d), torch.stack(log_weights)
            for c in self.groups[group].components:
                exponents = log_w + log_psi[c]
                top = exponents.max()
                terms[c] = torch.exp(exponents - top)
                totals[c] = terms[c].sum()
                means[c] = top + torch.log(totals[c]) - math.log(len(samples))
        return means, totals, terms

    def combine(self, deltas: list, d: torch.Tensor, cfg: Settings, dim: int,
                log_weights: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The target estimate and each accumulator's coefficient in the final gradient (before strength).

        S = phi(...) estimates target = scale * S + offset, and the accumulators hold
        rho**2 * grad S, so the coefficients carry scale / rho**2 (divided by the running
        mean of |target - target at H = 0| when ``relative``).
        """
        n = cfg.n_samples
        if cfg.estimator == "plugin":
            means, counts = [None] * self.m, [1] * self.m
            for a, (group, samples) in enumerate(zip(self.groups, deltas)):
                if group.weighted:  # d log E[w psi] = sum_i exp(a_i - max a) d log psi(Delta_i) / total
                    log_means, totals, _ = self.importance(a, samples, d, log_weights[a])
                    for c in group.components:
                        means[c], counts[c] = log_means[c], totals[c]
                    continue
                values = self.psi(samples, d)
                if group.components == self.all_components:  # one group takes every component
                    means, counts = values.mean(1), [len(samples)] * self.m
                    break
                for c in group.components:
                    means[c], counts[c] = values[c].mean(), len(samples)
            ts = means if isinstance(means, torch.Tensor) else torch.stack(means)
            value, slopes = ((self.phi(ts, d), self.phi_grad(ts, d)) if self.symbolic
                             else value_and_grad(self.phi, ts, d))
            # (a mean over count samples: slope / count; one count for all needs no tensor, one sample no division)
            if all(isinstance(c, int) for c in counts):
                if counts != [1] * self.m:
                    slopes = slopes / (counts[0] if len(set(counts)) == 1 else slopes.new_tensor(counts))
            else:
                slopes = slopes / torch.stack([torch.as_tensor(c, dtype=slopes.dtype, device=slopes.device)
                                               for c in counts])
        else:
            powers = self.scalars(self.powers, deltas[0])  # (one group: every power sum in one kernel)
            sums = ((deltas[0].unsqueeze(0) ** powers.unsqueeze(1)).sum(1) if len(deltas) == 1
                    else torch.stack([(deltas[a] ** k).sum() for a, k in self.power_sums]))
            value, slopes = ((self.ustat(sums, n, d), self.ustat_grad(sums, n, d)) if self.symbolic
                             else value_and_grad(self.ustat, sums, n, d))
            slopes = slopes * powers  # d P_k / d Delta_i = k Delta_i**(k - 1)
        scale, offset, shift, (scale_value, offset_value) = self.target_constants(dim, d, cfg.rho)
        if offset_value != 0:  # (in float64: a determinant's scale may overflow float32)
            estimate = (scale * value + offset).to(value.dtype)
        else:  # 1 * S is S exactly
            estimate = value if scale_value == 1 else (scale * value).to(value.dtype)
        if cfg.relative:  # strength * grad(target) / mean|target - flat| = strength * grad(S) / mean|S + shift|
            magnitude = self.magnitude.proposed(value + shift.to(value.dtype))
            weight = 1 / (cfg.rho ** 2 * magnitude.clamp_min(torch.finfo(value.dtype).tiny))
        else:
            weight = self.scalars(scale_value / cfg.rho ** 2, value)
        return estimate, slopes * weight

    def target_constants(self, dim: int, like: torch.Tensor, rho: float) -> tuple:
        """scale, offset, the shift that makes ``value + shift`` the target's H-dependent part, per
        scale, and the values of scale and offset as Python numbers.

        The shift is -S at a flat point (H = 0, where every difference is 0): ``relative`` then
        divides by |target - target at H = 0|, so a constant in the target (the d of
        sum(exp(l)), the + 5 of sum(l) + 5) changes neither its gradient nor its strength. Where
        S has no finite flat value (importance-sampled Lebesgue measures, log(0)) it is offset / scale,
        and ``relative`` divides by |target|. Computed in float64 (scale can be huge, (2 pi)^d
        for determinants) on the host, once per (d, rho, device), not every step.
        """
        key = (dim, rho, like.device)
        if key not in self._constants:
            d64 = torch.tensor(float(dim), dtype=torch.float64)
            scale, offset = self.scale(d64, d64.new_tensor(rho)), self.offset(d64, d64.new_tensor(rho))
            flat = self.flat_value(d64)
            shift = offset / scale if flat is None else torch.where(torch.isfinite(flat), -flat, offset / scale)
            numbers = [t.tolist() for t in (scale, offset, shift)]  # tensors made on the host here: no device read
            # the latest only: rho may be annealed (filled on the device: no copy that waits for it)
            self._constants = {key: (*(filled(x, torch.float64, like.device) for x in numbers), tuple(numbers[:2]))}
        return self._constants[key]

    def flat_value(self, d: torch.Tensor) -> torch.Tensor | None:
        """phi(psi(0)): S where the loss is flat (None for importance-sampled measures; may be infinite)."""
        if any(group.weighted for group in self.groups):
            return None  # E[w psi(0)] is the Lebesgue measure's infinite mass
        with torch.no_grad():
            return self.phi(self.psi(d.new_zeros(1), d)[:, 0], d).to(d.dtype)
