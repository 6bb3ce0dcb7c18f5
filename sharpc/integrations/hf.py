"""Hugging Face transformers: a ``Trainer`` whose training step drives sharpc's closure.

Why a subclass: ``Trainer`` calls ``optimizer.step()`` without a closure after one
forward/backward per micro-batch, while a sharpc step evaluates the loss at 1 + n points.
``SharpcTrainer.training_step`` therefore only collects the micro-batches of an accumulation
window; on the last one it runs the whole step, a closure that does forward and backward
(``compute_loss`` and ``accelerator.backward``, so autocast and loss scaling for accumulation
are the Trainer's own) over every collected micro-batch, 1 + n times. The Trainer's own
``optimizer.step()`` that follows is skipped (accelerate skips an optimizer step while
``sync_gradients`` is off), its LR scheduler steps as usual, and the ``grad_norm`` it logs is
that of the combined gradient the step used. Checkpoints hold sharpc's generator state in
``optimizer.pt``, so ``train(resume_from_checkpoint=...)`` continues the same run.

    opt = FrobSAM(model.parameters(), lr=1e-3, base_optimizer=torch.optim.AdamW)
    trainer = SharpcTrainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.train()
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import transformers

from ..runtime import PhiPsiSAM

__all__ = ["SharpcTrainer"]


class SharpcTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` for sharpc optimizers (pass one via ``optimizers=(opt, None)``).

    Limits: gradient clipping (``max_grad_norm``) has no place between sharpc's combined
    gradient and its base step, so it is turned off with a warning; float16 with a loss
    scaler (``fp16=True``) is refused (bf16 needs none); one process (sharpc's own data
    parallelism needs the optimizer built with ``model=<the DDP model>``, which the Trainer
    creates later).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            warnings.warn(f"SharpcTrainer cannot clip sharpc's combined gradient: max_grad_norm="
                          f"{self.args.max_grad_norm} is ignored (pass max_grad_norm=0 to silence this)", stacklevel=2)
            self.args.max_grad_norm = 0.0
        if self.args.fp16:
            raise ValueError("SharpcTrainer: fp16=True needs a loss scaler around the whole sharpc step; "
                             "use bf16=True, or a hand-written loop with the optimizer's grad_scaler=")
        self._sharpc_pending: list[tuple[dict, Any]] = []

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """Collect a micro-batch; on the last of the window take the sharpc step and return its loss.

        Earlier micro-batches return 0, so the Trainer's running loss sums to the mean loss of
        the window at the clean point, as for plain accumulation.
        """
        self._sharpc_pending.append((self._prepare_inputs(inputs), num_items_in_batch))
        if not self.accelerator.gradient_state.sync_gradients:
            return torch.zeros((), device=self.args.device)
        batches, self._sharpc_pending = self._sharpc_pending, []
        model.train()

        def closure() -> torch.Tensor:
            losses = []
            for micro, count in batches:
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, micro, num_items_in_batch=count)
                if self.args.n_gpu > 1:
                    loss = loss.mean()
                if not self._loss_scaled_for_accumulation(count):
                    loss = loss / self.current_gradient_accumulation_steps
                if torch.is_grad_enabled():  # memory="lean" first asks for losses alone
                    self.accelerator.backward(loss)
                losses.append(loss.detach())
            return torch.stack(losses).sum()  # in the losses' own dtype: Delta divides rounding by rho**2

        loss = self.sharpc_optimizer.step(closure)
        # The step is taken: the Trainer's optimizer.step() that follows must be a no-op.
        self.accelerator.gradient_state._set_sync_gradients(False)
        return loss

    @property
    def sharpc_optimizer(self) -> PhiPsiSAM:
        """The sharpc optimizer inside the wrappers accelerate puts around it."""
        optimizer = self.optimizer
        while not isinstance(optimizer, PhiPsiSAM):
            if not hasattr(optimizer, "optimizer"):
                raise TypeError(f"SharpcTrainer needs a sharpc optimizer, got {type(self.optimizer).__name__}: "
                                "pass optimizers=(FrobSAM(model.parameters(), ...), None)")
            optimizer = optimizer.optimizer
        return optimizer

    def _loss_scaled_for_accumulation(self, num_items_in_batch: Any) -> bool:
        """Whether compute_loss already divided by the window's size (as Trainer.training_step decides)."""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
