"""fit with a monitored checkpoint, then test(ckpt_path="best").

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import classification_data, report
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())
        self.log("test_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3)


if __name__ == "__main__":
    pl.seed_everything(12)
    model = Classifier()
    trainer = pl.Trainer(max_epochs=4, callbacks=[ModelCheckpoint(monitor="val_acc", mode="max")],
                         enable_progress_bar=False, log_every_n_steps=2)
    trainer.fit(model, DataLoader(classification_data(48), batch_size=8),
                DataLoader(classification_data(24, seed=1), batch_size=8))
    results = trainer.test(ckpt_path="best", dataloaders=DataLoader(classification_data(30, seed=2), batch_size=8),
                           verbose=False)
    report(trainer, model, test=results)
