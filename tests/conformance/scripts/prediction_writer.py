"""A BasePredictionWriter writing per batch and per epoch (indices next to predictions).

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _ = batch
        return self.layer(x).squeeze(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Writer(BasePredictionWriter):
    def __init__(self):
        super().__init__(write_interval="batch_and_epoch")
        self.batches = []
        self.epoch = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append([list(batch_indices), prediction.tolist(), batch_idx, dataloader_idx])

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        self.epoch = [batch_indices, [p.tolist() for p in predictions]]


if __name__ == "__main__":
    pl.seed_everything(11)
    model = Regressor()
    writer = Writer()
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, callbacks=[writer])
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8))
    trainer.predict(model, DataLoader(regression_data(20, seed=2), batch_size=6), return_predictions=False)
    report(trainer, model, batches=writer.batches, epoch=writer.epoch,
           covered=sorted(i for b in writer.batches for i in b[0]))
