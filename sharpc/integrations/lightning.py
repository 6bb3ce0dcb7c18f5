"""PyTorch Lightning: a manual-optimization mixin that trains with any sharpc optimizer.

Why a mixin: a sharpc step evaluates the loss 1 + n times at different parameters, so it
needs a closure that redoes the forward and backward pass. Lightning's automatic
optimization accumulates and calls ``backward`` itself, which is one pass per batch, and
its ``accumulate_grad_batches`` is refused under manual optimization. The mixin owns the
training step instead: it collects ``sharpc_accumulate`` batches, builds a closure that runs
``sharpc_loss`` on each of them through ``self.manual_backward`` (so precision plugins and
strategies see every backward), and steps once. Everything else stays Lightning's:
checkpoints (the optimizer's ``state_dict`` carries sharpc's generator), precision, logging,
strategies.

    class Net(SharpcModule, lightning.pytorch.LightningModule):
        def sharpc_loss(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return FrobSAM(self.parameters(), model=self.sharpc_model, lr=0.1)
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["SharpcModule"]


class SharpcModule:
    """Mixin for a ``LightningModule`` (list it first among the bases) trained by a sharpc optimizer.

    Define ``sharpc_loss(batch, batch_idx)`` (the mean loss of one batch, no ``backward``) and
    return one sharpc optimizer from ``configure_optimizers``, built with
    ``model=self.sharpc_model``; an LR scheduler next to it (``interval`` "step" or "epoch")
    is stepped here, since Lightning leaves schedulers to the user under manual optimization.

    Attributes:
        sharpc_accumulate: loader batches per optimizer step. Every pass of the step (the
            clean one and each perturbed one) runs over all of them, each weighted 1/k; the
            last step of an epoch takes what is left.
    """

    automatic_optimization = False
    sharpc_accumulate: int = 1

    def sharpc_loss(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The mean loss of one batch; called 1 + n times per step per accumulated batch."""
        raise NotImplementedError("define sharpc_loss(batch, batch_idx) -> the batch's mean loss")

    @property
    def sharpc_model(self) -> torch.nn.Module:
        """What to pass as the optimizer's ``model=``: the DDP wrapper the strategy made, else self.

        Given the DDP wrapper, the optimizer runs every pass under ``no_sync()``, averages the
        combined gradient itself (one all-reduce per step) and draws the same perturbations on
        every rank; given the module, it protects BatchNorm statistics from perturbed passes.
        """
        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            return wrapped
        return self  # type: ignore[return-value]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """Collect the batch; on the last one of a group, take the sharpc step and log it."""
        pending = self.__dict__.setdefault("_sharpc_pending", [])
        pending.append((batch, batch_idx))
        if len(pending) < self.sharpc_accumulate and not self.trainer.is_last_batch:
            return None
        self.__dict__["_sharpc_pending"] = []
        loss = self.sharpc_step(pending)
        self.log("train_loss", loss, prog_bar=True)
        sharpness = getattr(self._sharpc_optimizer().optimizer, "sharpness", None)
        if sharpness is not None:
            self.log("sharpness", sharpness)
        return loss

    def sharpc_step(self, batches: list[tuple[Any, int]]) -> torch.Tensor:
        """One optimizer step over ``batches`` (pairs of batch and index); returns the clean loss."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError("SharpcModule: precision='16-mixed' steps through a GradScaler that calls the "
                             "optimizer without a closure; use precision='bf16-mixed'")
        k = len(batches)

        def closure() -> torch.Tensor:
            losses = []
            for batch, batch_idx in batches:
                loss = self.sharpc_loss(batch, batch_idx) / k
                if torch.is_grad_enabled():  # memory="lean" first asks for losses alone
                    self.manual_backward(loss)
                losses.append(loss.detach())
            return torch.stack(losses).sum()  # in the losses' own dtype: Delta divides rounding by rho**2

        loss = self._sharpc_optimizer().step(closure=closure)
        self._step_schedulers("step", self.trainer.global_step)
        return loss

    def on_train_epoch_end(self) -> None:
        """Step the schedulers whose interval is "epoch" (call super() when overriding)."""
        self._step_schedulers("epoch", self.current_epoch + 1)

    # ------------------------------------------------------------------ internals
    def _sharpc_optimizer(self) -> pl.core.optimizer.LightningOptimizer:
        optimizer = self.optimizers()
        if isinstance(optimizer, list):
            raise ValueError("SharpcModule steps one optimizer: return a single sharpc optimizer "
                             "from configure_optimizers")
        return optimizer

    def _step_schedulers(self, interval: str, count: int) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency:
                continue
            if config.reduce_on_plateau:
                config.scheduler.step(self.trainer.callback_metrics[config.monitor])
            else:
                config.scheduler.step()
