"""sharpc.integrations.lightning on a real lightning.pytorch.Trainer (CPU).

The reference for every run is the hand-written loop of docs/optimizer.md with the same seed
and batches: the mixin must add nothing to and drop nothing from the step.
"""

from __future__ import annotations

import datetime
import os
import warnings

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from _optim_helpers import flat_params, frobenius, tiny_mlp  # noqa: E402
from _ranks import run_ranks  # noqa: E402

from sharpc.integrations.lightning import SharpcModule  # noqa: E402
from sharpc.optim import optimizer_class  # noqa: E402

# clip=None: the class clips by default in one process but not across ranks (each would clip its own share),
# and the DDP test compares the two
OPTIONS = dict(rho=0.05, strength=0.5, n_samples=2, lr=0.1, momentum=0.9, seed=3, clip=None)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's hints about workers and loggers


class Net(SharpcModule, pl.LightningModule):
    """tiny_mlp trained with the Frobenius optimizer; counts its forward calls."""

    def __init__(self, accumulate: int = 1, scheduler: dict | None = None, options: dict | None = None,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.net, _, _ = tiny_mlp(dtype=dtype)
        self.sharpc_accumulate = accumulate
        self.scheduler = scheduler
        self.options = dict(OPTIONS, **(options or {}))
        self.forwards = 0
        self.hooks = 0
        self.output_dtypes: set = set()

    def forward(self, x):
        self.forwards += 1
        out = self.net(x)
        self.output_dtypes.add(out.dtype)
        return out

    def sharpc_loss(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def on_before_optimizer_step(self, optimizer):
        self.hooks += 1

    def configure_optimizers(self):
        opt = optimizer_class(frobenius())(self.parameters(), model=self.sharpc_model, **self.options)
        if self.scheduler is None:
            return opt
        make, interval = self.scheduler["make"], self.scheduler["interval"]
        return {"optimizer": opt, "lr_scheduler": {"scheduler": make(opt), "interval": interval}}


def loader(batch_size: int, n: int = 32, dtype: torch.dtype = torch.float64):
    """float64 by default: the loss differences divide rounding by rho**2, and equality is the point."""
    _, x, y = tiny_mlp(dtype=dtype)
    x, y = x[:n], y[:n]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def passes_per_step(net) -> int:
    """1 + n closure calls, 1 + 2 n with antithetic differences (the measure's recommended default)."""
    group = net.optimizers().optimizer.param_groups[0]
    return 1 + group["n_samples"] * (2 if group["difference"] == "antithetic" else 1)


def trainer(**kwargs) -> pl.Trainer:
    settings = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**settings, **kwargs})


def reference(batch_size: int, epochs: int, **options) -> torch.Tensor:
    """The hand-written loop of docs/optimizer.md: one step per batch of the same loader."""
    model, _, _ = tiny_mlp(dtype=torch.float64)
    opt = optimizer_class(frobenius())(model.parameters(), model=model, **{**OPTIONS, **options})
    for _ in range(epochs):
        for x, y in loader(batch_size):
            def closure():
                loss = torch.nn.functional.cross_entropy(model(x), y)
                if torch.is_grad_enabled():
                    loss.backward()
                return loss
            opt.step(closure)
    return flat_params(model)


def test_fit_takes_the_hand_written_steps_with_n_plus_one_passes():
    net = Net()
    trainer(max_epochs=2).fit(net, loader(8))
    torch.testing.assert_close(flat_params(net.net), reference(8, 2), rtol=0, atol=1e-12)
    assert net.trainer.global_step == 8
    assert net.forwards == 8 * passes_per_step(net)  # one clean pass and the perturbed ones, per step
    assert net.hooks == net.forwards  # the precision plugin runs the hook after every closure call


def test_lean_memory_mode_takes_the_hand_written_lean_steps():
    """memory="lean" first calls the closure under no_grad for losses alone: no manual_backward there."""
    net = Net(options=dict(memory="lean"))
    trainer(max_epochs=1).fit(net, loader(8))
    torch.testing.assert_close(flat_params(net.net), reference(8, 1, memory="lean"), rtol=0, atol=1e-12)


def test_accumulating_two_batches_is_the_step_on_their_union():
    net = Net(accumulate=2)
    trainer(max_epochs=2).fit(net, loader(8))
    assert net.trainer.global_step == 4
    torch.testing.assert_close(flat_params(net.net), reference(16, 2), rtol=0, atol=1e-12)


def test_an_uneven_epoch_steps_on_what_is_left():
    net = Net(accumulate=3)
    trainer(max_epochs=1).fit(net, loader(8))  # 4 batches: a step on 3, then one on the last
    assert net.trainer.global_step == 2


