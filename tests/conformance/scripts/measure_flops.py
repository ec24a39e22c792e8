"""measure_flops on a meta-device copy of the model (forward, and forward+backward), then a short fit.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.utilities import measure_flops
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(2)
    with torch.device("meta"):
        meta_model = Regressor()
        x = torch.randn(8, 8)
    forward = measure_flops(meta_model, lambda: meta_model(x))
    train = measure_flops(meta_model, lambda: meta_model(x), lambda y: y.sum())
    model = Regressor()
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(model, DataLoader(regression_data(16), batch_size=8))
    report(trainer, model, forward_flops=forward, train_flops=train)
