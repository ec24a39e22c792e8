"""A second fit of a finished Trainer trains nothing; raising max_epochs trains on from there.

A tutorial idiom: fit, look at the results, call fit again (nothing happens: max_epochs was
reached), then raise `trainer.fit_loop.max_epochs` and fit once more to train the epochs still
missing. The hooks each fit ran are recorded: the second fit runs on_fit_start and the sanity
check but no training hooks, as in Lightning.

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
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.calls = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.calls.append(f"train {self.current_epoch} {self.global_step}")
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.calls.append(f"val {self.current_epoch} {self.global_step}")
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def on_fit_start(self):
        self.calls.append("on_fit_start")

    def on_train_start(self):
        self.calls.append("on_train_start")

    def on_train_end(self):
        self.calls.append("on_train_end")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(5)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=2, num_sanity_val_steps=1, enable_progress_bar=False, log_every_n_steps=2,
                         enable_checkpointing=False)
    train, val = DataLoader(regression_data(32), batch_size=8), DataLoader(regression_data(16, seed=1), batch_size=8)
    fits = []
    for epochs in (None, None, 3):
        if epochs is not None:
            trainer.fit_loop.max_epochs = epochs
        model.calls = []
        trainer.fit(model, train, val)
        fits.append({"calls": model.calls, "global_step": trainer.global_step, "epoch": trainer.current_epoch})
    report(trainer, model, fits=fits)
