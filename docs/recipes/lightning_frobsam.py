"""Lightning: train a LightningModule with FrobSAM (accumulation, a scheduler, bf16, a checkpoint)."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from sharpc.integrations.lightning import SharpcModule
from sharpc.optim import FrobSAM


class Classifier(SharpcModule, pl.LightningModule):  # SharpcModule first: it owns training_step
    sharpc_accumulate = 2  # loader batches per step; every pass of the step sees both

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)

    def sharpc_loss(self, batch, batch_idx):  # the batch's mean loss; no backward here
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = FrobSAM(self.parameters(), model=self.sharpc_model, lr=0.05, momentum=0.9, seed=0)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(256, 20)
    y = (x[:, :4].argmax(dim=1) + (x[:, 4] > 1).long()) % 4
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=5, precision="bf16-mixed", logger=False,
                         enable_progress_bar=False, default_root_dir="out/lightning_recipe")
    model = Classifier()
    trainer.fit(model, data)  # also: strategy="ddp" (gloo on CPU); ckpt_path=... resumes sharpc's generator
    trainer.save_checkpoint("out/lightning_recipe/last.ckpt")
    print(f"steps {trainer.global_step}, loss {trainer.callback_metrics['train_loss']:.3f}, "
          f"sharpness {trainer.callback_metrics['sharpness']:.3g}")
