"""PhiPsiSAM: the step (Algorithm 2 of Tahmasebi et al. 2024) on the pieces of this package."""

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..errors import OptimizerError
from .accumulate import Lean, Sums, checksum
from .estimator import Estimator
from .maths import load_forward_ad
from .power import PowerIterations
from .ranks import Ranks, Shards
from .replay import STEP_LOCK, CommonRandomNumbers, running_stats
from .sampling import GroupSpec, draw_, global_norm, lebesgue_log_weight
from .step import DIFFERENCES, Settings, Step
from .storage import Kept, Layout, is_sharded, local_shard, signature


def materialized(group: Any) -> Any:
    """A param-group dict whose params are a list (a generator can be read only once)."""
    if not isinstance(group, dict):
        return group
    params = group["params"]
    return {**group, "params": [params] if isinstance(params, torch.Tensor) else list(params)}


#: Hyperparameters that shape the whole step: every param group must agree on them.
STEP_WIDE = ("n_samples", "estimator", "difference", "relative", "clip")
#: Every hyperparameter a param group holds for the step (a change is checked before the next step).
HYPERPARAMETERS = ("rho", "strength", "eta", "adaptive", "perturb", *STEP_WIDE)
#: Loss dtypes Delta can be formed in as they are (others are promoted to float32).
WIDE_ENOUGH = (torch.float32, torch.float64)
#: Used when neither the caller nor the class's ``recommended`` sets a hyperparameter.
FALLBACK = dict(strength=1.0, relative=False, n_samples=None, estimator="auto", difference="one-sided",
                adaptive=False, eta=0.01)
