"""1.x-style optimisation hook overrides: optimizer_step with optimizer_idx, on_tpu,
using_native_amp and using_lbfgs; optimizer_zero_grad and lr_scheduler_step with optimizer_idx.

A warm-up over the first steps as 1.x tutorials wrote it, plus a plateau scheduler stepped
through lr_scheduler_step with the monitored value.

style: 1.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Warmup(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.calls = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure, on_tpu=False,
                       using_native_amp=False, using_lbfgs=False):
        if self.trainer.global_step < 4:
            for group in optimizer.param_groups:
                group["lr"] = 0.1 * (self.trainer.global_step + 1) / 4
        self.calls.append(f"step {epoch} {batch_idx} {optimizer_idx} {using_native_amp} {using_lbfgs}")
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer, optimizer_idx):
        self.calls.append(f"zero_grad {epoch} {batch_idx} {optimizer_idx}")
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler, optimizer_idx, metric):
        self.calls.append(f"scheduler {optimizer_idx} {metric is not None}")
        scheduler.step(metric)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "train_loss_epoch"}}


if __name__ == "__main__":
    pl.seed_everything(8)
    model = Warmup()
    trainer = pl.Trainer(max_epochs=3, enable_progress_bar=False, log_every_n_steps=2, enable_checkpointing=False)
    trainer.fit(model, DataLoader(regression_data(40), batch_size=8))
    report(trainer, model, calls=model.calls, lr=trainer.optimizers[0].param_groups[0]["lr"])
