"""train_dataloader() returns a CombinedLoader of a list of loaders in min_size mode, with limit_train_batches.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader


class TwoSources(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def train_dataloader(self):
        return CombinedLoader([DataLoader(regression_data(48), batch_size=8),
                               DataLoader(regression_data(40, seed=1), batch_size=4)], "min_size")

    def training_step(self, batch, batch_idx):
        (xa, ya), (xb, yb) = batch
        loss = nn.functional.mse_loss(self.layer(xa), ya) + nn.functional.mse_loss(self.layer(xb), yb)
        self.log("loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(32)
    model = TwoSources()
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=0.5, log_every_n_steps=1, enable_progress_bar=False)
    trainer.fit(model)
    report(trainer, model, num_training_batches=trainer.num_training_batches)
