"""Adapters that let training frameworks drive sharpc's closure-based ``step(closure)``.

Torch side only: ``sharpc.compile`` and the CLI never import this package, and importing it
imports no framework. Each submodule imports its framework when it is itself imported:

* :mod:`sharpc.integrations.lightning`: ``SharpcModule``, a manual-optimization mixin for a
  ``lightning.pytorch.LightningModule`` (extra ``[lightning]``);
* :mod:`sharpc.integrations.hf`: ``SharpcTrainer``, a ``transformers.Trainer`` whose training
  step drives the closure (extra ``[hf]``).

``torch.compile`` and FSDP2 need no adapter of their own; docs/integrations.md says what holds.
"""
