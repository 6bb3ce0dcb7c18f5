"""(phi, psi, mu)-SAM on torch: the engine under every optimizer class sharpc emits.

This file imports torch and nothing else. ``sharpc.emit.standalone`` pastes it verbatim
into the standalone modules it writes, and ``sharpc.optim`` builds its in-process classes
on it, so the two cannot drift apart. A generated subclass supplies phi, psi (and, for
polynomial measures, an unbiased U-statistic) as torch functions plus its sample groups.

A step minimizes L(x) + strength * rho**2 * R(x) (Algorithm 2 of Tahmasebi et al., 2024,
with a strength), where, for samples v_i of mu,

    Delta_i = (L(x + rho v_i) - L(x)) / rho**2,     R = phi(mean_i psi(Delta_i)),
    grad = g0 + strength * sum_l d_l phi * mean_i psi_l'(Delta_i) (g_i - g0),

g0 = grad L(x) and g_i = grad L(x + rho v_i). The unbiased estimator replaces phi(means)
by a U-statistic U(P_1, ..., P_K) of the power sums P_k = sum_i Delta_i**k, whose gradient
is sum_k dU/dP_k * k * sum_i Delta_i**(k-1) (g_i - g0). Either way only running sums are
kept: a backup of the perturbed parameters, g0, and one accumulator per psi component
(plug-in) or per power sum (U-statistic), never n gradients.

Every perturbed pass replays the clean pass's global RNG state (common random numbers:
identical dropout masks), while perturbations come from the optimizer's own generator.
Scalars stay 0-d tensors on the parameters' device; the only host read is the finiteness
check (one per step; ``nonfinite="ignore"`` drops it).
"""

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OptimizerError", "GroupSpec", "PhiPsiSAM", "draw_", "sample_rows", "polynomial_root"]


class OptimizerError(ValueError):
    """Misuse of the optimizer, or a step that could not be completed safely."""


@dataclass(frozen=True)
class GroupSpec:
    """psi components that share one set of samples, and the distribution they come from.

    kind is "gaussian" (N(0, I)), "sphere" (uniform on the unit sphere of all perturbed
    coordinates together), "hypercube" (uniform on [-half_width, half_width]^d), "point"
    (the fixed point sum_{i in support} e_i of the flattened perturbed vector, Theorem 7) or
    "dirac" (SAM's point mass at grad / |grad|, fixed by the clean gradient of each step).
    ``adaptive`` scales every sample by |x| + eta (the adaptive measure mu_x).
    """

    kind: str
    components: tuple
    half_width: float = 1.0
    support: tuple = ()
    adaptive: bool = False

    @property
    def deterministic(self) -> bool:
        """One sample is the whole distribution: more would repeat it."""
        return self.kind in ("dirac", "point")


# ----------------------------------------------------------------------------- sampling
def draw_(kind: str, tensors: list, generator: torch.Generator | None = None,
          half_width: float = 1.0, support: tuple = ()) -> None:
    """Overwrite ``tensors``, the pieces of one vector, with a sample of the distribution."""
    if kind == "point":
        _point_(tensors, support)
    elif kind in ("gaussian", "sphere"):
        for v in tensors:
            v.normal_(generator=generator)
        if kind == "sphere":  # normalized over all pieces together, never per tensor
            torch._foreach_div_(tensors, _global_norm(tensors))
    elif kind == "hypercube":
        for v in tensors:
            v.uniform_(-half_width, half_width, generator=generator)
    else:
        raise OptimizerError(f"no sampler for the distribution kind {kind!r}")


