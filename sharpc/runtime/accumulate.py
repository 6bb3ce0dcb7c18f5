"""Accumulation modes, chosen once at construction: how the perturbed passes become a gradient.

``Sums`` (memory="sums") adds every pass's direction into running sums right away; ``Lean``
(memory="lean") takes the losses first (forward only), then the weights, then one weighted
backward pass per point straight into .grad. Both use the optimizer's shared pass mechanics
(perturb, evaluate, restore) and its estimator.
"""

from collections.abc import Callable

import torch

from .sampling import GroupSpec
from .step import Step


def add_weighted_(acc: torch.Tensor, direction: torch.Tensor, weight: torch.Tensor | None, first: bool) -> None:
    """acc = weight * direction (the step's first term) or acc += weight * direction; None weighs 1."""
    if first:
        acc.copy_(direction) if weight is None else torch.mul(direction, weight, out=acc)
    else:
        acc.add_(direction) if weight is None else acc.addcmul_(direction, weight)


def add_regularizer_(kept, coefficients: torch.Tensor, strength: float | list, clip: float | None) -> None:
    """g0 += strength * sum_slot coefficient * accumulator, in the kept buffers.

    With ``clip``, the added term is scaled down to at most clip * |g0|: heavy-tailed
    estimates (high powers of Delta) cannot throw the step.
    """
    weights_of = [[c * w for w in strength] if isinstance(strength, list) else [c * strength] * len(kept.g0)
                  for c in coefficients.unbind()]
    if clip is None:
        for acc_slot, weights in zip(kept.acc, weights_of):
            for g0, acc, w in zip(kept.g0, acc_slot, weights):
                g0.addcmul_(acc, w)
        return
    regularizer = kept.acc[0]
    for slot, (acc_slot, weights) in enumerate(zip(kept.acc, weights_of)):
        for r, acc, w in zip(regularizer, acc_slot, weights):
            r.mul_(w) if slot == 0 else r.addcmul_(acc, w)
    # norms in float64: gradients scaled by a GradScaler (up to 2**127) overflow a float32 sum of squares
    size = torch.stack(torch._foreach_norm(regularizer, 2, dtype=torch.float64)).norm()
    limit = clip * torch.stack(torch._foreach_norm(kept.g0, 2, dtype=torch.float64)).norm()
    factor = (limit / size.clamp_min(torch.finfo(size.dtype).tiny)).clamp_max(1)
    for g0, r in zip(kept.g0, regularizer):
        g0.add_(r.mul_(factor.to(r.dtype)))


def checksum(losses: list, coefficients: torch.Tensor, kept, gradient: bool = True) -> torch.Tensor:
    """One number that is finite exactly when every loss, coefficient and (with ``gradient``) the
    combined gradient in the kept g0 buffers is: a NaN or inf anywhere makes the sum non-finite,
    and finite values overflow it only beyond float32's range (low-precision gradients are summed
    in float32). Not the estimate itself: a determinant's scale may overflow while the step is sound."""
    stacked = torch.stack(losses)
    total = torch.cat((stacked, coefficients.to(stacked.dtype))).sum()
    if gradient:
        for g, dtype in zip(kept.g0, kept.sum_dtypes):  # one flat buffer per (device, dtype)
            total = total + g.sum(dtype=dtype).to(total.device)
    return total


