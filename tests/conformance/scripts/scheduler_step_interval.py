"""A per-step LR scheduler in the dict form, with LearningRateMonitor.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import LearningRateMonitor
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


if __name__ == "__main__":
    pl.seed_everything(8)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=2, callbacks=[LearningRateMonitor("step")], log_every_n_steps=1,
                         enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(40), batch_size=8))
    report(trainer, model, lr=trainer.optimizers[0].param_groups[0]["lr"])
