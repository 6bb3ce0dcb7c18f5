"""Flat storage: a step's parameter-sized buffers, one per (device, dtype), kept between steps."""

import torch


class Layout:
    """Tensors packed into one contiguous buffer per (device, dtype), in their order within each.

    Every parameter-sized buffer of a step has this form, so each update is one kernel per
    buffer whatever the number of parameter tensors; views shaped like the tensors connect
    the buffers to the parameters and their .grad.
    """

    def __init__(self, tensors: list):
        self.shapes = [t.shape for t in tensors]
        self.members: dict = {}
        for i, t in enumerate(tensors):
            self.members.setdefault((t.device, t.dtype), []).append(i)
        self.sizes = {key: [self.shapes[i].numel() for i in index] for key, index in self.members.items()}

    def zeros(self) -> list:
        return [torch.zeros(sum(self.sizes[key]), device=key[0], dtype=key[1]) for key in self.members]

    def views(self, buffers: list) -> list:
        """Views of ``buffers`` (one per key; longer ones are read from the start) shaped like the tensors."""
        out: list = [None] * len(self.shapes)
        for buffer, (key, index) in zip(buffers, self.members.items()):
            for i, piece in zip(index, buffer[:sum(self.sizes[key])].split(self.sizes[key])):
                out[i] = piece.view(self.shapes[i])
        return out

    def prefixes(self, buffers: list, layout: "Layout") -> list:
        """The first elements of ``buffers`` (laid out by ``layout``) that this layout's buffers span."""
        by_key = dict(zip(layout.members, buffers))
        return [by_key[key][:sum(self.sizes[key])] for key in self.members]

    def filled(self, values: list) -> list:
        """Buffers holding each tensor's value of ``values`` at its elements."""
        return [torch.tensor([float(values[i]) for i in index], dtype=key[1], device=key[0])
                .repeat_interleave(torch.tensor(self.sizes[key], device=key[0])) for key, index in self.members.items()]


def signature(tensors: list) -> tuple:
    return tuple((id(t), t.shape, t.dtype, t.device) for t in tensors)


class Kept:
    """A step's parameter-sized buffers, allocated for one parameter set and reused by every step.

    ``x`` (the backup) covers the perturbed parameters. ``grad`` (the .grad tensors become
    views of it), ``g0``, the accumulators and the antithetic stash cover the parameters
    with a gradient, ordered perturbed-first within each buffer so that their perturbed part
    is a prefix: memory="sums" draws each perturbation into the prefix of ``grad`` (free
    until the pass refills it), and SAM's direction reads the prefix of ``g0``. memory="lean"
    keeps g0 in ``grad`` itself and draws into a buffer ``e`` of its own.
    """

    def __init__(self, perturbed: list, graded: list, slots: int, stash: bool, lean: bool):
        self.key = (signature(perturbed), signature(graded), slots, stash, lean)
        self.graded = graded
        self.outer, self.inner = Layout(perturbed), Layout(graded)
        # FSDP2: x holds this rank's shards, everything else is full-size (see Shards)
        self.sharded = any(is_sharded(p) for p in perturbed)
        local = Layout([local_shard(p) for p in perturbed]) if self.sharded else self.outer
        self.x = local.zeros()
        self.x_views = local.views(self.x)
        self.grad = self.inner.zeros()
        self.grad_views = self.inner.views(self.grad)
        self.g0 = self.grad if lean else self.inner.zeros()
        self.g0_views = self.inner.views(self.g0)
        self.acc = [] if lean else [self.inner.zeros() for _ in range(slots)]
        self.stash = self.inner.zeros() if stash and not lean else []
        self.e = self.outer.zeros() if lean else self.outer.prefixes(self.grad, self.inner)
        self.e_views = self.outer.views(self.e)
        self.e_local = [rows_of(v, p) for v, p in zip(self.e_views, perturbed)] if self.sharded else self.e_views
        self.g0_prefix = self.outer.prefixes(self.g0, self.inner)
        self.d = sum(p.numel() for p in perturbed)  # the number of perturbed parameters
        # g0's buffers are summed in at least float32 (the finiteness check)
        self.sum_dtypes = [torch.promote_types(g.dtype, torch.float32) for g in self.g0]
        self.devices = {p.device for p in graded}
        self._filled: dict = {}

    def per_element(self, name: str, values: list, outer: bool = True) -> float | list:
        """One number when every tensor has the same value, else buffers of per-element values.

        The buffers of each hyperparameter ``name`` are kept until its values change (a
        schedule that anneals one group's rho rebuilds them; nothing accumulates).
        """
        if len(set(values)) == 1:
            return float(values[0])
        values = tuple(values)
        if self._filled.get(name, (None,))[0] != values:
            self._filled[name] = (values, (self.outer if outer else self.inner).filled(values))
        return self._filled[name][1]

    def kept(self) -> int:
        """Elements held for the step beyond the .grad buffer itself."""
        lean = self.g0 is self.grad
        held = [*self.x, *(self.e if lean else self.g0), *self.stash, *(t for a in self.acc for t in a)]
        return sum(t.numel() for t in held)


def local_shard(p: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this rank holds: an FSDP2 DTensor's local shard, else the tensor."""
    return p.to_local() if is_sharded(p) else p


def is_sharded(p: torch.Tensor) -> bool:
    return type(p).__name__ == "DTensor" and hasattr(p, "to_local")


def rows_of(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The rows of ``full`` (shaped like p) that this rank's shard of p holds (torch.chunk on dim 0)."""
    if not is_sharded(p):
        return full
    world, rank = p.device_mesh.size(), p.device_mesh.get_local_rank()
    start = min(rank * -(-p.shape[0] // world), p.shape[0])
    return full[start: start + p.to_local().shape[0]]
