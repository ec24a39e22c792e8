"""An IterableDataset stream over several epochs, sharding itself by rank.

style: 2.x
"""
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader, IterableDataset


class Stream(IterableDataset):
    def __init__(self, n):
        self.data = regression_data(n)

    def __iter__(self):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        for i in range(rank, len(self.data), world):
            yield self.data[i]


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.epoch_ends = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def on_train_epoch_end(self):
        self.epoch_ends += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(10)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=3, log_every_n_steps=2, enable_progress_bar=False)
    trainer.fit(model, DataLoader(Stream(32), batch_size=8))
    report(trainer, model, epoch_ends=model.epoch_ends)
