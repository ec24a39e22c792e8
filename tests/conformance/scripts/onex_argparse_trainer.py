"""1.x: Trainer.add_argparse_args and Trainer.from_argparse_args.

style: 1.x
"""
from argparse import ArgumentParser

import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    parser = ArgumentParser()
    parser = pl.Trainer.add_argparse_args(parser)
    args = parser.parse_args(["--max_epochs", "2", "--log_every_n_steps", "1", "--limit_train_batches", "3"])
    pl.seed_everything(36)
    model = Regressor()
    trainer = pl.Trainer.from_argparse_args(args, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(40), batch_size=8))
    report(trainer, model, max_epochs=args.max_epochs)
