"""1.x: training_epoch_end / validation_epoch_end / test_epoch_end receiving the step outputs.

style: 1.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import classification_data, report
from torch import nn
from torch.utils.data import DataLoader


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 3)
        self.train_epoch_sizes = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        return {"loss": loss, "n": len(y)}

    def training_epoch_end(self, outputs):
        self.train_epoch_sizes.append(sum(o["n"] for o in outputs))
        self.log("train_loss_epoch", torch.stack([o["loss"] for o in outputs]).mean())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"correct": (self.net(x).argmax(1) == y).sum(), "n": len(y)}

    def validation_epoch_end(self, outputs):
        correct = sum(o["correct"] for o in outputs)
        self.log("val_acc", correct / sum(o["n"] for o in outputs), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def test_epoch_end(self, outputs):
        self.log("test_loss", torch.stack(outputs).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


if __name__ == "__main__":
    pl.seed_everything(30)
    model = Classifier()
    trainer = pl.Trainer(max_epochs=3, enable_progress_bar=False, log_every_n_steps=2)
    trainer.fit(model, DataLoader(classification_data(40), batch_size=8),
                DataLoader(classification_data(16, seed=1), batch_size=8))
    test = trainer.test(model, DataLoader(classification_data(16, seed=2), batch_size=8), verbose=False)
    report(trainer, model, sizes=model.train_epoch_sizes, test=test)
