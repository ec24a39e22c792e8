"""SpikeDetection stops the fit at a batch whose targets jump, and writes the batches to skip.

style: 2.x
known ranks: on 2 ranks both stop at a spike with the same message and skip file, but
    pytorch-lightning 2.6.6 under torchrun detects it one batch later (batch 8, global_step 9)
    than distengine (batch 7, global_step 8); why its ranks meet the corrupted samples later
    was not investigated
"""
import json
import os

import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import SpikeDetection
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(3)
    data = regression_data(96)
    data.tensors[1][60:68] *= 50.0  # a corrupted stretch of targets
    model = Regressor()
    path = os.path.join(os.environ.get("CONFORMANCE_OUT", "."), "skip.json")
    spike = SpikeDetection(window=4, warmup=2, rtol=2.0, exclude_batches_path=path)
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=1, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[spike])
    error = None
    try:
        trainer.fit(model, DataLoader(data, batch_size=4))
    except RuntimeError as e:
        error = str(e)
    written = json.load(open(path)) if os.path.exists(path) else None
    report(trainer, model, error=error, bad_batches=spike.bad_batches, written=written)
