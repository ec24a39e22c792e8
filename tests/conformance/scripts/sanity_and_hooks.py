"""Module hooks: setup, on_train_start, on_validation_epoch_end with sanity checking, on_fit_end.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.seen = []
        self.val_outputs = []

    def setup(self, stage):
        self.seen.append(f"setup:{stage == 'fit'}")  # Lightning passes an enum equal to "fit"

    def on_train_start(self):
        self.seen.append(f"train_start:{self.global_step}")

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.val_outputs.append(loss)
        return loss

    def on_validation_epoch_end(self):
        mean = torch.stack(self.val_outputs).mean()
        self.log("val_mean", mean)
        self.seen.append(f"val_end:{self.trainer.sanity_checking}:{len(self.val_outputs)}")
        self.val_outputs.clear()

    def on_fit_end(self):
        self.seen.append(f"fit_end:{self.current_epoch}")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(23)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=2, num_sanity_val_steps=1, enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(model, DataLoader(regression_data(24), batch_size=8),
                DataLoader(regression_data(24, seed=1), batch_size=8))
    report(trainer, model, seen=model.seen)
