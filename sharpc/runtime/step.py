"""A step's configuration (Settings, from the param groups) and working set (Step)."""

from dataclasses import dataclass, field
from typing import Any

from .replay import CommonRandomNumbers

#: How Delta is formed from the losses around x (see PhiPsiSAM's ``difference``).
DIFFERENCES = ("one-sided", "antithetic", "control")


@dataclass(frozen=True)
class Settings:
    """What one step does, from the param groups (rho is the reference radius Delta divides by)."""

    n_samples: int
    estimator: str
    difference: str
    relative: bool
    rho: float
    clip: float | None


@dataclass
class Step:
    """One step's working set: what the passes share, and what a failure must put back."""

    perturbed: list
    trainable: list
    stats: list                         # running statistics (BatchNorm)
    stats_before: list                  # views of kept copies: before the step, after the clean pass
    stats_clean: list
    rng: CommonRandomNumbers
    d: int
    cfg: Settings
    backup: list                        # views of x (kept), for the perturbed parameters
    where: str = "unperturbed point"
    losses: list = field(default_factory=list)       # every pass's loss (the global mean in sync mode)
    reached: list = field(default_factory=list)      # parameters the clean pass gave a gradient
    kept: Any = None                                 # Kept: the flat buffers of this parameter set
    weights: list = field(default_factory=list)      # memory="lean": W[group][i], the weight of g_i
    linear: list = field(default_factory=list)       # difference="control": g0 . e of each perturbed point
    writable: list = field(default_factory=list)     # the perturbed parameters' tensors to write (FSDP2: local shards)
    log_weight: Any = None                           # importance groups: log w of the latest sample (float64)
    log_weights: list = field(default_factory=list)  # log w[group][i] (empty lists for unweighted groups)
    generator_before: Any = None                     # the perturbation generator's state: a failed step leaves it
    start: Any = None                                # memory="lean": the generator state before the draws
    witness: Any = None                              # hook handle counting backward passes (see _watch)
    backwards: int = 0                               # backward passes that reached the witness parameter
