"""0.x/1.x tutorial style: step dicts with "log" and "progress_bar", validation_epoch_end returning them.

style: 1.x
known callback_metrics: distengine honours the 0.x "log"/"progress_bar" keys of returned dicts (the
    style of the tutorials this script copies); 1.9.5 ignores them without a word, so nothing of it is
    logged or monitorable there
known logged: the same: 1.9.5 writes no scalars for this script
known extra: the same: 1.9.5's progress bar shows none of the returned values
"""
import pytorch_lightning as pl
import torch
from conformance_report import classification_data, report
from torch import nn
from torch.utils.data import DataLoader


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(8, 3)

    def forward(self, x):
        return torch.relu(self.l1(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        return {"loss": loss, "log": {"train_loss": loss}}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"val_loss": nn.functional.cross_entropy(self(x), y)}

    def validation_epoch_end(self, outputs):
        avg_loss = torch.stack([x["val_loss"] for x in outputs]).mean()
        logs = {"val_loss": avg_loss}
        return {"avg_val_loss": avg_loss, "log": logs, "progress_bar": logs}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


if __name__ == "__main__":
    pl.seed_everything(37)
    model = Classifier()
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(model, DataLoader(classification_data(32), batch_size=8),
                DataLoader(classification_data(16, seed=1), batch_size=8))
    report(trainer, model, progress_bar=dict(trainer.progress_bar_metrics))
