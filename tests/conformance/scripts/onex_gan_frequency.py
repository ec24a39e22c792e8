"""1.x: optimizers in the dict form with "frequency", alternating by frequency.

style: 1.x
known logged: 1.9.5 writes each optimizer's last loss again at the batches where that optimizer did
    not run (a stale repeat of the value it logged earlier); distengine writes a value only at the batch
    that logged it
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Alternating(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(8, 4)
        self.head = nn.Linear(4, 1)
        self.calls = []

    def training_step(self, batch, batch_idx, optimizer_idx):
        x, y = batch
        self.calls.append((batch_idx, optimizer_idx))
        loss = nn.functional.mse_loss(self.head(torch.tanh(self.encoder(x))), y)
        self.log(f"loss_{optimizer_idx}", loss)
        return loss

    def configure_optimizers(self):
        enc = torch.optim.SGD(self.encoder.parameters(), lr=0.1)
        head = torch.optim.SGD(self.head.parameters(), lr=0.05)
        return [{"optimizer": enc, "frequency": 2}, {"optimizer": head, "frequency": 1}]


if __name__ == "__main__":
    pl.seed_everything(32)
    model = Alternating()
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=1, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(56), batch_size=8))
    report(trainer, model, calls=model.calls, lrs=[o.param_groups[0]["lr"] for o in trainer.optimizers])
