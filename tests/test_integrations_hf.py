"""sharpc.integrations.hf: SharpcTrainer on a tiny randomly initialised GPT-2 (built from a
config, nothing downloaded), on the CPU."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _optim_helpers import flat_params, frobenius  # noqa: E402

from sharpc.integrations.hf import SharpcTrainer  # noqa: E402
from sharpc.optim import optimizer_class  # noqa: E402

OPTIONS = dict(rho=0.05, strength=0.5, n_samples=2, lr=0.05, seed=3)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def tiny_gpt2():
    """A 1-layer GPT-2 with dropout off; counts its forward calls and the dtypes its LM head computes in."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    model.calls, model.dtypes = 0, set()

    def count(module, args, output):
        module.calls += 1

    model.register_forward_hook(count)
    model.lm_head.register_forward_hook(lambda module, args, output: model.dtypes.add(output.dtype))
    return model


class Tokens(torch.utils.data.Dataset):
    """16 random sequences of 8 tokens, labels = inputs (causal LM)."""

    def __init__(self):
        self.ids = torch.randint(0, 32, (16, 8), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(tmp_path, *, batch=4, accumulate=1, max_steps=4, resume=None, **arguments):
    model = tiny_gpt2()
    opt = optimizer_class(frobenius())(model.parameters(), **OPTIONS)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate,
        max_steps=max_steps, use_cpu=True, report_to=[], logging_steps=1, seed=0, max_grad_norm=0.0,
        lr_scheduler_type="constant", disable_tqdm=True, **{"save_strategy": "no", **arguments})
    trainer = SharpcTrainer(model=model, args=args, train_dataset=Tokens(), optimizers=(opt, None))
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model, opt


def test_every_step_runs_n_plus_one_passes_over_the_window(tmp_path):
    trainer, model, opt = train(tmp_path, batch=2, accumulate=2)
    assert trainer.state.global_step == 4
    group = opt.param_groups[0]  # 1 + n passes, 1 + 2 n with antithetic differences (the measure's default)
    passes = 1 + group["n_samples"] * (2 if group["difference"] == "antithetic" else 1)
    assert model.calls == 4 * passes * 2  # steps * passes * micro-batches
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
    assert torch.isfinite(opt.sharpness)


def test_accumulating_two_micro_batches_is_the_step_on_their_union(tmp_path):
    _, accumulated, _ = train(tmp_path / "a", batch=2, accumulate=2)
    _, whole, _ = train(tmp_path / "b", batch=4, accumulate=1)
    torch.testing.assert_close(flat_params(accumulated), flat_params(whole), rtol=0, atol=1e-5)
    assert not torch.equal(flat_params(whole), flat_params(tiny_gpt2()))  # it trained


def test_bf16_autocast_reaches_the_closure_and_sharpness_stays_float32(tmp_path):
    trainer, model, opt = train(tmp_path, bf16=True)
    assert torch.bfloat16 in model.dtypes
    assert opt.sharpness.dtype == torch.float32 and torch.isfinite(opt.sharpness)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_save_and_resume_continue_the_same_run(tmp_path):
    """The resumed run's fresh optimizer (seed 3) would redraw steps 1-2's perturbations: only
    the generator state in optimizer.pt makes it draw those of steps 3-4."""
    _, straight, _ = train(tmp_path / "straight")
    train(tmp_path / "saved", max_steps=4, save_strategy="steps", save_steps=2)
    saved = torch.load(tmp_path / "saved" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert "generator_state" in saved["phi_psi_sam"]
    _, resumed, _ = train(tmp_path / "saved", resume=str(tmp_path / "saved" / "checkpoint-2"))
    torch.testing.assert_close(flat_params(resumed), flat_params(straight), rtol=0, atol=1e-5)


def test_a_non_sharpc_optimizer_and_fp16_are_refused(tmp_path):
    model = tiny_gpt2()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[],
                                          max_grad_norm=0.0)
    trainer = SharpcTrainer(model=model, args=args, train_dataset=Tokens(),
                            optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    with pytest.raises(TypeError, match="needs a sharpc optimizer"):
        trainer.train()
    with pytest.raises(ValueError, match="bf16=True"):
        SharpcTrainer(model=model, args=transformers.TrainingArguments(
            output_dir=str(tmp_path), use_cpu=True, report_to=[], fp16=True, max_grad_norm=0.0), train_dataset=Tokens())
    with pytest.warns(UserWarning, match="max_grad_norm"):
        SharpcTrainer(model=model, args=transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                       report_to=[]), train_dataset=Tokens())
