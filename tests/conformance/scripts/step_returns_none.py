"""training_step returning None on some batches: the optimizer step, global_step and a
step-interval scheduler still count them (Lightning: the closure's step is taken, backward skipped).

style: 2.x
ranks: no
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class SkipSome(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        if batch_idx % 4 == 1:  # the last micro-batch of every other window (Lightning: no 2-rank None)
            return None
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


if __name__ == "__main__":
    pl.seed_everything(3)
    model = SkipSome()
    trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=2, log_every_n_steps=1, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(64), batch_size=8))
    report(trainer, model)
