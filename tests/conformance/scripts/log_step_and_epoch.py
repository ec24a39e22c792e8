"""self.log with on_step and on_epoch, prog_bar, sync_dist, and log_dict in evaluation.

style: 2.x
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

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("batch_mean", x.mean(), on_step=False, on_epoch=True, reduce_fx="max")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log_dict({"val_loss": nn.functional.cross_entropy(logits, y),
                       "val_acc": (logits.argmax(1) == y).float().mean()}, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


if __name__ == "__main__":
    pl.seed_everything(17)
    model = Classifier()
    trainer = pl.Trainer(max_epochs=3, log_every_n_steps=3, enable_progress_bar=False)
    trainer.fit(model, DataLoader(classification_data(60), batch_size=8),
                DataLoader(classification_data(20, seed=1), batch_size=8))
    report(trainer, model, progress_bar=dict(trainer.progress_bar_metrics))
