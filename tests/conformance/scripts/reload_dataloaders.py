"""At which epochs train_dataloader() and val_dataloader() are called, with
reload_dataloaders_every_n_epochs and check_val_every_n_epoch together.

Compared as one sequence of calls (hook, epoch, whether the sanity check runs): val_dataloader()
inside the sanity check, train_dataloader() after it.

style: 2.x
ranks: no
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Counting(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.calls = []

    def _note(self, which):
        self.calls.append([which, self.trainer.current_epoch, self.trainer.sanity_checking])

    def train_dataloader(self):
        self._note("train")
        return DataLoader(regression_data(16), batch_size=8)

    def val_dataloader(self):
        self._note("val")
        return DataLoader(regression_data(8, seed=1), batch_size=8)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


CASES = [  # (check_val_every_n_epoch, reload_dataloaders_every_n_epochs, num_sanity_val_steps)
    (2, 1, 2), (1, 2, 2), (2, 3, 2), (3, 2, 0), (1, 0, 2), (2, 0, 0)]

if __name__ == "__main__":
    seen = {}
    for check, reload, sanity in CASES:
        pl.seed_everything(6)
        model = Counting()
        trainer = pl.Trainer(max_epochs=6, check_val_every_n_epoch=check, reload_dataloaders_every_n_epochs=reload,
                             num_sanity_val_steps=sanity, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model)
        seen[f"check={check} reload={reload} sanity={sanity}"] = model.calls
    report(trainer, model, calls=seen)