#: Default |rho v| as a fraction of the perturbed parameters' norm (see PhiPsiSAM._default_rho).
#: Measured on the digits MLP (docs/results.md): 0.005 and 0.05 let the regularizer's noise
#: raise the targets; 0.2 lowers them, 0.5 most, at equal accuracy.
DEFAULT_RADIUS = 0.5
#: The same for measures without a random group (Dirac points read Hessian entries as rho -> 0,
#: with no sampling noise to average out, so a small radius keeps them near exact).
POINT_RADIUS = 0.01


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
    # "symbolic": the compiler differentiated phi, psi and ustat into the three functions below;
    # "autograd": it could not print some derivative, so the step differentiates them by autograd.
    derivatives: str = "autograd"
    phi_grad: Callable | None = None    # phi_grad(ts, d): (m,) gradient of phi
    psi_slopes: Callable | None = None  # psi_slopes(t, d): (m, *t.shape) derivatives of psi in t
    ustat_grad: Callable | None = None  # ustat_grad(P, n, d): dU/dP for every power sum
    ustat_unavailable: str = "no unbiased estimator was generated"
    power_sums: tuple = ()              # ((group, k), ...): the order of ustat's argument P
    ustat_order: int = 1                # distinct samples per group the U-statistic needs
    moment_order: int = 1               # ... and that phi(sample means) needs (psi = (t, t**2): 2)
    sample_groups: tuple = ()           # GroupSpec per sample group
    fixed_d: int | None = None          # d fixed at compile time, else bound to the perturbed count
    scale: Callable = staticmethod(lambda d, rho: torch.ones_like(d))   # target = scale * S + offset
    offset: Callable = staticmethod(lambda d, rho: torch.zeros_like(d))
    recommended: dict = {}              # the class's defaults for the hyperparameters (and "radius")
    Error: type = OptimizerError        # sharpc.errors.OptimizerError (a local class in standalone modules)
    _stepping: bool = False             # inside step(): zero_grad leaves .grad to the step

    def __init__(self, params, base_optimizer: type = torch.optim.SGD, *, rho: float | None = None,
                 strength: float | None = None, relative: bool | None = None, n_samples: int | None = None,
                 estimator: str | None = None, difference: str | None = None, clip: Any = "recommended",
                 adaptive: bool = False,
                 eta: float = 0.01, model: torch.nn.Module | None = None, generator: torch.Generator | None = None,
                 seed: int | None = None, nonfinite: str = "raise", memory: str = "sums",
                 distributed: str | None = "auto", process_group: Any = None, grad_scaler: Any = None,
                 **base_kwargs: Any):
        """Wrap ``base_optimizer``; omitted hyperparameters take the class's ``recommended`` values.

        The hyperparameters rho, strength, relative, n_samples, estimator, difference,
        adaptive and eta live in ``defaults`` and every param group: a group may override
        them, LR schedulers may anneal them, and ``state_dict`` saves them. n_samples,
        estimator and difference shape the whole step, so all groups must agree on them.

        Args:
            params: parameters or param-group dicts; a group with ``perturb=False`` is never
                perturbed (biases, norms) and does not count towards d.
            base_optimizer: the torch optimizer class that applies the combined gradient;
                unknown keyword arguments (lr, momentum, ...) go to it.
            rho: perturbation radius; a group's parameters are perturbed at its own rho, and
                Delta divides by the rho of the first perturbed group.
            strength: the objective is L + strength * target (the target as written, its
                dropped scale and offset folded back), the target estimated at radius rho.
            relative: divide strength by a running mean of |target - target at H = 0|
                (bias-corrected, decay 0.99), so strength is the weight of the log of the
                target's curvature-dependent part, whatever its size and constant terms.
            n_samples: samples per random sample group and step (a point mass takes one);
                cost 1 + groups * n passes, twice that with difference="antithetic". At
                least the U-statistic's order (unbiased) or the highest moment of Q that psi
                takes (plug-in: 2 for psi = (t, t**2)), which is the default.
            estimator: "unbiased" (U-statistic; polynomial phi and psi only), "plugin"
                (phi of the sample means, the paper's Algorithm 2) or "auto" (unbiased when available).
            clip: scale the regularizer's gradient down to at most clip * |grad L| (None: never;
                default: the class's recommended, or None with memory="lean" or ``distributed``),
                so heavy-tailed estimates (high powers of Delta) cannot throw a step; not with
                memory="lean".
            difference: how Delta estimates Q = v^T H v / 2: "one-sided" (L(x + rho v) - L(x))
                / rho**2, Algorithm 2, bias grad.v / rho; "antithetic" averages x +- rho v, bias
                O(rho**2), two passes per sample; "control" subtracts the known grad.v / rho,
                exact on quadratics, one pass per sample.
            adaptive: ASAM-style perturbation rho * (|x| + eta) * v.
            model: when given, perturbed passes leave BatchNorm running statistics untouched;
                without it they update them like any forward pass in train mode. A
                DistributedDataParallel model is run under ``no_sync()`` for every pass.
            generator: the perturbation sampler's own RNG (saved in state_dict).
            seed: seeds a new generator when none is given.
            nonfinite: on a non-finite loss or gradient, "raise" (OptimizerError, parameters
                restored), "skip" (count it in ``skipped_steps``) or "ignore" (no check, no
                host sync). "raise" and "skip" read one flag from the device per step, except
                "skip" with a fused base optimizer (``fused=True``): that skips on the device,
                as torch's GradScaler does (found_inf), with no host read; its skipped steps
                still advance the perturbation generator and leave .grad non-finite.
            memory: "sums" keeps running sums (at most 2 + slots parameter-sized buffers);
                "lean" keeps only the backup of x and pays n extra forward passes: the
                closure runs under torch.no_grad() for losses alone first, so it must call
                ``loss.backward()`` only when ``torch.is_grad_enabled()``.
            distributed: "sync" (every rank draws the same perturbations and sees the
                global mean losses: one optimizer on the global batch), "per-rank"
                (independent perturbations and local losses per rank) or None; "auto" is
                "sync" for a DistributedDataParallel ``model`` and None otherwise. Either
                mode averages the combined gradient over ranks once per step, and the
                constructor broadcasts rank 0's generator state and parameters.
            process_group: the group to average over (default: the DDP model's, else WORLD).
            grad_scaler: a torch.amp.GradScaler whose ``scale(loss).backward()`` the closure
                calls (returning the unscaled loss); the step unscales the combined gradient
                and lets the scaler skip the base step on inf/NaN. Call ``scaler.update()``
                after each step, and never ``scaler.step``/``unscale_`` yourself.
        """
        given = dict(rho=rho, strength=strength, relative=relative, n_samples=n_samples, estimator=estimator,
                     difference=difference, adaptive=adaptive, eta=eta)
        hyper = {k: self.recommended.get(k) if v is None else v for k, v in given.items()}
        hyper = {k: FALLBACK.get(k) if v is None else v for k, v in hyper.items()}
        if nonfinite not in ("raise", "skip", "ignore"):
            raise self.Error(f"nonfinite must be 'raise', 'skip' or 'ignore', got {nonfinite!r}")
        if memory not in ("sums", "lean"):
            raise self.Error(f"memory must be 'sums' or 'lean', got {memory!r}")
        if memory == "lean" and sum(g.kind == "dirac" for g in self.sample_groups) > 1:
            raise self.Error("memory='lean' supports at most one Dirac sample group (each one needs g0 kept)")
        if any(g.kind == "eigenvector" for g in self.sample_groups):
            if memory == "lean":
                raise self.Error("memory='lean' cannot track an eigenvector: power iteration needs each "
                                 "perturbed pass's gradient, which lean mode never holds; use memory='sums'")
            if adaptive or any(g.adaptive for g in self.sample_groups):
                raise self.Error("adaptive perturbations are not supported with an eigenvector measure")
        distributed = self._distributed_mode(distributed, model, process_group)
        if clip == "recommended":  # None is a value here (never clip). The class's clip needs the whole
            # regularizer in a buffer, which lean mode does not keep, and ranks would each clip their own share
            clip = None if memory == "lean" or distributed else self.recommended.get("clip")
        hyper["clip"] = clip
        scaler_api = ("scale", "step", "update", "is_enabled")
        if grad_scaler is not None and not all(hasattr(grad_scaler, a) for a in scaler_api):
            raise self.Error(f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")

        hyper.update(self._step_defaults(hyper["estimator"], hyper["n_samples"]))
        params = [materialized(g) for g in params]  # read twice: for the default rho, then by torch
        if any(isinstance(p, torch.Tensor) and p.is_meta for g in params
               for p in (g["params"] if isinstance(g, dict) else [g])):
            raise self.Error("parameters on the meta device hold no values to perturb: materialize them "
                             "(module.to_empty(device=...) and initialize or load them) before building the optimizer")
        if hyper["rho"] is None:
            hyper["rho"] = self._default_rho(params)
        super().__init__(params, dict(perturb=True, **hyper, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)
        self.model, self.nonfinite, self.memory, self.grad_scaler = model, nonfinite, memory, grad_scaler
        self._checked_settings: tuple = (None, None)
        self._settings()  # validates every group now, not at the first step
        self.sharpness: torch.Tensor | None = None
        self.skipped_steps = 0
        base = self.base_optimizer  # torch's fused optimizers skip a step on the device given found_inf
        self._skips_on_device = (nonfinite == "skip" and grad_scaler is None and bool(base.defaults.get("fused"))
                                 and getattr(base, "_step_supports_amp_scaling", False))
        self._estimator = Estimator(self)
        self._accumulation = Lean(self) if memory == "lean" else Sums(self)
        self._power = PowerIterations(self.sample_groups)
        self._last_kept: Kept | None = None       # the buffers the last step used (buffer_report)
        self._hyper: tuple = (None, None, {})     # per-element hyperparameters, for (kept, settings)
        self._kept: Kept | None = None           # flat buffers, kept while the parameter set is unchanged
        self._stats_kept: tuple | None = None     # kept copies of the running statistics
        device = self.param_groups[0]["params"][0].device
        if generator is None:
            if seed is None:  # derived from the global RNG, so torch.manual_seed reproduces runs
                seed = int(torch.randint(0, 2**62, ()).item())
            generator = torch.Generator(device=device).manual_seed(seed)
        elif generator.device.type != device.type:
            raise self.Error(f"the generator is on {generator.device} but the parameters are on {device}")
        self.generator = generator
        if any(p.is_complex() for p in self._trainable()):
            raise self.Error("complex parameters are not supported: Q = v^T H v / 2 and the perturbations are "
                             "real (view a complex parameter as two real ones with torch.view_as_real)")
        self._dimension(self._perturbed())
        self._ranks = Ranks(distributed, process_group, model, self._sharding(model, distributed))
        self._ranks.agree(self._configuration(execution=True))
        self._ranks.share_(self.generator, [p for g in self.param_groups for p in g["params"]])
        if self.derivatives != "symbolic":  # the autograd path differentiates psi by forward mode
            load_forward_ad()

    def _sharding(self, model: torch.nn.Module | None, distributed: str | None) -> Shards | None:
        """FSDP2 support (see Shards), when the parameters are DTensors; what it does not cover is refused."""
        params = [p for g in self.param_groups for p in g["params"]]
        sharded = [p for p in params if is_sharded(p)]
        if not sharded:
            return None
        why = None
        if len(sharded) != len(params) or not hasattr(model, "set_requires_gradient_sync"):
            why = "pass model=<the fully_shard module> that shards every parameter given to the optimizer"
        elif any(p.device_mesh.ndim != 1 or [(type(x).__name__, getattr(x, "dim", None)) for x in p.placements]
                 != [("Shard", 0)] for p in sharded):
            why = "only 1-D meshes with Shard(0) placements (fully_shard's default) are supported"
        elif distributed != "sync":
            why = "distributed='sync' is needed (per-rank perturbations would mix in the all-gathered parameters)"
        elif self.memory == "lean":
            why = "memory='lean' scales gradients by hooks on the parameters, which FSDP's backward bypasses"
        elif any(g["adaptive"] for g in self.param_groups) or any(g.adaptive for g in self.sample_groups):
            why = "adaptive perturbations need the full parameters"
        if why:
            raise self.Error(f"FSDP2 (DTensor parameters): {why}")
        return Shards(model, sharded)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient (reading it waits for the device)."""
        on_device = 0 if self._skipped_on_device is None else int(self._skipped_on_device.item())
        return self._skipped + on_device

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped, self._skipped_on_device = int(value), None

    def _step_defaults(self, estimator: str, n_samples: int | None) -> dict:
        """Resolve estimator="auto" and n_samples=None, so the param groups show what a step does."""
        if estimator == "auto":
            estimator = "plugin" if self.ustat is None else "unbiased"
        if n_samples is None:
            n_samples = self.ustat_order if estimator == "unbiased" else self.moment_order
        return dict(estimator=estimator, n_samples=n_samples)

    def _default_rho(self, params: list) -> float:
        """rho such that a typical perturbation |rho v| is ``radius`` times the perturbed parameters' norm.

        E|v| is sqrt(d) for a Gaussian (sqrt(d / precision) for the importance sampler), 1 on the
        unit sphere and half_width sqrt(d / 3) on a cube, so one relative radius means the same
        for every measure and model size.
        """
        groups = [g for g in params if isinstance(g, dict)] or [{"params": params}]
        tensors = [p for g in groups if g.get("perturb", True) for p in g["params"]
                   if isinstance(p, torch.Tensor) and p.requires_grad]
        d = sum(p.numel() for p in tensors)
        if d == 0:
            return 1.0  # the constructor refuses this below, with the reason
        norm = global_norm([local_shard(p).detach() for p in tensors])
        sharded = [p for p in tensors if is_sharded(p)]
        if sharded:  # FSDP2: the local shards' squared norms, summed over the shard group
            squared = norm.square()
            torch.distributed.all_reduce(squared, group=sharded[0].device_mesh.get_group())
            norm = squared.sqrt()
        norm = float(norm) or d ** 0.5
        random = [g for g in self.sample_groups if not g.deterministic]
        first = random[0] if random else GroupSpec("sphere", ())
        typical = {"gaussian": d ** 0.5, "importance": (d / first.precision) ** 0.5,
                   "hypercube": first.half_width * (d / 3) ** 0.5}.get(first.kind, 1.0)
        return self.recommended.get("radius", DEFAULT_RADIUS if random else POINT_RADIUS) * norm / typical

    def _settings(self) -> Settings:
        """The step's hyperparameters, read from the param groups and checked.

        Checked again only when a group's values change (a schedule, add_param_group): the
        check costs more than a tiny model's step should spend on it.
        """
        key = [(bool(g["params"]), *(g[k] for k in HYPERPARAMETERS)) for g in self.param_groups]
        if key != self._checked_settings[0]:
            self._checked_settings = (key, self._checked_groups())
        return self._checked_settings[1]

    def _checked_groups(self) -> Settings:
        for group in self.param_groups:
            rho, strength, eta = group["rho"], group["strength"], group["eta"]
            if not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 < rho < float("inf")):
                raise self.Error(f"rho must be a positive finite number, got {rho!r}")
            if not (isinstance(strength, (int, float)) and 0 <= strength < float("inf")):
                raise self.Error(f"strength must be a non-negative finite number, got {strength!r}")
            if not (isinstance(eta, (int, float)) and 0 <= eta < float("inf")):
                raise self.Error(f"eta must be a non-negative finite number, got {eta!r}")
        first = self.param_groups[0]
        for key in STEP_WIDE:
            values = {repr(g[key]) for g in self.param_groups}
            if len(values) > 1:
                raise self.Error(f"{key} shapes the whole step, so every param group must have the same "
                                 f"value; got {', '.join(sorted(values))}")
        estimator, n = self._step_defaults(first["estimator"], first["n_samples"]).values()
        difference = first["difference"]
        if estimator not in ("unbiased", "plugin"):
            raise self.Error(f"estimator must be 'auto', 'unbiased' or 'plugin', got {estimator!r}")
        if estimator == "unbiased" and self.ustat is None:
            raise self.Error(f"estimator='unbiased' is not available: {self.ustat_unavailable}; use 'plugin'")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise self.Error(f"n_samples must be a positive integer, got {n!r}")
        if estimator == "unbiased" and n < self.ustat_order:
            raise self.Error(f"the unbiased estimator of {self.target!r} averages over {self.ustat_order} "
                             f"distinct samples, so n_samples must be >= {self.ustat_order} (got {n}); "
                             "or use estimator='plugin'")
        if estimator == "plugin" and n < self.moment_order:
            raise self.Error(f"the plug-in estimate of {self.target!r} uses sample moments up to E[Q^"
                             f"{self.moment_order}], which fewer than {self.moment_order} samples make degenerate "
                             f"(one sample has variance exactly 0), so n_samples must be >= {self.moment_order} "
                             f"(got {n})")
        if difference not in DIFFERENCES:
            raise self.Error(f"difference must be one of {', '.join(map(repr, DIFFERENCES))}, got {difference!r}")
        if not isinstance(first["relative"], bool):
            raise self.Error(f"relative must be True or False, got {first['relative']!r}")
        clip = first["clip"]
        if clip is not None and not (isinstance(clip, (int, float)) and 0 < clip < float("inf")):
            raise self.Error(f"clip must be None or a positive finite number, got {clip!r}")
        if clip is not None and self.memory == "lean":
            raise self.Error("clip needs the regularizer's gradient in a buffer, which memory='lean' does not keep: "
                             "pass clip=None")
        perturbed = [g for g in self.param_groups if g["perturb"] and g["params"]]
        rho = float((perturbed or self.param_groups)[0]["rho"])
        return Settings(n, estimator, difference, first["relative"], rho, clip)

    def _distributed_mode(self, mode: str | None, model: torch.nn.Module | None, group: Any) -> str | None:
        """Resolve ``distributed``; "auto" warns where ranks would silently step apart."""
        ddp = isinstance(model, getattr(torch.nn.parallel, "DistributedDataParallel", ()))
        ddp = ddp or hasattr(model, "set_requires_gradient_sync")  # FSDP2 (fully_shard) likewise
        running = torch.distributed.is_available() and torch.distributed.is_initialized()
        if mode == "auto":
            mode = "sync" if ddp else None
            if mode is None and group is None and running and torch.distributed.get_world_size() > 1:
                warnings.warn("torch.distributed is initialized, but every rank steps on its own: pass "
                              "model=<the DDP model> or distributed='sync' / 'per-rank' (distributed=None "
                              "silences this)", stacklevel=3)
        if mode not in (None, "sync", "per-rank"):
            raise self.Error(f"distributed must be 'auto', 'sync', 'per-rank' or None, got {mode!r}")
        if mode is None and group is not None:
            raise self.Error("process_group= needs distributed='sync' or 'per-rank'")
        if mode is not None and not running:
            raise self.Error(f"distributed={mode!r} needs torch.distributed.init_process_group() first")
        return mode

    # ------------------------------------------------------------------ bookkeeping
    def _perturbed(self) -> list:
        return [p for g in self.param_groups if g["perturb"] for p in g["params"] if p.requires_grad]

    def _trainable(self) -> list:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _dimension(self, perturbed: list) -> int:
        """d, after checking the parameter set (checked at construction and whenever it changes)."""
        trainable = self._trainable()
        if len({id(p) for p in trainable}) != len(trainable):
            raise self.Error("a parameter appears twice in the param groups: it would be perturbed and counted "
                             "twice (d, norms, the combined gradient); pass each parameter once (tied weights "
                             "are one parameter)")
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
        return self._slots(self._settings())

    def _slots(self, cfg: Settings) -> int:
        return len(self.power_sums) if cfg.estimator == "unbiased" else self.m

    @property
    def distributed(self) -> str | None:
        """"sync", "per-rank" or None: how this optimizer shares a step across ranks."""
        return self._ranks.mode

    def buffer_report(self) -> dict:
        """Parameter-sized buffers a step holds besides .grad: the bound, and what the last step held.

        ``allocated`` counts the elements of the kept buffers the last step used, in units of
        the trainable parameters' element count (the backup covers perturbed parameters only).
        memory="sums" holds the backup, g0, the accumulators and the antithetic stash (the
        perturbation is drawn into the .grad buffer); memory="lean" the backup and the perturbation.
        """
        bound = 2 if self.memory == "lean" else 2 + self.slots + int(self._settings().difference == "antithetic")
        kept = self._last_kept
        allocated = None if kept is None else kept.kept() / sum(p.numel() for p in self._trainable())
        return {"bound": bound, "allocated": allocated}

    def _configuration(self, execution: bool = False) -> str:
        """What a checkpoint must share with this optimizer: the measure and the step's estimator.

        With ``execution``, also how the step runs (memory, nonfinite, distributed mode): what
        the ranks of one job must agree on. A checkpoint may be resumed with other choices.
        """
        cfg = self._settings()
        shared = dict(target=self.target, m=self.m, sample_groups=self.sample_groups, power_sums=self.power_sums,
                      fixed_d=self.fixed_d, n_samples=cfg.n_samples, estimator=cfg.estimator,
                      difference=cfg.difference, relative=cfg.relative, base=type(self.base_optimizer).__name__)
        if execution:
            shared.update(memory=self.memory, nonfinite=self.nonfinite, distributed=self._ranks.mode)
        return repr(shared)

    def state_dict(self) -> dict:
        state = self.base_optimizer.state_dict()
        state["phi_psi_sam"] = {"generator_state": self.generator.get_state(), "configuration": self._configuration(),
                                "skipped_steps": self.skipped_steps, "magnitude": self._estimator.magnitude.state(),
                                "eigenvectors": self._power.state()}
        if self._ranks.mode == "per-rank":
            state["phi_psi_sam"]["rank"] = self._ranks.rank
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint of an optimizer with this measure and configuration.

        Anything else (another measure or configuration, a plain torch optimizer's state, a
        corrupt generator state) raises OptimizerError and leaves this optimizer unchanged.
        In per-rank mode another rank's stream is split off for this rank.
        """
        ours = self._checked_state(state_dict)
        try:
            self.base_optimizer.load_state_dict({k: v for k, v in state_dict.items() if k != "phi_psi_sam"})
        except (ValueError, KeyError, TypeError) as error:
            raise self.Error(f"the checkpoint does not fit this optimizer's parameters: {error}") from error
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.generator.set_state(ours["generator_state"])
        self.skipped_steps = ours["skipped_steps"]
        self._estimator.magnitude.load(ours["magnitude"])
        # (a checkpoint from before several eigenvectors were tracked holds one u, as "eigenvector")
        self._power.load(ours.get("eigenvectors", [ours.get("eigenvector")]))
        if self._ranks.mode == "per-rank" and ours.get("rank") != self._ranks.rank:
            self._ranks.split_(self.generator)

    def _checked_state(self, state_dict: Any) -> dict:
        """Our part of a checkpoint, after checking that it was saved by an optimizer like this one."""
        ours = state_dict.get("phi_psi_sam") if isinstance(state_dict, dict) else None
        if not isinstance(ours, dict):
            raise self.Error(f"not a {type(self).__name__} checkpoint: it has no 'phi_psi_sam' entry (a plain "
                             "torch optimizer's state_dict?)")
        saved, mine = ours.get("configuration"), self._configuration()
        if saved != mine:
            raise self.Error(f"the checkpoint was saved by another measure or configuration:\n  saved: {saved}\n"
                             f"  this:  {mine}")
        missing = [k for k in ("generator_state", "skipped_steps", "magnitude") if k not in ours]
        if missing:
            raise self.Error(f"the checkpoint's 'phi_psi_sam' entry lacks {missing}")
        try:  # a scratch generator, so a corrupt state changes nothing here
            torch.Generator(device=self.generator.device).set_state(ours["generator_state"])
        except (RuntimeError, TypeError) as error:
            raise self.Error(f"the checkpoint's generator state is corrupt: {error}") from error
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or any(not isinstance(g, dict) or set(self.defaults) - set(g) for g in groups):
            raise self.Error("the checkpoint's param groups lack this optimizer's hyperparameters")
        return ours

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Take one step; returns the detached loss at the unperturbed parameters (averaged
        over ranks when distributed).

        ``closure`` computes the loss and calls ``backward()``; it is called 1 + groups * n
        times (1 + 2 * groups * n with difference="antithetic"; memory="lean" adds one
        loss-only call per perturbed point) and gradients are cleared before every call (a
        closure that calls ``zero_grad`` itself, torch's usual closure, is fine too).
        Afterwards ``.grad`` holds the combined gradient the base
        optimizer used (views of one buffer the next step reuses: clone what you keep) and
        ``self.sharpness`` the step's estimate of the target (at radius rho).

        Not thread-safe: common random numbers replay the process-wide RNG, so a step that
        finds another thread's step running raises OptimizerError instead of starting.
        """
        if closure is None:
            raise self.Error(f"{type(self).__name__}.step needs a closure that computes the loss "
                             "and calls loss.backward()")
        if not STEP_LOCK.acquire(blocking=False):
            raise self.Error("another thread is inside a sharpc optimizer step: common random numbers replay "
                             "the global RNG, so concurrent steps would draw each other's dropout masks; step "
                             "sharpc optimizers from one thread at a time")
        self._stepping = True
        try:
            return self._step(closure)
        finally:
            self._stepping = False
            STEP_LOCK.release()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's, except inside a step, where the step itself clears .grad before each pass."""
        if not self._stepping:
            super().zero_grad(set_to_none)

    def _step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        s = self._start(self._settings())
        try:
            loss0 = self._clean_pass(closure, s)
            loss0, sharpness, coefficients = self._accumulation.passes(closure, s, loss0)
            self._accumulation.gradient(closure, s, coefficients)
            loss0, sharpness, finite = self._agree(s, loss0, sharpness, coefficients)
            self.sharpness = sharpness
            if finite is False:
                return self._skip(s, loss0)
            keep = finite if isinstance(finite, torch.Tensor) else None  # the verdict, left on the device
            self._estimator.magnitude.commit(keep)
            self._power.commit(self._ranks, keep)
        except BaseException as error:
            self._undo(s)
            if isinstance(error, self.Error) or not isinstance(error, Exception):
                raise
            raise self.Error(f"the step failed at the {s.where} ({type(error).__name__}: {error}); "
                             "parameters restored to their pre-step values") from error
        finally:
            if s.witness is not None:
                s.witness.remove()
        if keep is not None:
            self._base_step_on_device(s, keep)
        elif self.grad_scaler is None:
            self.base_optimizer.step()
        else:  # the gradient is the scaler's scale times the true one: it unscales, checks and steps
            self.grad_scaler.step(self.base_optimizer)
        return loss0

    def _base_step_on_device(self, s: Step, finite: torch.Tensor) -> None:
        """The base step, skipped on the device where the step was not finite (found_inf, as
        GradScaler does for fused optimizers); running statistics go back where it was skipped."""
        base = self.base_optimizer
        base.grad_scale, base.found_inf = None, (~finite).to(torch.float32)
        try:
            base.step()
        finally:
            del base.grad_scale, base.found_inf
        for stat, before in zip(s.stats, s.stats_before):
            torch.where(finite, stat, before, out=stat)
        skipped = (~finite).long()
        self._skipped_on_device = skipped if self._skipped_on_device is None else self._skipped_on_device + skipped

    def _start(self, cfg: Settings) -> Step:
        """The step's working set, with x and the running statistics copied into kept buffers."""
        perturbed, trainable = self._perturbed(), self._trainable()
        stats = running_stats(self.model)
        if self._stats_kept is None or self._stats_kept[0] != signature(stats):
            layout = Layout(stats)
            self._stats_kept = (signature(stats), layout.views(layout.zeros()), layout.views(layout.zeros()))
        _, before, clean = self._stats_kept
        kept = self._kept
        if kept is None or kept.key[0] != signature(perturbed):  # x is needed before the clean pass
            ids = {id(p) for p in perturbed}  # graded as when the closure reaches every parameter
            graded = perturbed + [p for p in trainable if id(p) not in ids]
            self._dimension(perturbed)
            kept = self._kept = Kept(perturbed, graded, self._slots(cfg), cfg.difference == "antithetic",
                                     self.memory == "lean")
        s = Step(perturbed, trainable, stats, before, clean, CommonRandomNumbers(kept.devices), kept.d, cfg,
                 kept.x_views)
        s.writable = [local_shard(p) for p in perturbed] if kept.sharded else perturbed
        torch._foreach_copy_(s.backup, s.writable)
        if stats:
            torch._foreach_copy_(before, stats)
        s.generator_before = self.generator.get_state()
        for p in trainable:
            p.grad = None
        return s

    def _clean_pass(self, closure: Callable, s: Step) -> torch.Tensor:
        """L(x) (this rank's) and g0 in the kept buffers; its RNG state is replayed for every later pass.

        Afterwards the .grad of every parameter with a gradient is a view of the kept ``grad`` buffer.
        """
        loss0 = self._evaluate(closure)
        shards = self._ranks.shards
        grads = shards.take(s.trainable) if shards else [p.grad for p in s.trainable]
        s.reached = [p for p, g in zip(s.trainable, grads) if g is not None]
        if not s.reached:
            raise self.Error("the closure did not call loss.backward(): no parameter has a gradient")
        if any(g.is_sparse for g in grads if g is not None):
            raise self.Error("sparse gradients (e.g. nn.Embedding(sparse=True)) are not supported: perturbations "
                             "move every coordinate, so the step keeps dense buffers; use sparse=False")
        # every rank all-reduces the same layout: there, unreached parameters count as zero
        reached = s.trainable if self._ranks.mode else s.reached
        perturbed = {id(p) for p in s.perturbed}
        graded = s.perturbed + [p for p in reached if id(p) not in perturbed]
        lean = self.memory == "lean"
        perturbed_signature = self._kept.key[0]  # checked by _start; graded starts with the perturbed parameters
        key = (perturbed_signature, perturbed_signature if len(graded) == len(s.perturbed) else signature(graded),
               self._slots(s.cfg), s.cfg.difference == "antithetic", lean)
        if self._kept.key != key:
            backup = self._kept.x
            self._kept = Kept(s.perturbed, graded, *key[2:])
            torch._foreach_copy_(self._kept.x, backup)
        s.kept = kept = self._kept
        s.backup = kept.x_views
        if len(s.reached) != len(graded):
            torch._foreach_zero_(kept.g0)
        grad_of = {id(p): g for p, g in zip(s.trainable, grads)}
        has_grad = [(v, grad_of[id(p)]) for v, p in zip(kept.g0_views, graded) if grad_of.get(id(p)) is not None]
        torch._foreach_copy_([v for v, _ in has_grad], [g for _, g in has_grad])
        if not shards:  # FSDP2 keeps its own: _pass takes them from it
            for p, view in zip(graded, kept.grad_views):
                p.grad = view
        self._watch(s)
        s.rng.clean_pass_done()
        if s.stats:
            torch._foreach_copy_(s.stats_clean, s.stats)
        return loss0

    def _watch(self, s: Step) -> None:
        """Count backward passes: a parameter the clean pass reached is reached by every pass that calls backward."""
        def counted(_: torch.Tensor) -> None:
            s.backwards += 1
        first = s.reached[0]
        target = self._ranks.shards.unsharded(first) if self._ranks.shards else first
        s.witness = target.register_post_accumulate_grad_hook(counted)

    def _called_backward(self, s: Step, before: int) -> None:
        if s.backwards == before:
            raise self.Error(f"the closure did not call loss.backward() at the {s.where}; it must on every "
                             "call that runs with gradients enabled (the step clears them before each call)")

    def _agree(self, s: Step, loss0, sharpness, coefficients) -> tuple:
        """(loss0, R, whether the step is finite), alike on every rank; the step's one host read
        (the verdict stays a 0-d bool on the device when the base optimizer can skip there).

        It runs once the combined gradient is in the kept g0 buffer: that gradient (what the base
        optimizer would take, so strength * regularizer overflowing is caught too), the losses
        and the coefficients are checked, unless a GradScaler checks and skips the gradient. In
        per-rank mode losses differ between ranks, so loss0, R and the verdict are averaged
        (one all-reduce of three scalars): no rank skips a step the others take.
        """
        check = self.nonfinite != "ignore"
        if check or self._ranks.mode == "per-rank":
            scaled = self.grad_scaler is not None and self.grad_scaler.is_enabled()  # (the scaler checks the gradient)
            total = checksum(s.losses, coefficients, s.kept, gradient=not scaled)
        if self._ranks.mode == "per-rank":
            shared = torch.stack([loss0, sharpness.to(loss0.dtype), (~torch.isfinite(total)).to(loss0.dtype)])
            self._ranks.mean_([shared])
            loss0, sharpness, total = shared[0], shared[1], shared[2]  # 0 where every rank is finite
            total = torch.where(total == 0, 0.0, float("nan"))
        if not check:
            return loss0, sharpness, True
        if self._skips_on_device:
            return loss0, sharpness, torch.isfinite(total)
        return loss0, sharpness, math.isfinite(total.item())

    def _skip(self, s: Step, loss0: torch.Tensor) -> torch.Tensor:
        """A non-finite step: restore everything, then raise or count it."""
        self._undo(s)
        if self.nonfinite == "raise":
            raise self._nonfinite_error(s.losses)
        self.skipped_steps += 1
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            # the scaler sees an overflow: it skips, backs off, and update() has its record
            for p in s.reached:
                p.grad = torch.full_like(p, float("nan"))
            self.grad_scaler.step(self.base_optimizer)
            for p in s.trainable:
                p.grad = None
        return loss0

    def _nonfinite_error(self, losses: list) -> Exception:
        bad = [i for i, loss in enumerate(losses) if not torch.isfinite(loss).item()]
        if bad:
            what = "a non-finite loss at " + ("the unperturbed point" if bad[0] == 0 else f"perturbed pass {bad[0]}")
        elif self._ranks.mode == "per-rank":
            what = "a non-finite loss, sharpness estimate or phi' on some rank"
        else:
            what = ("a non-finite gradient (strength * regularizer overflowed, or the loss gradient itself), phi' "
                    "(the means left phi's domain) or target scale (overflow: use relative=True)")
        return self.Error(f"{what}; parameters restored to their pre-step values "
                          "(nonfinite='skip' skips such steps instead)")

    def _strengths(self, s: Step) -> float | list:
        """Each graded parameter's group strength: one number, or per-element buffers."""
        return self._per_element(s, "strength", outer=False)

    def _per_element(self, s: Step, key: str, outer: bool = True) -> float | list:
        """A hyperparameter of the perturbed (outer) or graded parameters' groups, as Kept.per_element
        gives it; worked out once per parameter set and settings (the settings hold every group's values)."""
        kept, cfg, known = self._hyper
        if kept is not s.kept or cfg is not s.cfg:
            known = {}
            self._hyper = (s.kept, s.cfg, known)
        if (key, outer) not in known:
            known[key, outer] = self._group_values(s, key, outer)
        return known[key, outer]

    def _group_values(self, s: Step, key: str, outer: bool) -> float | list:
        groups = [g for g in self.param_groups if not outer or g["perturb"]]
        if len({float(g[key]) for g in groups}) == 1:
            return float(groups[0][key])
        value_of = {id(p): float(g[key]) for g in groups for p in g["params"]}
        return s.kept.per_element(key, [value_of[id(p)] for p in (s.perturbed if outer else s.kept.graded)], outer)

    @staticmethod
    def _readopt(s: Step, accumulate: bool) -> None:
        """Make .grad views of the kept buffer again where the closure replaced them.

        ``model.zero_grad()`` inside the closure sets .grad to None, and backward then
        allocates a fresh tensor: its value is copied (one pass) or added (lean mode's
        weighted passes accumulate) into the kept view. Costs identity checks only otherwise.
        """
        for p, view in zip(s.kept.graded, s.kept.grad_views):
            if p.grad is not view:
                if p.grad is not None:
                    view.add_(p.grad) if accumulate else view.copy_(p.grad)
                p.grad = view

    # ------------------------------------------------------------------ shared pieces
    def _reads_g0(self, cfg: Settings) -> bool:
        """Whether perturbations (SAM's direction) or Deltas (the control variate) use g0."""
        return cfg.difference == "control" or any(g.kind == "dirac" for g in self.sample_groups)

    def _evaluate(self, closure: Callable) -> torch.Tensor:
        """One closure call with gradients on; a DDP model does not all-reduce its backward."""
        if self._ranks.ddp is None and self._ranks.shards is None:
            with torch.enable_grad():
                loss = closure()
        else:
            with torch.enable_grad(), self._ranks.no_sync():
                loss = closure()
        return self._checked(loss)

    def _checked(self, loss: Any) -> torch.Tensor:
        """The detached loss, in at least float32 (Delta divides a loss difference by rho**2)."""
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise self.Error(f"the closure must return the loss as a 0-d tensor, got {shape}")
        loss = loss.detach()
        return loss if loss.dtype in WIDE_ENOUGH else loss.to(torch.promote_types(loss.dtype, torch.float32))

    def _perturb(self, group: GroupSpec, s: Step, linear: bool = False) -> torch.Tensor | None:
        """Write x + e, e = rho * a * v, into the perturbed parameters (a = |x| + eta when adaptive).

        e is built in the kept flat buffer ``e``, one kernel per operation. Each parameter
        moves at its group's rho. With ``linear``, returns g0 . e (the control variate's
        known first-order term).
        """
        kept = s.kept
        e = kept.e
        if group.kind == "dirac":  # SAM: v = a g0 / |a g0|, so the step is rho a^2 g0 / |a g0| (ASAM)
            if self._adaptive(s, group.adaptive):
                torch._foreach_copy_(e, kept.g0_prefix)
                self._scale_adaptive(s, group.adaptive)
                torch._foreach_div_(e, global_norm(e).clamp_min(torch.finfo(e[0].dtype).tiny))
            else:
                norm = global_norm(kept.g0_prefix).clamp_min(torch.finfo(e[0].dtype).tiny)
                for v, g in zip(e, kept.g0_prefix):
                    torch.div(g, norm, out=v)
        elif group.kind == "point":  # e_i indexes the parameters flattened in order, not the buffers
            draw_("point", kept.e_views, support=group.support)
        elif group.kind == "eigenvector":
            torch._foreach_copy_(e, self._power[group].vector(kept, self.generator))
        else:
            draw_(group.kind, e, self.generator, group.half_width, precision=group.precision)
            if group.weighted:  # of v itself, before |x| and rho scale it (float64: the d/2 log term is large)
                squared = torch.stack(torch._foreach_norm(e, 2, dtype=torch.float64)).square().sum()
                s.log_weight = lebesgue_log_weight(squared, s.d, group.precision)
        self._scale_adaptive(s, group.adaptive)
        rho = self._per_element(s, "rho")
        dot = None
        if kept.sharded:  # e is the full draw, x this rank's rows: write x + e on the local rows
            torch._foreach_mul_(e, rho)
            dot = sum(torch.dot(a, b) for a, b in zip(e, kept.g0_prefix)) if linear else None
            torch._foreach_copy_(s.writable, kept.x_views)
            torch._foreach_add_(s.writable, kept.e_local)
        elif linear or isinstance(rho, list):
            torch._foreach_mul_(e, rho)
            dot = sum(torch.dot(a, b) for a, b in zip(e, kept.g0_prefix)) if linear else None
            torch._foreach_add_(e, kept.x)
            torch._foreach_copy_(s.writable, kept.e_views)
        else:  # x + rho v in one kernel per buffer
            for v, x in zip(e, kept.x):
                torch.add(x, v, alpha=rho, out=v)
            torch._foreach_copy_(s.writable, kept.e_views)
        return dot

    def _adaptive(self, s: Step, measure_is_adaptive: bool) -> float | list:
        """1 where the perturbation is scaled by |x| + eta (the measure's or the group's choice), else 0."""
        return 1.0 if measure_is_adaptive else self._per_element(s, "adaptive")

    def _scale_adaptive(self, s: Step, measure_is_adaptive: bool) -> None:
        """e *= |x| + eta where the measure or the parameter's group is adaptive."""
        adaptive = self._adaptive(s, measure_is_adaptive)
        if adaptive == 0.0:
            return
        factor = torch._foreach_add(torch._foreach_abs(s.kept.x), self._per_element(s, "eta"))
        if isinstance(adaptive, list):  # some groups adaptive, some not: factor 1 for the rest
            factor = [torch.where(mask > 0, f, 1) for f, mask in zip(factor, adaptive)]
        torch._foreach_mul_(s.kept.e, factor)

    def _reflect(self, s: Step) -> None:
        """x + e -> x - e, with e exactly the applied offset (x + e) - x."""
        torch._foreach_sub_(s.writable, s.backup)
        torch._foreach_neg_(s.writable)
        torch._foreach_add_(s.writable, s.backup)

    def _back_to_x(self, s: Step) -> None:
        """x bit-exactly, with BatchNorm statistics and the global RNG as the clean pass left them."""
        torch._foreach_copy_(s.writable, s.backup)
        if s.stats:
            torch._foreach_copy_(s.stats, s.stats_clean)
        s.rng.finish()

    def _forget_unreached(self, s: Step) -> None:
        if len(s.reached) == len(s.trainable):
            return
        reached = {id(p) for p in s.trainable} if self._ranks.mode else {id(p) for p in s.reached}
        for p in s.trainable:
            if id(p) not in reached:
                p.grad = None

    def _undo(self, s: Step) -> None:
        """Put parameters, running statistics and both RNGs back as they were before the step.

        A retried step therefore draws the same perturbations and dropout masks.
        """
        torch._foreach_copy_(s.writable, s.backup)
        if s.generator_before is not None:
            self.generator.set_state(s.generator_before)
        if s.stats:
            torch._foreach_copy_(s.stats, s.stats_before)
        for p in s.trainable:
            p.grad = None
        s.rng.finish()
        self._power.abandon()