class Sums:
    """memory="sums": a backup, g0 and one accumulator per slot; 1 + n passes per step."""

    def __init__(self, opt) -> None:
        self.opt = opt

    def passes(self, closure: Callable, s: Step, loss0: torch.Tensor) -> tuple:
        """Every perturbed pass's direction into the running sums; (loss0, S, coefficients)."""
        opt = self.opt
        kept = s.kept
        loss0 = opt._ranks.global_loss(loss0)
        s.losses.append(loss0)
        if opt._ranks.sync and opt._reads_g0(s.cfg):  # the direction or Delta uses the global gradient
            opt._ranks.mean_(kept.g0)
        d = opt._estimator.scalars(float(s.d), loss0)  # phi and psi see d as a 0-d tensor
        written = set()  # slots whose accumulators hold this step's first term (no zeroing pass)
        opt._last_kept = kept
        deltas, running_max = [], {}
        for a, group in enumerate(opt.sample_groups):
            group_deltas = []
            s.log_weights.append([])
            for i in range(group.count(s.cfg.n_samples)):
                s.where = f"perturbed point {i + 1} of {group.count(s.cfg.n_samples)} (sample group {a})"
                linear = opt._perturb(group, s, linear=s.cfg.difference == "control")
                delta = self._perturbed_pass(closure, s, loss0, linear, group)
                if group.weighted:
                    s.log_weights[a].append(s.log_weight)
                    log_psi = opt._estimator.psi(delta, d)
                for slot, weight in opt._estimator.weights(a, delta, d, s.cfg):
                    if group.weighted:
                        exponent = s.log_weight + log_psi[slot]
                        weight = weight * self._rescaled(kept.acc[slot], running_max, slot, exponent)
                    for acc, direction in zip(kept.acc[slot], kept.grad):
                        add_weighted_(acc, direction, weight, first=slot not in written)
                    written.add(slot)
                group_deltas.append(delta)
            deltas.append(torch.stack(group_deltas))
        unwritten = [t for slot, acc in enumerate(kept.acc) if slot not in written for t in acc]
        if unwritten:
            torch._foreach_zero_(unwritten)
        opt._back_to_x(s)
        return (loss0, *opt._estimator.combine(deltas, d, s.cfg, s.d, s.log_weights))

    @staticmethod
    def _rescaled(acc: list, running_max: dict, slot: int, exponent: torch.Tensor) -> torch.Tensor:
        """exp(exponent - M), M the running max of the slot's exponents, with ``acc`` rescaled to the new M.

        An importance-weighted accumulator holds sum_i exp(a_i - M) direction_i, so weights of
        size exp(d / 2) never overflow; Estimator.combine divides by sum_i exp(a_i - M) (see importance).
        """
        top = running_max.get(slot, exponent)
        running_max[slot] = new_top = torch.maximum(top, exponent)
        torch._foreach_mul_(acc, torch.exp(top - new_top).to(acc[0].dtype))
        return torch.exp(exponent - new_top).to(acc[0].dtype)

    def gradient(self, closure: Callable, s: Step, coefficients: torch.Tensor) -> None:
        """.grad = g0 + strength * sum_slot coefficient * accumulator, averaged over ranks.

        Parameters the clean pass did not reach get None.
        """
        opt = self.opt
        kept = s.kept
        add_regularizer_(kept, coefficients, opt._strengths(s), s.cfg.clip)
        if opt._ranks.shards:  # the step's one gradient reduce-scatter, into DTensor .grad shards
            opt._ranks.shards.scatter(kept.graded, kept.g0_views)
            return
        opt._ranks.mean_(kept.g0)  # the step's one gradient all-reduce
        torch._foreach_copy_(kept.grad, kept.g0)
        opt._forget_unreached(s)

    def _perturbed_pass(self, closure: Callable, s: Step, loss0: torch.Tensor,
                        linear: torch.Tensor | None, group: GroupSpec) -> torch.Tensor:
        """Delta of one sample; its direction grad Delta * rho**2 is left in the kept ``grad``."""
        opt = self.opt
        kept = s.kept
        loss = self._pass(closure, s)
        if s.cfg.difference == "antithetic":
            torch._foreach_copy_(kept.stash, kept.grad)
            opt._reflect(s)
            loss = (loss + self._pass(closure, s)) / 2
            if group.kind == "eigenvector":  # H u ~ (g(x + rho u) - g(x - rho u)) / (2 rho)
                opt._power[group].propose(kept, kept.stash, kept.grad, 2 * s.cfg.rho, group)
            torch._foreach_add_(kept.grad, kept.stash)
            torch._foreach_mul_(kept.grad, 0.5)
            torch._foreach_sub_(kept.grad, kept.g0)
        else:
            torch._foreach_sub_(kept.grad, kept.g0)
            if group.kind == "eigenvector":  # H u ~ (g(x + rho u) - g(x)) / rho
                opt._power[group].propose(kept, kept.grad, None, s.cfg.rho, group)
        return opt._estimator.delta(loss, loss0, linear, s.cfg)

    def _pass(self, closure: Callable, s: Step) -> torch.Tensor:
        """One perturbed closure call; its gradient is left in the kept ``grad`` buffer."""
        opt = self.opt
        s.rng.rewind()
        torch._foreach_zero_(s.kept.grad)
        before = s.backwards
        loss = opt._ranks.global_loss(opt._evaluate(closure))
        opt._called_backward(s, before)
        if opt._ranks.shards:
            has_grad = [(v, g) for v, g in zip(s.kept.grad_views, opt._ranks.shards.take(s.kept.graded))
                        if g is not None]
            torch._foreach_copy_([v for v, _ in has_grad], [g for _, g in has_grad])
        else:
            opt._readopt(s, accumulate=False)
        s.losses.append(loss)
        return loss


