"""A LightningDataModule with prepare_data/setup, then fit, validate and test.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import classification_data, report
from torch import nn
from torch.utils.data import DataLoader, random_split


class Data(pl.LightningDataModule):
    def __init__(self, batch_size=16):
        super().__init__()
        self.batch_size = batch_size
        self.setup_calls = []

    def prepare_data(self):
        pass

    def setup(self, stage):
        self.setup_calls.append(stage)
        full = classification_data(120)
        self.train, self.val = random_split(full, [96, 24], generator=torch.Generator().manual_seed(0))
        self.test = classification_data(40, seed=3)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=self.batch_size)


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


if __name__ == "__main__":
    pl.seed_everything(3)
    dm, model = Data(), Classifier()
    trainer = pl.Trainer(max_epochs=3, log_every_n_steps=2, enable_progress_bar=False)
    trainer.fit(model, datamodule=dm)
    val = trainer.validate(model, datamodule=dm, verbose=False)
    test = trainer.test(model, datamodule=dm, verbose=False)
    report(trainer, model, validate=val, test=test, setup_calls=dm.setup_calls)