def sample_rows(kind: str, n: int, d: int, *, half_width: float = 1.0,
                generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
    """An (n, d) tensor whose rows are independent samples (what ``Distribution.sample`` returns)."""
    out = torch.empty(n, d, device=device, dtype=dtype)
    if kind == "sphere":  # each row is one vector: normalize rows, not the whole batch
        draw_("gaussian", [out], generator)
        return out.div_(torch.linalg.vector_norm(out, dim=1, keepdim=True))
    draw_(kind, [out], generator, half_width)
    return out


def _point_(tensors: list, support: tuple) -> None:
    """sum_{i in support} e_i, with i indexing the pieces flattened and concatenated in order."""
    torch._foreach_zero_(tensors)
    offset = 0
    for v in tensors:
        flat = v.view(-1)
        for i in support:
            if offset <= i < offset + flat.numel():
                flat[i - offset] = 1
        offset += flat.numel()
    if support and max(support) >= offset:
        raise OptimizerError(f"the point e_{max(support)} is outside the {offset} perturbed coordinates")


def _global_norm(tensors: list) -> torch.Tensor:
    norms = torch._foreach_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([x.to(norms[0].dtype) for x in norms]))


# ----------------------------------------------------------------------------- generated-code helpers
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


# ----------------------------------------------------------------------------- step helpers
class _CommonRandomNumbers:
    """Replays the clean pass's global RNG state for every perturbed pass (same dropout masks).

    Afterwards the global RNG is left as the clean pass left it, so a step consumes exactly
    the randomness of one ordinary forward/backward pass. CPU and CUDA generators are covered.
    """

    def __init__(self, devices: Iterable[torch.device]):
        self._cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                             for d in devices if d.type == "cuda"})
        self._start = self._get()
        self._after_clean = None

    def _get(self):
        return torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in self._cuda]

    def _set(self, state) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for index, s in zip(self._cuda, cuda):
            torch.cuda.set_rng_state(s, index)

    def clean_pass_done(self) -> None:
        self._after_clean = self._get()

    def rewind(self) -> None:
        self._set(self._start)

    def finish(self) -> None:
        if self._after_clean is not None:
            self._set(self._after_clean)


def _running_stats(model: torch.nn.Module | None) -> list:
    """Buffers of modules that track running statistics (BatchNorm and friends)."""
    if model is None:
        return []
    return [b for m in model.modules() if getattr(m, "track_running_stats", False)
            for b in m.buffers(recurse=False)]


def _slopes(f: Callable, t: torch.Tensor, *args) -> torch.Tensor:
    """d f(t, *args) / dt for every output of f, by one forward-mode pass (t is a scalar).

    Automatic differentiation, not hand derivatives; dual numbers cost ~10x less per call
    than torch.func.jacfwd on CPU, and this runs once per perturbed pass.
    """
    with torch.autograd.forward_ad.dual_level():
        out = f(torch.autograd.forward_ad.make_dual(t, torch.ones_like(t)), *args)
        tangent = torch.autograd.forward_ad.unpack_dual(out).tangent
    return torch.zeros_like(out) if tangent is None else tangent


def _load_forward_ad() -> None:
    """Make torch load its forward-AD decompositions now, outside any step.

    torch scripts them on first use and warns that torch.jit.script is deprecated (its own
    warning); under -W error that would abort a step, so the load happens here, quietly.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
        with torch.autograd.forward_ad.dual_level():
            torch.autograd.forward_ad.make_dual(torch.zeros(()), torch.ones(()))


def _value_and_grad(f: Callable, x: torch.Tensor, *args) -> tuple:
    """f(x, *args) and its gradient in x by reverse mode (once per step; ~3x cheaper than torch.func.grad)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y = f(x, *args)
        if not y.requires_grad:  # phi does not depend on its arguments
            return y.detach(), torch.zeros_like(x)
        (grad,) = torch.autograd.grad(y, x)
    return y.detach(), grad


