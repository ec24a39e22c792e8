"""A user Callback that records the order of the hooks it receives.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer, pl_module):
        self.calls.append("fit_start")

    def on_train_epoch_start(self, trainer, pl_module):
        self.calls.append(f"train_epoch_start:{trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls.append(f"batch_end:{batch_idx}:{trainer.global_step}")

    def on_validation_epoch_end(self, trainer, pl_module):
        self.calls.append(f"val_epoch_end:{trainer.current_epoch}:{trainer.sanity_checking}")

    def on_train_epoch_end(self, trainer, pl_module):
        self.calls.append(f"train_epoch_end:{trainer.current_epoch}")

    def on_fit_end(self, trainer, pl_module):
        self.calls.append("fit_end")


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
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(19)
    model, recorder = Regressor(), Recorder()
    trainer = pl.Trainer(max_epochs=2, callbacks=[recorder], enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(model, DataLoader(regression_data(24), batch_size=8),
                DataLoader(regression_data(8, seed=1), batch_size=8))
    report(trainer, model, calls=recorder.calls)
