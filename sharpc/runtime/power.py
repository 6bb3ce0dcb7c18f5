"""Power iteration for the eigenvector measures (max(l), min(l), max(abs(l)), l[0], l[-1])."""

import torch

from .ranks import Ranks
from .sampling import GroupSpec, draw_, global_norm
from .storage import Kept


class PowerIteration:
    """The unit vector u of an "eigenvector" sample group, kept across steps (one per optimizer).

    Each step proposes sign H u + shift u from its perturbed pair (``propose``); a step that
    goes through makes it, normalized, the next u (``commit``: averaged over ranks first, since
    each rank's H u comes from its own batch). It starts as a random unit vector.
    """

    def __init__(self) -> None:
        self.u: list | None = None
        self.pending: list | None = None
        self.proposed = False

    def vector(self, kept: Kept, generator: torch.Generator) -> list:
        shapes = [t.shape for t in kept.e]
        if self.u is None or [t.shape for t in self.u] != shapes:
            self.u = [torch.empty_like(t) for t in kept.e]
            draw_("sphere", self.u, generator)
            self.pending = [torch.empty_like(t) for t in kept.e]
        return self.u

    def propose(self, kept: Kept, plus: list, minus: list | None, step: float, group: GroupSpec) -> None:
        """pending = sign (plus - minus) / step + shift u over the perturbed prefix (minus None: plus alone)."""
        torch._foreach_copy_(self.pending, kept.outer.prefixes(plus, kept.inner))
        if minus is not None:
            torch._foreach_sub_(self.pending, kept.outer.prefixes(minus, kept.inner))
        torch._foreach_mul_(self.pending, group.sign / step)
        if group.shift:
            torch._foreach_add_(self.pending, self.u, alpha=group.shift)
        self.proposed = True

    def commit(self, ranks: "Ranks", keep: torch.Tensor | None = None) -> None:
        """Make the proposal u; with ``keep`` (a 0-d bool on the device) only where it is true."""
        if not self.proposed:
            return
        if ranks.sync:
            ranks.mean_(self.pending)
        norm = global_norm(self.pending)
        torch._foreach_div_(self.pending, norm.clamp_min(torch.finfo(norm.dtype).tiny))
        if keep is not None:
            for new, old in zip(self.pending, self.u):
                torch.where(keep, new, old, out=new)
        self.u, self.pending, self.proposed = self.pending, self.u, False

    def state(self) -> list | None:
        return None if self.u is None else [t.clone() for t in self.u]

    def load(self, u: list | None) -> None:
        self.u = None if u is None else [t.clone() for t in u]
        self.pending = None if u is None else [torch.empty_like(t) for t in u]


class PowerIterations:
    """One PowerIteration per eigenvector sample group (max(l) - min(l) tracks two), by GroupSpec."""

    def __init__(self, groups: tuple) -> None:
        self.by_group = {group: PowerIteration() for group in groups if group.kind == "eigenvector"}

    def __getitem__(self, group: GroupSpec) -> PowerIteration:
        return self.by_group[group]

    def commit(self, ranks: "Ranks", keep: torch.Tensor | None = None) -> None:
        for iteration in self.by_group.values():
            iteration.commit(ranks, keep)

    def abandon(self) -> None:
        """Drop this step's proposals (a failed step)."""
        for iteration in self.by_group.values():
            iteration.proposed = False

    def state(self) -> list:
        return [iteration.state() for iteration in self.by_group.values()]

    def load(self, states: list) -> None:
        for iteration, u in zip(self.by_group.values(), states):
            iteration.load(u)
