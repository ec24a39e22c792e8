"""EarlyStopping on a validation metric that stops improving.

style: 2.x
known ranks: distengine averages epoch-level values over the ranks whether or not sync_dist is set,
    so EarlyStopping watches the val_loss of the whole validation set; Lightning without sync_dist
    watches each rank's own half and stops when one rank's value stalls
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        # a large step makes the validation loss bounce, so patience runs out
        return torch.optim.SGD(self.parameters(), lr=0.6)


if __name__ == "__main__":
    pl.seed_everything(5)
    model = Regressor()
    stop = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.001)
    trainer = pl.Trainer(max_epochs=30, callbacks=[stop], enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=16),
                DataLoader(regression_data(16, seed=1), batch_size=16))
    report(trainer, model, stopped_epoch=stop.stopped_epoch, wait_count=stop.wait_count,
           best_score=float(stop.best_score))
