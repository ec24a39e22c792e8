"""EMAWeightAveraging: validation on the averaged weights, the average in the module at the end.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import EMAWeightAveraging
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

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordVal(pl.Callback):
    def __init__(self):
        self.vals = []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.vals.append(float(pl_module.net[0].weight.sum()))


if __name__ == "__main__":
    pl.seed_everything(7)
    model = Regressor()
    record = RecordVal()
    ema = EMAWeightAveraging(decay=0.9, update_every_n_steps=2, update_starting_at_step=1)
    trainer = pl.Trainer(max_epochs=3, log_every_n_steps=1, enable_progress_bar=False,
                         callbacks=[ema, record])
    trainer.fit(model, DataLoader(regression_data(40), batch_size=8),
                DataLoader(regression_data(16, seed=3), batch_size=8))
    report(trainer, model, val_weight_sums=record.vals, latest=ema.state_dict())
