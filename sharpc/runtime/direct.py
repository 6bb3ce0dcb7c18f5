"""The direct step: the general step (PhiPsiSAM._step with Sums) specialized to one configuration.

A tiny model's step is dominated by the general step's own Python: settings, working sets,
layers of calls that each re-decide what this configuration does. The direct step takes those
decisions once, when it is built for a parameter set and settings, and then runs the same
arithmetic in the same order on the same kept buffers, so its parameters, estimates and
optimizer state are bit-identical to the general step's (tests/test_direct.py checks that).

It covers the common configuration (``unsupported`` names what it does not): memory="sums"
in one process, one flat buffer (one device and dtype), every trainable parameter perturbed
at one rho and strength without adaptive scaling, random sample groups or SAM's direction,
and no GradScaler. Anything else runs the general step.
"""

import math
from collections.abc import Callable

import torch

from .accumulate import add_regularizer_, add_weighted_, checksum
from .replay import running_stats
from .storage import Kept, Layout, signature

#: Sample group kinds the direct step draws (point masses at fixed points and tracked eigenvectors,
#: and importance weights, stay with the general step).
DIRECT_KINDS = ("gaussian", "sphere", "hypercube", "dirac")


def unsupported(opt, perturbed: list, trainable: list) -> str | None:
    """Why ``opt`` needs the general step for this parameter set and settings; None if it does not."""
    groups = [g for g in opt.param_groups if g["perturb"] and g["params"]]
    reasons = [(opt.memory != "sums", "memory='lean'"),
               (opt._ranks.mode is not None or opt._ranks.shards is not None, "a distributed step"),
               (opt.grad_scaler is not None, "a GradScaler"),
               (opt._skips_on_device, "skipping non-finite steps on the device"),
               (len(perturbed) != len(trainable), "trainable parameters that are not perturbed"),
               (len(Layout(perturbed).members) != 1, "parameters of several devices or dtypes"),
               (any(g.kind not in DIRECT_KINDS or g.adaptive for g in opt.sample_groups),
                "a sample group of kind point, eigenvector or importance, or an adaptive one"),
               (any(g["adaptive"] for g in groups), "adaptive perturbations"),
               (len({(float(g["rho"]), float(g["strength"])) for g in groups}) > 1, "per-group rho or strength")]
    return next((why for failed, why in reasons if failed), None)


