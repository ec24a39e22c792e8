"""StochasticWeightAveraging from epoch 3 of 5, replacing a StepLR schedule.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import StochasticWeightAveraging
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


class RecordLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


if __name__ == "__main__":
    pl.seed_everything(5)
    model = Regressor()
    record = RecordLR()
    trainer = pl.Trainer(max_epochs=5, log_every_n_steps=1, enable_progress_bar=False,
                         callbacks=[StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3, annealing_epochs=2),
                                    record])
    trainer.fit(model, DataLoader(regression_data(40), batch_size=8))
    report(trainer, model, lrs=record.lrs)