def test_bf16_mixed_precision_computes_in_bfloat16_and_keeps_float32_losses():
    net = Net(dtype=torch.float32)
    fit = trainer(max_epochs=3, precision="bf16-mixed")
    fit.fit(net, loader(8, dtype=torch.float32))
    opt = net.optimizers().optimizer
    assert torch.bfloat16 in net.output_dtypes  # autocast reached the closure's forward passes
    assert opt.sharpness.dtype == torch.float32 and torch.isfinite(opt.sharpness)
    assert fit.callback_metrics["train_loss"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_float16_mixed_precision_is_refused_with_the_way_out():
    """On the CPU, precision="16-mixed" silently becomes bf16: the float16 plugin is built by hand."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    float16 = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="bf16-mixed"):
        trainer(max_epochs=1, plugins=[float16]).fit(Net(), loader(8))


def test_a_checkpoint_carries_sharpc_state_and_resumes_the_same_run(tmp_path):
    """A fresh optimizer (seed 3) would redraw epoch 1's perturbations: only the generator state
    inside the Lightning checkpoint makes the resumed epoch draw epoch 2's."""
    straight = Net()
    trainer(max_epochs=2).fit(straight, loader(8))

    first = Net()
    fit = trainer(max_epochs=1)
    fit.fit(first, loader(8))
    path = tmp_path / "epoch1.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert "generator_state" in saved["optimizer_states"][0]["phi_psi_sam"]

    resumed = Net()
    trainer(max_epochs=2).fit(resumed, loader(8), ckpt_path=path)
    assert resumed.trainer.global_step == 8
    torch.testing.assert_close(flat_params(resumed.net), flat_params(straight.net), rtol=0, atol=1e-12)


@pytest.mark.parametrize("interval, expected", [("step", 0.1 * 0.5**8), ("epoch", 0.1 * 0.5**2)])
def test_lr_schedulers_step_at_their_interval(interval, expected):
    scheduler = dict(make=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), interval=interval)
    net = Net(scheduler=scheduler)
    trainer(max_epochs=2).fit(net, loader(8))
    assert net.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(expected)


class Anneal(torch.optim.lr_scheduler.LRScheduler):
    """A user's schedule for a sharpc hyperparameter: ``group[key] = f(step)``; lr is left alone.

    LRScheduler's constructor takes step 0, so the first optimizer step already sees f(0).
    """

    def __init__(self, optimizer, key, f):
        self.key, self.f = key, f
        super().__init__(optimizer)

    def step(self, epoch=None):
        self.last_epoch += 1
        for group in self.optimizer.param_groups:
            group[self.key] = self.f(self.last_epoch)


def test_a_scheduler_anneals_rho_through_the_param_groups():
    """Perturbed passes sit at distance rho |v| from x: watch it halve with group["rho"]."""
    steps: list[list[float]] = []

    class Watched(Net):
        def sharpc_loss(self, batch, batch_idx):
            steps[-1].append(flat_params(self.net).sub(self._clean).norm().item())
            return super().sharpc_loss(batch, batch_idx)

        def sharpc_step(self, batches):
            self._clean = flat_params(self.net).clone()
            steps.append([])
            return super().sharpc_step(batches)

    halve = dict(make=lambda opt: Anneal(opt, "rho", lambda k: 0.1 * 0.5**k), interval="step")
    net = Watched(scheduler=halve, options=dict(n_samples=8, lr=0.0))
    trainer(max_steps=4).fit(net, loader(8))
    mean_distance = [sum(passes[1:]) / len(passes[1:]) for passes in steps]  # passes[0] is the clean one
    assert steps[0][0] == 0.0
    for before, after in zip(mean_distance, mean_distance[1:]):
        assert after == pytest.approx(before / 2, rel=0.25)


def test_a_scheduler_that_sets_strength_to_zero_leaves_plain_momentum_sgd():
    """strength 0 from group["strength"]: the combined gradient is g0, the step plain SGD's."""
    net = Net(scheduler=dict(make=lambda opt: Anneal(opt, "strength", lambda k: 0.0), interval="step"))
    trainer(max_epochs=1).fit(net, loader(8))
    model, _, _ = tiny_mlp(dtype=torch.float64)
    sgd = torch.optim.SGD(model.parameters(), lr=OPTIONS["lr"], momentum=OPTIONS["momentum"])
    for x, y in loader(8):
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        sgd.step()
    torch.testing.assert_close(flat_params(net.net), flat_params(model), rtol=0, atol=1e-12)
    assert not torch.equal(flat_params(net.net), reference(8, 1))  # strength 0.5 would have moved elsewhere


# ----------------------------------------------------------------------------- DDP on two gloo processes
WORLD, TIMEOUT_S = 2, 180


def rank_loader(rank: int) -> torch.utils.data.DataLoader:
    """Rank r's half of every global batch of 16 rows: rows [16 t + 8 r, 16 t + 8 r + 8)."""
    dataset = loader(8).dataset
    rows = [16 * t + 8 * rank + i for t in range(len(dataset) // 16) for i in range(8)]
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, rows), batch_size=8, shuffle=False)


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")  # as torchrun sets them: Lightning launches nothing
    sizes: list[int] = []
    original = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    buckets: list[int] = []

    def ddp_hook(state, bucket):  # DDP's own gradient all-reduce: must never run
        buckets.append(bucket.buffer().numel())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    strategy = DDPStrategy(process_group_backend="gloo", ddp_comm_hook=ddp_hook,
                           timeout=datetime.timedelta(seconds=60))
    net = Net()
    fit = trainer(max_epochs=2, devices=WORLD, strategy=strategy, use_distributed_sampler=False)
    fit.fit(net, rank_loader(rank))
    numel = sum(p.numel() for p in net.parameters())
    torch.save(dict(params=flat_params(net.net), steps=fit.global_step, buckets=buckets,
                    gradient_all_reduces=sum(s == numel for s in sizes), mode=net.optimizers().optimizer.distributed),
               os.path.join(out, f"rank{rank}.pt"))
    dist.all_reduce = original


@pytest.mark.slow
def test_ddp_on_two_gloo_processes_is_one_optimizer_on_the_global_batch(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path, WORLD, TIMEOUT_S)
    for rank in ranks:
        assert rank["mode"] == "sync" and rank["steps"] == 4
        assert rank["buckets"] == []  # DDP never all-reduced a backward of its own
        assert rank["gradient_all_reduces"] == 4  # one per step, the optimizer's
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    torch.testing.assert_close(ranks[0]["params"], reference(16, 2), rtol=0, atol=1e-12)
