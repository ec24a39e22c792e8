"""trainer.predict with predict_step, after a short fit.

style: 2.x
"""
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
        return nn.functional.mse_loss(self.layer(x), y)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _ = batch
        return self.layer(x).squeeze(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(11)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8))
    preds = trainer.predict(model, DataLoader(regression_data(20, seed=2), batch_size=6))
    report(trainer, model, batches=len(preds), predictions=torch.cat(preds).tolist())