def _grads(params: list) -> list:
    """The .grad of each parameter; one the closure did not reach counts as zero."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in params]


# ----------------------------------------------------------------------------- optimizer
class PhiPsiSAM(torch.optim.Optimizer):
    """Base class of generated (phi, psi, mu)-SAM optimizers; subclasses set the class attributes.

    The wrapper shares ``param_groups`` and ``state`` with the base optimizer (as in
    davda54/sam), so LR schedulers, ``zero_grad``, ``add_param_group`` and
    ``state_dict``/``load_state_dict`` work as for the base optimizer alone.
    """

    # Supplied by the generated subclass.
    target: str = ""                    # the sharpness target's source text
    phi: Callable | None = None         # phi(ts, d): (m,) tensor of component means -> 0-d tensor
    psi: Callable | None = None         # psi(t, d): tensor -> (m, *t.shape) tensor
    m: int = 0                          # number of psi components
    ustat: Callable | None = None       # ustat(P, n, d): power sums -> unbiased estimate of phi(E psi)
    ustat_unavailable: str = "no unbiased estimator was generated"
    power_sums: tuple = ()              # ((group, k), ...): the order of ustat's argument P
    ustat_order: int = 1                # distinct samples per group the U-statistic needs
    sample_groups: tuple = ()           # GroupSpec per sample group
    fixed_d: int | None = None          # d fixed at compile time, else bound to the perturbed count
    recommended: dict = {}              # defaults for rho, strength, n_samples
    Error: type = OptimizerError        # sharpc.optim sets sharpc.errors.OptimizerError

    def __init__(self, params, base_optimizer: type = torch.optim.SGD, *, rho: float | None = None,
                 strength: float | None = None, n_samples: int | None = None, estimator: str = "auto",
                 antithetic: bool = False, adaptive: bool = False, eta: float = 0.01,
                 model: torch.nn.Module | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, nonfinite: str = "raise", **base_kwargs: Any):
        """Wrap ``base_optimizer``; the hyperparameters below are the class's ``recommended`` when omitted.

        Args:
            params: parameters or param-group dicts; a group with ``perturb=False`` is never
                perturbed (biases, norms) and does not count towards d.
            base_optimizer: the torch optimizer class that applies the combined gradient;
                unknown keyword arguments (lr, momentum, ...) go to it.
            rho: perturbation radius. strength: weight of rho**2 * R in the objective.
            n_samples: samples per sample group and step (cost: 1 + groups * n passes).
            estimator: unbiased (U-statistic; polynomial phi and psi only), "plugin"
                (phi of the sample means, the paper's Algorithm 2) or "auto" (unbiased when available).
            antithetic: evaluate x + rho v and x - rho v; the bias of Delta drops from O(rho)
                to O(rho**2) and the first-order term grad . v / rho cancels exactly.
            adaptive: ASAM-style perturbation rho * (|x| + eta) * v.
            model: when given, perturbed passes leave BatchNorm running statistics untouched;
                without it they update them like any forward pass in train mode.
            generator / seed: the perturbation sampler's own RNG (saved in state_dict).
            nonfinite: on a non-finite loss, "raise" (OptimizerError, parameters restored),
                "skip" (count it in ``skipped_steps``) or "ignore" (no check, no host sync).
        """
        rho, strength = self._hyperparameter("rho", rho), self._hyperparameter("strength", strength)
        if not (isinstance(rho, (int, float)) and 0 < rho < float("inf")):
            raise self.Error(f"rho must be a positive finite number, got {rho!r}")
        if not (isinstance(strength, (int, float)) and 0 <= strength < float("inf")):
            raise self.Error(f"strength must be a non-negative finite number, got {strength!r}")
        if estimator == "auto":
            estimator = "plugin" if self.ustat is None else "unbiased"
        if estimator not in ("unbiased", "plugin"):
            raise self.Error(f"estimator must be 'auto', 'unbiased' or 'plugin', got {estimator!r}")
        if estimator == "unbiased" and self.ustat is None:
            raise self.Error(f"estimator='unbiased' is not available: {self.ustat_unavailable}; use 'plugin'")
        if n_samples is None:
            n_samples = self.recommended.get("n_samples") or (self.ustat_order if estimator == "unbiased" else 1)
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
            raise self.Error(f"n_samples must be a positive integer, got {n_samples!r}")
        if estimator == "unbiased" and n_samples < self.ustat_order:
            raise self.Error(f"the unbiased estimator of {self.target!r} averages over {self.ustat_order} "
                             f"distinct samples, so n_samples must be >= {self.ustat_order} (got {n_samples}); "
                             "or use estimator='plugin'")
        if n_samples != 1 and any(g.deterministic for g in self.sample_groups):
            raise self.Error("a point-mass (Dirac) sample group is deterministic: n_samples must be 1")
        if nonfinite not in ("raise", "skip", "ignore"):
            raise self.Error(f"nonfinite must be 'raise', 'skip' or 'ignore', got {nonfinite!r}")
        if not eta >= 0:
            raise self.Error(f"eta must be non-negative, got {eta!r}")

        super().__init__(params, dict(perturb=True, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)

        self.rho, self.strength, self.n_samples = float(rho), float(strength), n_samples
        self.estimator, self.antithetic, self.adaptive, self.eta = estimator, antithetic, adaptive, float(eta)
        self.model, self.nonfinite = model, nonfinite
        self.sharpness: torch.Tensor | None = None
        self.skipped_steps = 0
        self._last_buffers: float | None = None
        device = self.param_groups[0]["params"][0].device
        if generator is None:
            if seed is None:  # derived from the global RNG, so torch.manual_seed reproduces runs
                seed = int(torch.randint(0, 2**62, ()).item())
            generator = torch.Generator(device=device).manual_seed(seed)
        elif generator.device.type != device.type:
            raise self.Error(f"the generator is on {generator.device} but the parameters are on {device}")
        self.generator = generator
        self._dimension(self._perturbed())
        if estimator == "plugin":
            _load_forward_ad()

    def _hyperparameter(self, name: str, value):
        if value is None:
            value = self.recommended.get(name)
        if value is None:
            raise self.Error(f"{name}= is required: {type(self).__name__} has no preset default for it")
        return value

    # ------------------------------------------------------------------ bookkeeping
    def _perturbed(self) -> list:
        return [p for g in self.param_groups if g["perturb"] for p in g["params"] if p.requires_grad]

    def _trainable(self) -> list:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _dimension(self, perturbed: list) -> int:
        d = sum(p.numel() for p in perturbed)
        if d == 0:
            raise self.Error("no parameter is perturbed: every group has perturb=False or requires_grad=False")
        if self.fixed_d is not None and d != self.fixed_d:
            raise self.Error(f"{self.target!r} was compiled for d={self.fixed_d} eigenvalues, but {d} "
                             "parameters are perturbed; compile without d= to bind d here")
        return d

    @property
    def d(self) -> int:
        """The number of perturbed parameters: the d that phi and psi see."""
        return self._dimension(self._perturbed())

    @property
    def slots(self) -> int:
        """Accumulators: one per psi component (plugin) or per power sum (unbiased)."""
        return len(self.power_sums) if self.estimator == "unbiased" else self.m

    def buffer_report(self) -> dict:
        """Parameter-sized buffers a step holds: the bound, and the last step's allocation.

        ``allocated`` counts the elements of every buffer the last step allocated, in units of
        the trainable parameters' element count (the backup covers perturbed parameters only).
        """
        return {"bound": 2 + self.slots + int(self.antithetic), "allocated": self._last_buffers}

    def state_dict(self) -> dict:
        state = self.base_optimizer.state_dict()
        state["phi_psi_sam"] = {"generator_state": self.generator.get_state(),
                                "skipped_steps": self.skipped_steps}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        ours = state_dict.get("phi_psi_sam")
        self.base_optimizer.load_state_dict({k: v for k, v in state_dict.items() if k != "phi_psi_sam"})
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        if ours is not None:
            self.generator.set_state(ours["generator_state"])
            self.skipped_steps = ours["skipped_steps"]

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Take one step; returns the detached loss at the unperturbed parameters.

        ``closure`` computes the loss and calls ``backward()``; it is called 1 + groups * n
        times (1 + 2 * groups * n with antithetic) and gradients are cleared before every call.
        Afterwards ``.grad`` holds the combined gradient the base optimizer used and
        ``self.sharpness`` the regularizer estimate R.
        """
        if closure is None:
            raise self.Error(f"{type(self).__name__}.step needs a closure that computes the loss "
                             "and calls loss.backward()")
        perturbed, trainable = self._perturbed(), self._trainable()
        d = self._dimension(perturbed)
        stats = _running_stats(self.model)
        stats_before = [b.clone() for b in stats]
        backup = [p.clone() for p in perturbed]
        rng = _CommonRandomNumbers({p.device for p in trainable})
        for p in trainable:
            p.grad = None
        where = "the unperturbed point"
        try:
            # Clean pass: L(x) and g0; its RNG state is replayed for every perturbed pass.
            loss0 = self._evaluate(closure)
            active = [p for p in trainable if p.grad is not None]
            if not active:
                raise self.Error("the closure did not call loss.backward(): no parameter has a gradient")
            g0 = [p.grad.clone() for p in active]
            rng.clean_pass_done()
            stats_clean = [b.clone() for b in stats]
            d = loss0.new_full((), d)  # phi and psi see d as a 0-d tensor
            g0_of = {id(p): g for p, g in zip(active, g0)}
            acc = [[torch.zeros_like(g) for g in g0] for _ in range(self.slots)]
            stash = [torch.empty_like(g) for g in g0] if self.antithetic else []
            self._last_buffers = sum(t.numel() for t in [*backup, *g0, *stash, *sum(acc, [])]) \
                / sum(p.numel() for p in trainable)
            # Perturbed passes: each direction (grad Delta) goes into running sums right away.
            losses, deltas = [loss0], []
            for a, group in enumerate(self.sample_groups):
                group_deltas = []
                for i in range(self.n_samples):
                    where = f"perturbed point {i + 1} of {self.n_samples} (sample group {a})"
                    self._perturb(group, perturbed, backup, g0_of)
                    delta, direction = self._perturbed_pass(closure, rng, loss0, active, g0, perturbed,
                                                            backup, stash, losses)
                    for slot, weight in self._weights(a, delta, d):
                        torch._foreach_addcmul_(acc[slot], direction, [weight] * len(direction))
                    group_deltas.append(delta)
                deltas.append(torch.stack(group_deltas))
            # Back to x, bit-exactly, with BatchNorm statistics and the RNG as the clean pass left them.
            torch._foreach_copy_(perturbed, backup)
            if stats:
                torch._foreach_copy_(stats, stats_clean)
            rng.finish()
            sharpness, coefficients = self._combine(deltas, d)
        except BaseException as error:
            self._undo(perturbed, backup, trainable, stats, stats_before)
            rng.finish()
            if isinstance(error, self.Error) or not isinstance(error, Exception):
                raise
            raise self.Error(f"the step failed at the {where} ({type(error).__name__}: {error}); "
                             "parameters restored to their pre-step values") from error

        self.sharpness = sharpness
        if self.nonfinite != "ignore" and not self._finite(losses, sharpness, coefficients):
            self._undo(perturbed, backup, trainable, stats, stats_before)
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return loss0
            raise self._nonfinite_error(losses)
        self._write_gradient(trainable, active, g0, acc, coefficients)
        self.base_optimizer.step()
        return loss0

    def _finite(self, losses: list, sharpness: torch.Tensor, coefficients: torch.Tensor) -> bool:
        """Whether every loss, R and phi' are finite: the step's one device-to-host read."""
        finite = torch.isfinite(torch.stack(losses)).all() & torch.isfinite(sharpness) \
            & torch.isfinite(coefficients).all()
        return finite.item()

    def _nonfinite_error(self, losses: list) -> Exception:
        bad = [i for i, loss in enumerate(losses) if not torch.isfinite(loss).item()]
        if not bad:
            what = "a non-finite sharpness estimate or phi' (the means left phi's domain)"
        else:
            what = "a non-finite loss at " + ("the unperturbed point" if bad[0] == 0 else f"perturbed pass {bad[0]}")
        return self.Error(f"{what}; parameters restored to their pre-step values "
                          "(nonfinite='skip' skips such steps instead)")

    def _write_gradient(self, trainable: list, active: list, g0: list, acc: list, coefficients) -> None:
        """.grad = g0 + sum_slot coefficient * accumulator; parameters the closure missed get None."""
        grads = _grads(active)
        torch._foreach_copy_(grads, g0)
        for slot, c in enumerate(coefficients.unbind()):
            torch._foreach_addcmul_(grads, acc[slot], [c] * len(grads))
        reached = {id(p) for p in active}
        for p in trainable:
            if id(p) not in reached:
                p.grad = None

    def _evaluate(self, closure: Callable) -> torch.Tensor:
        """One closure call: the detached loss, in at least float32 (Delta divides by rho**2)."""
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise self.Error(f"the closure must return the loss as a 0-d tensor, got {shape}")
        return loss.detach().to(torch.promote_types(loss.dtype, torch.float32))

    def _perturb(self, group: GroupSpec, perturbed: list, backup: list, g0_of: dict) -> None:
        """Write x + rho * s * v into the perturbed parameters (s = |x| + eta when adaptive)."""
        if group.kind == "dirac":  # SAM: v = s g0 / |s g0|, so the step is rho s^2 g0 / |s g0| (ASAM)
            for p in perturbed:
                g = g0_of.get(id(p))
                p.copy_(g) if g is not None else p.zero_()
            self._scale_adaptive(perturbed, backup, group.adaptive)
            torch._foreach_div_(perturbed, _global_norm(perturbed).clamp_min(torch.finfo(perturbed[0].dtype).tiny))
        else:
            draw_(group.kind, perturbed, self.generator, group.half_width, group.support)
        self._scale_adaptive(perturbed, backup, group.adaptive)
        torch._foreach_mul_(perturbed, self.rho)
        torch._foreach_add_(perturbed, backup)

    def _scale_adaptive(self, perturbed: list, backup: list, measure_is_adaptive: bool) -> None:
        if self.adaptive or measure_is_adaptive:
            for p, x in zip(perturbed, backup):
                p.mul_(x.abs().add_(self.eta))

    def _perturbed_pass(self, closure, rng, loss0, active, g0, perturbed, backup, stash, losses):
        """Delta of one sample and its direction: grad Delta * rho**2, left in the .grad tensors."""
        loss = self._pass(closure, rng, active, losses)
        grads = _grads(active)
        if self.antithetic:
            torch._foreach_copy_(stash, grads)
            torch._foreach_sub_(perturbed, backup)  # exactly the applied offset e = (x + e) - x
            torch._foreach_neg_(perturbed)
            torch._foreach_add_(perturbed, backup)
            loss = (loss + self._pass(closure, rng, active, losses)) / 2
            grads = _grads(active)
            torch._foreach_add_(grads, stash)
            torch._foreach_mul_(grads, 0.5)
        torch._foreach_sub_(grads, g0)
        return (loss - loss0) / self.rho**2, grads

    def _pass(self, closure, rng, active, losses) -> torch.Tensor:
        rng.rewind()
        torch._foreach_zero_([p.grad for p in active if p.grad is not None])
        loss = self._evaluate(closure)
        losses.append(loss)
        return loss

    def _weights(self, group: int, delta: torch.Tensor, d: torch.Tensor):
        """(slot, weight) pairs: how much of this sample's direction each accumulator takes."""
        if self.estimator == "plugin":
            slopes = _slopes(self.psi, delta, d)
            return [(l, slopes[l]) for l in self.sample_groups[group].components]
        return [(slot, delta ** (k - 1)) for slot, (a, k) in enumerate(self.power_sums) if a == group]

    def _combine(self, deltas: list, d: torch.Tensor):
        """The sharpness estimate and each accumulator's coefficient in the final gradient."""
        n = self.n_samples
        if self.estimator == "plugin":
            means = [None] * self.m
            for group, samples in zip(self.sample_groups, deltas):
                values = self.psi(samples, d)
                for l in group.components:
                    means[l] = values[l].mean()
            sharpness, slopes = _value_and_grad(self.phi, torch.stack(means), d)
            return sharpness, self.strength * slopes / n
        sums = torch.stack([(deltas[a] ** k).sum() for a, k in self.power_sums])
        sharpness, slopes = _value_and_grad(self.ustat, sums, n, d)
        return sharpness, self.strength * torch.stack([s * k for s, (_, k) in zip(slopes.unbind(), self.power_sums)])

    def _undo(self, perturbed, backup, trainable, stats, stats_before) -> None:
        """Put parameters and running statistics back exactly as they were before the step."""
        torch._foreach_copy_(perturbed, backup)
        if stats:
            torch._foreach_copy_(stats, stats_before)
        for p in trainable:
            p.grad = None