class Lean:
    """memory="lean": no accumulators; n extra forward passes, perturbations drawn again."""

    def __init__(self, opt) -> None:
        self.opt = opt

    def passes(self, closure: Callable, s: Step, loss0: torch.Tensor) -> tuple:
        """The loss at every perturbed point, forward only; R, phi' and each gradient's weight W."""
        opt = self.opt
        if opt._ranks.sync and opt._reads_g0(s.cfg):
            opt._ranks.mean_(s.kept.g0)
        s.start = opt.generator.get_state()
        local, antithetic, control = [loss0], s.cfg.difference == "antithetic", s.cfg.difference == "control"
        for a, group in enumerate(opt.sample_groups):
            s.log_weights.append([])
            for i in range(group.count(s.cfg.n_samples)):
                s.where = f"perturbed point {i + 1} of {group.count(s.cfg.n_samples)} (sample group {a})"
                s.linear.append(opt._perturb(group, s, linear=control))
                if group.weighted:
                    s.log_weights[a].append(s.log_weight)
                local.append(self._forward(closure, s))
                if antithetic:
                    opt._reflect(s)
                    local.append(self._forward(closure, s))
        opt._back_to_x(s)
        losses = torch.stack(local)
        if opt._ranks.sync:
            opt._ranks.mean_([losses])  # all of the step's losses in one scalar all-reduce
        s.losses = list(losses.unbind())
        opt._last_kept = s.kept
        loss0, rest, linear = s.losses[0], iter(s.losses[1:]), iter(s.linear)
        d = opt._estimator.scalars(float(s.d), loss0)  # phi and psi see d as a 0-d tensor
        deltas = []
        for group in opt.sample_groups:
            group_deltas = []
            for _ in range(group.count(s.cfg.n_samples)):
                loss = next(rest)
                if antithetic:
                    loss = (loss + next(rest)) / 2
                group_deltas.append(opt._estimator.delta(loss, loss0, next(linear), s.cfg))
            deltas.append(group_deltas)
        stacked = [torch.stack(g) for g in deltas]
        sharpness, coefficients = opt._estimator.combine(stacked, d, s.cfg, s.d, s.log_weights)
        s.weights = []
        for a, group_deltas in enumerate(deltas):
            factors = opt._estimator.importance(a, torch.stack(group_deltas), d, s.log_weights[a])[2]
            s.weights.append([sum((coefficients[slot] * (1 if w is None else w)
                                   * (factors[slot][i].to(delta.dtype) if slot in factors else 1)
                                   for slot, w in opt._estimator.weights(a, delta, d, s.cfg)), loss0.new_zeros(()))
                              for i, delta in enumerate(group_deltas)])
        return loss0, sharpness, coefficients

    def gradient(self, closure: Callable, s: Step, coefficients: torch.Tensor) -> None:
        """.grad = (1 - sum W) g0 + sum_i W_i g_i by weighted backward passes, averaged over ranks.

        The generator is rewound so every point is drawn again exactly, and a hook scales each
        pass's gradient before autograd adds it to .grad: no per-point buffer ever exists.
        """
        opt = self.opt
        total = sum(w for group in s.weights for w in group)
        strength = opt._strengths(s)
        weight = [None]
        group_of = {id(p): float(g["strength"]) for g in opt.param_groups for p in g["params"]}
        factors = [group_of[id(p)] for p in s.trainable]
        hooks = [p.register_hook(lambda g, f=f: g * (weight[0] * f)) for p, f in zip(s.trainable, factors)]
        opt.generator.set_state(s.start)
        rescaled, antithetic = False, s.cfg.difference == "antithetic"
        try:
            # A Dirac group comes first: its direction reads g0 before .grad is rescaled.
            for a in sorted(range(len(opt.sample_groups)), key=lambda a: opt.sample_groups[a].kind != "dirac"):
                for i, w in enumerate(s.weights[a]):
                    s.where = f"perturbed point {i + 1} of {len(s.weights[a])} (sample group {a}, weighted pass)"
                    opt._perturb(opt.sample_groups[a], s)
                    if not rescaled:
                        factors = [1 - f * total for f in strength] if isinstance(strength, list) \
                            else [1 - strength * total] * len(s.kept.grad)
                        for g, f in zip(s.kept.grad, factors):
                            g.mul_(f)
                        rescaled = True
                    weight[0] = w / 2 if antithetic else w
                    self._backward(closure, s)
                    if antithetic:
                        opt._reflect(s)
                        self._backward(closure, s)
        finally:
            for hook in hooks:
                hook.remove()
        opt._back_to_x(s)
        opt._ranks.mean_(s.kept.grad)  # the step's one gradient all-reduce
        opt._forget_unreached(s)

    def _forward(self, closure: Callable, s: Step) -> torch.Tensor:
        """A loss-only closure call (no graph, no gradient) with the clean pass's RNG state."""
        opt = self.opt
        s.rng.rewind()
        try:
            with opt._ranks.no_sync():
                loss = closure()
        except RuntimeError as error:
            if "does not require grad" not in str(error):
                raise
            raise opt.Error("memory='lean' first calls the closure under torch.no_grad() for the loss alone: "
                            "call loss.backward() only when torch.is_grad_enabled()") from error
        return opt._checked(loss)

    def _backward(self, closure: Callable, s: Step) -> None:
        """A closure call whose gradient (scaled by the hooks) adds to .grad."""
        opt = self.opt
        s.rng.rewind()
        before = s.backwards
        opt._evaluate(closure)
        opt._called_backward(s, before)
        opt._readopt(s, accumulate=True)