class Direct:
    """One parameter set's and settings' step, with its decisions and lists made once."""

    def __init__(self, opt, cfg, perturbed: list, stats: list):
        self.opt, self.cfg, self.params, self.stats = opt, cfg, perturbed, stats
        kept = opt._kept
        if kept is None or kept.key[0] != signature(perturbed) or kept.key[1] != kept.key[0] \
                or kept.key[2:] != (opt._slots(cfg), cfg.difference == "antithetic", False):
            opt._dimension(perturbed)
            kept = opt._kept = Kept(perturbed, perturbed, opt._slots(cfg), cfg.difference == "antithetic", False)
        self.kept = kept
        layout = Layout(stats)
        self.stats_before, self.stats_clean = layout.views(layout.zeros()), layout.views(layout.zeros())
        self.cuda = sorted({p.device.index if p.device.index is not None else torch.cuda.current_device()
                            for p in perturbed if p.device.type == "cuda"})
        group = next(g for g in opt.param_groups if g["perturb"] and g["params"])
        self.rho, self.strength = float(group["rho"]), float(group["strength"])
        self.x, self.e, self.grad, self.g0 = kept.x[0], kept.e[0], kept.grad[0], kept.g0[0]
        self.accs = [acc[0] for acc in kept.acc]
        # (group index, group, its number of points): the schedule of perturbed points
        self.schedule = [(a, group, group.count(cfg.n_samples)) for a, group in enumerate(opt.sample_groups)]
        self.d = kept.d

    # ------------------------------------------------------------------ global RNG (common random numbers)
    def _rng(self) -> tuple:
        return torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in self.cuda]

    def _set_rng(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        for index, s in zip(self.cuda, state[1]):
            torch.cuda.set_rng_state(s, index)

    # ------------------------------------------------------------------ the step
    def step(self, closure: Callable) -> torch.Tensor:
        """PhiPsiSAM._step for this configuration: the same operations, without re-deciding them."""
        opt, kept, params, stats, cfg = self.opt, self.kept, self.params, self.stats, self.cfg
        gen, estimator = opt.generator, opt._estimator
        start = self._rng()
        torch._foreach_copy_(kept.x_views, params)
        if stats:
            torch._foreach_copy_(self.stats_before, stats)
        generator_before = gen.get_state()
        for p in params:
            p.grad = None
        place, clean, witness, counter = None, None, None, [0]  # place: (sample group, point, points)
        try:
            loss0 = opt._evaluate(closure)
            reached = self._clean_gradient(params)
            witness = reached[0].register_post_accumulate_grad_hook(lambda _: counter.__setitem__(0, counter[0] + 1))
            clean = self._rng()
            if stats:
                torch._foreach_copy_(self.stats_clean, stats)
            losses, deltas, written = [loss0], [], set()
            d = estimator.scalars(float(self.d), loss0)
            opt._last_kept = kept
            for a, group, count in self.schedule:
                group_deltas = []
                for i in range(count):
                    place = (a, i, count)
                    linear = self._perturb(group)
                    loss = self._pass(closure, start, counter, losses, place)
                    if cfg.difference == "antithetic":
                        kept.stash[0].copy_(self.grad)
                        self._reflect()
                        loss = (loss + self._pass(closure, start, counter, losses, place)) / 2
                        self.grad.add_(kept.stash[0])
                        self.grad.mul_(0.5)
                    self.grad.sub_(self.g0)
                    delta = estimator.delta(loss, loss0, linear, cfg)
                    for slot, weight in estimator.weights(a, delta, d, cfg):
                        add_weighted_(self.accs[slot], self.grad, weight, first=slot not in written)
                        written.add(slot)
                    group_deltas.append(delta)
                deltas.append(torch.stack(group_deltas))
            unwritten = [acc for slot, acc in enumerate(self.accs) if slot not in written]
            if unwritten:
                torch._foreach_zero_(unwritten)
            self._back_to_x(clean)
            sharpness, coefficients = estimator.combine(deltas, d, cfg, self.d, [[] for _ in self.schedule])
            add_regularizer_(kept, coefficients, self.strength, cfg.clip)
            self.grad.copy_(self.g0)
            if len(reached) != len(params):
                for p in set(params) - set(reached):
                    p.grad = None
            opt.sharpness = sharpness
            if opt.nonfinite != "ignore" and not math.isfinite(checksum(losses, coefficients, kept).item()):
                self._undo(generator_before, clean)
                if opt.nonfinite == "raise":
                    raise opt._nonfinite_error(losses)
                opt.skipped_steps += 1
                return loss0
            estimator.magnitude.commit(None)
        except BaseException as error:
            self._undo(generator_before, clean)
            if isinstance(error, opt.Error) or not isinstance(error, Exception):
                raise
            raise opt.Error(f"the step failed at the {self._where(place)} ({type(error).__name__}: {error}); "
                            "parameters restored to their pre-step values") from error
        finally:
            if witness is not None:
                witness.remove()
        opt.base_optimizer.step()
        return loss0

    def _clean_gradient(self, params: list) -> list:
        """g0 into the kept buffer and .grad made views of the kept ``grad``, as the general clean pass does."""
        opt, kept = self.opt, self.kept
        grads = [p.grad for p in params]
        reached = [p for p, g in zip(params, grads) if g is not None]
        if not reached:
            raise opt.Error("the closure did not call loss.backward(): no parameter has a gradient")
        if any(g.is_sparse for g in grads if g is not None):
            raise opt.Error("sparse gradients (e.g. nn.Embedding(sparse=True)) are not supported: perturbations "
                            "move every coordinate, so the step keeps dense buffers; use sparse=False")
        if len(reached) == len(params):
            torch._foreach_copy_(kept.g0_views, grads)
        else:
            torch._foreach_zero_(kept.g0)
            torch._foreach_copy_([v for v, g in zip(kept.g0_views, grads) if g is not None],
                                 [g for g in grads if g is not None])
        for p, view in zip(params, kept.grad_views):
            p.grad = view
        return reached

    def _perturb(self, group) -> torch.Tensor | None:
        """x + rho v into the parameters, v drawn into the kept ``e`` (the prefix of ``grad``), as
        PhiPsiSAM._perturb does; the control variate's g0 . e when difference="control"."""
        kept, e = self.kept, self.kept.e
        if group.kind == "dirac":
            norm = self._norm(kept.g0_prefix[0]).clamp_min(torch.finfo(self.e.dtype).tiny)
            torch.div(kept.g0_prefix[0], norm, out=self.e)
        else:
            draw = self.opt.generator
            if group.kind == "hypercube":
                self.e.uniform_(-group.half_width, group.half_width, generator=draw)
            else:
                self.e.normal_(generator=draw)
                if group.kind == "sphere":
                    torch._foreach_div_(e, self._norm(self.e))
        if self.cfg.difference == "control":
            torch._foreach_mul_(e, self.rho)
            dot = sum(torch.dot(a, b) for a, b in zip(e, kept.g0_prefix))
            torch._foreach_add_(e, kept.x)
            torch._foreach_copy_(self.params, kept.e_views)
            return dot
        torch.add(self.x, self.e, alpha=self.rho, out=self.e)
        torch._foreach_copy_(self.params, kept.e_views)
        return None

    @staticmethod
    def _norm(flat: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(flat)

    def _pass(self, closure: Callable, start: tuple, counter: list, losses: list, place: tuple) -> torch.Tensor:
        """One perturbed closure call with the clean pass's RNG state; its gradient left in ``grad``."""
        opt = self.opt
        self._set_rng(start)
        torch._foreach_zero_(self.kept.grad)
        before = counter[0]
        loss = opt._evaluate(closure)
        if counter[0] == before:
            raise opt.Error(f"the closure did not call loss.backward() at the {self._where(place)}; it must "
                            "on every call that runs with gradients enabled (the step clears them before each call)")
        for p, view in zip(self.params, self.kept.grad_views):  # model.zero_grad() in the closure
            if p.grad is not view:
                if p.grad is not None:
                    view.copy_(p.grad)
                p.grad = view
        losses.append(loss)
        return loss

    def _reflect(self) -> None:
        """x + e -> x - e, with e exactly the applied offset (x + e) - x."""
        torch._foreach_sub_(self.params, self.kept.x_views)
        torch._foreach_neg_(self.params)
        torch._foreach_add_(self.params, self.kept.x_views)

    def _back_to_x(self, clean: tuple) -> None:
        torch._foreach_copy_(self.params, self.kept.x_views)
        if self.stats:
            torch._foreach_copy_(self.stats, self.stats_clean)
        self._set_rng(clean)

    def _undo(self, generator_before, clean: tuple | None) -> None:
        """Parameters, running statistics and both RNGs as before the step (PhiPsiSAM._undo)."""
        torch._foreach_copy_(self.params, self.kept.x_views)
        self.opt.generator.set_state(generator_before)
        if self.stats:
            torch._foreach_copy_(self.stats, self.stats_before)
        for p in self.params:
            p.grad = None
        if clean is not None:
            self._set_rng(clean)

    @staticmethod
    def _where(place: tuple | None) -> str:
        if place is None:
            return "unperturbed point"
        a, i, count = place
        return f"perturbed point {i + 1} of {count} (sample group {a})"


def direct_key(opt, cfg) -> tuple:
    """What a Direct step is built for: the settings, the trainable parameters and the running statistics."""
    return cfg, signature(opt._trainable()), signature(running_stats(opt.model))
