"""Overridden optimisation hooks: a warm-up in optimizer_step, optimizer_zero_grad,
configure_gradient_clipping and lr_scheduler_step, with gradient accumulation.

The transformer-tutorial pattern: the learning rate is ramped inside optimizer_step before
`optimizer.step(closure=optimizer_closure)`. Each hook records its arguments; the learning rate
each step used is logged.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Warmup(pl.LightningModule):
    def __init__(self, lr=0.05, warmup=5):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.calls = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        scale = min(1.0, (self.trainer.global_step + 1) / self.hparams.warmup)
        for group in optimizer.param_groups:
            group["lr"] = scale * self.hparams.lr
        self.calls.append(f"step {epoch} {batch_idx} {self.trainer.global_step}")
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        self.calls.append(f"zero_grad {epoch}")
        optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.calls.append(f"clip {gradient_clip_val} {gradient_clip_algorithm}")
        self.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="norm")

    def lr_scheduler_step(self, scheduler, metric):
        self.calls.append(f"scheduler {metric}")
        scheduler.step()

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}


if __name__ == "__main__":
    pl.seed_everything(3)
    model = Warmup()
    trainer = pl.Trainer(max_epochs=3, accumulate_grad_batches=2, enable_progress_bar=False, log_every_n_steps=1,
                         enable_checkpointing=False)
    trainer.fit(model, DataLoader(regression_data(56), batch_size=8))
    report(trainer, model, calls=model.calls, lr=trainer.optimizers[0].param_groups[0]["lr"])
