"""A dict of two training loaders of different lengths (max_size_cycle), logged per step.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TwoSources(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        xa, ya = batch["a"]
        xb, yb, idx = batch["b"]
        self.seen.append(idx.tolist())
        loss = nn.functional.mse_loss(self.layer(xa), ya) + 0.5 * nn.functional.mse_loss(self.layer(xb), yb)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(31)
    model = TwoSources()
    b = regression_data(24, seed=1)
    b = TensorDataset(*b.tensors, torch.arange(24))
    loaders = {"a": DataLoader(regression_data(40), batch_size=8), "b": DataLoader(b, batch_size=8)}
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=2, enable_progress_bar=False)
    trainer.fit(model, loaders)
    report(trainer, model, num_training_batches=trainer.num_training_batches, seen=model.seen,
           train_dataloader=sorted(trainer.train_dataloader))
