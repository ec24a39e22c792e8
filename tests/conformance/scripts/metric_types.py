"""The types of trainer.logged_metrics, callback_metrics and progress_bar_metrics values, read
by a callback during training and validation and after fit/validate.

style: 2.x
ranks: no
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


def kinds(metrics):
    return {k: (type(v).__name__, str(v.dtype) if isinstance(v, torch.Tensor) else None) for k, v in
            sorted(metrics.items())}


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("a_float", 3.0)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Types(pl.Callback):
    def __init__(self):
        self.seen = {}

    def _note(self, trainer, where):
        self.seen[where] = {"logged": kinds(trainer.logged_metrics), "callback": kinds(trainer.callback_metrics),
                            "pbar": kinds(trainer.progress_bar_metrics)}

    def on_train_batch_end(self, trainer, *args):
        self._note(trainer, "train_batch_end")

    def on_validation_end(self, trainer, *args):
        if not trainer.sanity_checking:
            self._note(trainer, "validation_end")


if __name__ == "__main__":
    pl.seed_everything(4)
    model, types = Regressor(), Types()
    trainer = pl.Trainer(max_epochs=1, log_every_n_steps=1, enable_progress_bar=False, callbacks=[types])
    val = DataLoader(regression_data(16, seed=1), batch_size=8)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8), val)
    after = {"logged": kinds(trainer.logged_metrics), "callback": kinds(trainer.callback_metrics),
             "pbar": kinds(trainer.progress_bar_metrics)}
    report(trainer, model, during=types.seen, after_fit=after)
