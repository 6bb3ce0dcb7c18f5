"""Hugging Face Trainer: a tiny GPT-2 from a config (nothing downloaded) trained with FrobSAM."""

import torch
import transformers

from sharpc.integrations.hf import SharpcTrainer
from sharpc.optim import FrobSAM


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; labels = inputs (causal language modelling)."""

    def __init__(self, n=64, length=16, vocab=64):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


if __name__ == "__main__":
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    opt = FrobSAM(model.parameters(), base_optimizer=torch.optim.AdamW, lr=3e-3, rho=0.01, seed=0)
    args = transformers.TrainingArguments(
        output_dir="out/hf_recipe", per_device_train_batch_size=8, gradient_accumulation_steps=2,
        max_steps=8, bf16=True, use_cpu=True, max_grad_norm=0.0,  # sharpc's step cannot be clipped
        save_steps=4, logging_steps=4, report_to=[], disable_tqdm=True)
    trainer = SharpcTrainer(model=model, args=args, train_dataset=Tokens(), optimizers=(opt, None))
    trainer.train()  # trainer.train(resume_from_checkpoint=True) continues, generator state included
    print(f"steps {trainer.state.global_step}, last loss {trainer.state.log_history[-2]['loss']:.3f}, "
          f"sharpness {trainer.sharpc_optimizer.sharpness.item():.3g}")
