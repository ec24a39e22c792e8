"""torchmetrics Metric and MetricCollection objects in self.log / self.log_dict.

style: 2.x
ranks: no
"""
import pytorch_lightning as pl
import torch
from conformance_report import classification_data, report
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 3)
        self.train_acc = MulticlassAccuracy(num_classes=3)
        self.train_mse = MeanSquaredError()
        self.train_f1 = MulticlassF1Score(num_classes=3)
        self.val_metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=3),
                                             "f1": MulticlassF1Score(num_classes=3)}, prefix="val_")
        self.val_mse = MeanSquaredError()
        self.val_mae = MeanAbsoluteError()
        self.never_updated = SumMetric()

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.train_acc(logits, y)  # forward: the batch value is the step value
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        self.train_mse.update(logits.softmax(1)[:, 0], (y == 0).float())  # update only: no step value
        self.log("train_mse", self.train_mse, on_step=True, on_epoch=True)
        self.train_f1(logits, y)
        self.log("train_f1", self.train_f1, sync_dist=True)  # on_step only: no effect of sync_dist
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics)
        p0, t0 = logits.softmax(1)[:, 0], (y == 0).float()
        self.val_mse(p0, t0)
        self.log("val_mse", self.val_mse, on_step=True, on_epoch=True)
        self.val_mae.update(p0, t0)
        self.log("never", self.never_updated)

    def on_validation_epoch_end(self):
        self.log("val_mae", self.val_mae.compute())  # the tensor style still works
        self.val_mae.reset()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    pl.seed_everything(3)
    model = Classifier()
    loggers = [TensorBoardLogger("tb", name="exp", version=0), CSVLogger("csv", name="exp")]
    ckpt = ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=2, filename="{epoch}-{val_acc:.4f}")
    trainer = pl.Trainer(max_epochs=3, logger=loggers, log_every_n_steps=2, callbacks=[ckpt],
                         enable_progress_bar=False)
    trainer.fit(model, DataLoader(classification_data(40), batch_size=8),
                DataLoader(classification_data(21, seed=1), batch_size=8))
    after_fit, bar = dict(trainer.callback_metrics), dict(trainer.progress_bar_metrics)
    best = Classifier.load_from_checkpoint(ckpt.best_model_path)
    trainer.validate(best, DataLoader(classification_data(21, seed=1), batch_size=8))
    report(trainer, model, best_score=ckpt.best_model_score, after_fit=after_fit, progress_bar=bar)
