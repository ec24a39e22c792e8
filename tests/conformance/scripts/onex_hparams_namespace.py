"""1.x: hyperparameters from an argparse Namespace, save_hyperparameters(hparams), load_from_checkpoint.

style: 1.x
"""
from argparse import ArgumentParser

import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self, hparams):
        super().__init__()
        self.save_hyperparameters(hparams)
        self.net = nn.Sequential(nn.Linear(8, self.hparams.hidden), nn.ReLU(), nn.Linear(self.hparams.hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)


if __name__ == "__main__":
    parser = ArgumentParser()
    parser.add_argument("--hidden", type=int, default=6)
    parser.add_argument("--learning_rate", type=float, default=0.05)
    args = parser.parse_args(["--hidden", "5"])
    pl.seed_everything(35)
    model = Regressor(args)
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8))
    trainer.strategy.barrier()  # on several ranks: rank 0 has written the file
    loaded = Regressor.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    report(trainer, model, hparams=dict(loaded.hparams), hidden=loaded.net[0].out_features)
