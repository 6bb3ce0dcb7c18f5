"""Communication: none, "sync" (the ranks act as one optimizer) or "per-rank", and FSDP2 shards."""

import contextlib
import hashlib
from typing import Any

import torch

from ..errors import OptimizerError


class Shards:
    """FSDP2 (``fully_shard``): parameters are DTensors whose rows (dim 0) are split over the ranks.

    A step runs every pass with FSDP's gradient sync off, so FSDP leaves each pass's full
    (unsharded) gradient of this rank's batch on its unsharded parameter; ``take`` moves it
    into the step's kept buffers, which stay full-size. Perturbations are drawn full-size too
    (the same stream as one process) and only this rank's rows are written into the local
    shards. The combined gradient crosses ranks once, as one reduce-scatter (``scatter``).
    """

    def __init__(self, model: torch.nn.Module, params: list):
        self.model = model
        self.group = params[0].device_mesh.get_group()
        self.world = torch.distributed.get_world_size(self.group)
        self._unsharded: dict | None = None  # id(sharded param) -> FSDPParam, once FSDP has initialized

    def _fsdp_params(self) -> dict:
        if self._unsharded is None:
            found = {}
            for module in self.model.modules():
                state = module._get_fsdp_state() if hasattr(module, "_get_fsdp_state") else None
                group = getattr(state, "_fsdp_param_group", None)
                for fsdp_param in getattr(group, "fsdp_params", ()):
                    found[id(fsdp_param.sharded_param)] = fsdp_param
            if not found:
                raise OptimizerError("parameters are DTensors, but model= is not an FSDP2 (fully_shard) module")
            self._unsharded = found
        return self._unsharded

    def unsharded(self, p: torch.Tensor) -> torch.Tensor:
        """The full parameter FSDP runs the forward with (its gradient lands there)."""
        return self._fsdp_params()[id(p)].unsharded_param

    def take(self, params: list) -> list:
        """Each parameter's full gradient of the last pass (None if unreached), cleared in FSDP."""
        grads = []
        for p in params:
            fsdp_param = self._fsdp_params()[id(p)]
            grad = fsdp_param.unsharded_accumulated_grad
            if grad is not None:
                fsdp_param.unsharded_accumulated_grad = None
            else:
                grad = fsdp_param.unsharded_param.grad
                fsdp_param.unsharded_param.grad = None
            grads.append(grad)
        return grads

    def no_sync(self) -> contextlib.AbstractContextManager:
        @contextlib.contextmanager
        def off():
            self.model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)
        return off()

    def scatter(self, params: list, fulls: list) -> None:
        """.grad = this rank's rows of the rank mean of ``fulls``: one reduce-scatter.

        Rank r holds rows [r c, (r + 1) c) of each parameter, c = ceil(rows / world) (torch.chunk),
        so each parameter is padded to world * c rows and laid out rank-major.
        """
        chunks = [-(-p.shape[0] // self.world) * (p.numel() // max(p.shape[0], 1)) for p in params]
        send = fulls[0].new_zeros(self.world, sum(chunks))
        offset = 0
        for full, chunk in zip(fulls, chunks):
            flat = full.reshape(-1)
            padded = flat.new_zeros(self.world * chunk)
            padded[: flat.numel()] = flat
            send[:, offset: offset + chunk] = padded.view(self.world, chunk)
            offset += chunk
        mine = send.new_empty(sum(chunks))
        torch.distributed.reduce_scatter_tensor(mine, send.view(-1), group=self.group)
        mine /= self.world
        offset = 0
        for p, chunk in zip(params, chunks):
            local = p.to_local()
            shard = mine[offset: offset + local.numel()].view(local.shape).clone()
            p.grad = type(p).from_local(shard, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
            offset += chunk


class Ranks:
    """The data-parallel side of a step; with mode None every method does nothing.

    "sync" makes the ranks one optimizer on the global batch; "per-rank" keeps each rank's
    perturbations and losses local (the m-sharpness of the SAM paper) and shares only the
    combined gradient. Either way gradients cross ranks once per step, averaged like DDP's.
    """

    def __init__(self, mode: str | None, group: Any = None, model: torch.nn.Module | None = None,
                 shards: Shards | None = None):
        ddp = getattr(torch.nn.parallel, "DistributedDataParallel", ())
        self.ddp = model if isinstance(model, ddp) else None
        self.shards = shards
        if group is None and self.ddp is not None:
            group = self.ddp.process_group
        self.mode, self.group = mode, group
        self.world = torch.distributed.get_world_size(group) if mode else 1
        self.rank = torch.distributed.get_rank(group) if mode else 0

    @property
    def sync(self) -> bool:
        return self.mode == "sync"

    def mean_(self, tensors: list) -> None:
        """Average each tensor over the ranks in place: one all-reduce per tensor."""
        if self.mode is None:
            return
        for t in tensors:
            torch.distributed.all_reduce(t, group=self.group)
        torch._foreach_div_(tensors, self.world)

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """In sync mode, the loss averaged over ranks: the mean loss of the global batch."""
        if not self.sync:
            return loss
        loss = loss.clone()  # never all-reduce into the caller's tensor
        self.mean_([loss])
        return loss

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Closure calls must not make a DDP model all-reduce each backward: the step does it once."""
        if self.shards is not None:
            return self.shards.no_sync()
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def _source(self) -> int:
        return 0 if self.group is None else torch.distributed.get_global_rank(self.group, 0)

    def agree(self, configuration: str) -> None:
        """Check that every rank was built with the same configuration: one all-gather of a hash.

        A mismatch raises ``error`` on every rank (each sees all hashes), before any rank
        starts a collective the others would not match.
        """
        if self.mode is None:
            return
        digest = int.from_bytes(hashlib.sha256(configuration.encode()).digest()[:8], "little", signed=True)
        nccl = torch.distributed.get_backend(self.group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        mine = torch.tensor([digest], dtype=torch.int64, device=device)
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        torch.distributed.all_gather(everyone, mine, group=self.group)
        differ = [r for r, h in enumerate(everyone) if not torch.equal(h, everyone[0])]
        if differ:
            raise OptimizerError(f"the ranks were built with different optimizer configurations (ranks {differ} "
                                 f"differ from rank 0; this rank's: {configuration}): every rank must construct "
                                 "the same optimizer class with the same options")

    def share_(self, generator: torch.Generator, params: list) -> None:
        """Start every rank from rank 0's generator state and (unless DDP did) parameters."""
        if self.mode is None:
            return
        state = [generator.get_state()]
        torch.distributed.broadcast_object_list(state, src=self._source(), group=self.group)
        generator.set_state(state[0])
        if self.mode == "per-rank":
            self.split_(generator)
        if self.ddp is None and self.shards is None:  # DDP broadcast its parameters; FSDP holds one copy
            for p in params:
                torch.distributed.broadcast(p.data, src=self._source(), group=self.group)

    def split_(self, generator: torch.Generator) -> None:
        """Per-rank streams from a shared state: rank r reseeds with (a draw of it) + r."""
        seed = torch.randint(0, 2**62, (), generator=generator, device=generator.device)
        generator.manual_seed(int(seed) + self.rank)
