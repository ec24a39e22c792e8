"""ModelPruning: random global pruning of a number of weights and biases, the lottery ticket resampled.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import ModelPruning
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(13)
    model = Regressor()
    pruning = ModelPruning("random_unstructured", amount=10, resample_parameters=True)
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, enable_checkpointing=False, callbacks=[pruning])
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8))
    report(trainer, model, zeros={k: int((v == 0).sum()) for k, v in model.state_dict().items()})
