"""ThroughputMonitor during fit (validation, gradient accumulation with a last short window), then
test, predict and test again: which (tag, step) pairs it logs.

Run by tests/conformance/test_throughput.py under Lightning and under distengine (the values
are timings, so that test compares the tags and steps, and checks the rates against the
wall-clock times this script measures itself)."""
import time

import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import Callback, ThroughputMonitor
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import measure_flops
from torch import nn
from torch.utils.data import DataLoader

SLEEP = 0.02  # each step sleeps, so a step's time is known from outside the monitor


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        time.sleep(SLEEP)
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class WallClock(Callback):
    """The independent measurement: wall-clock time of each training epoch."""

    def __init__(self):
        self.samples, self.seconds = 0, 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += batch[0].shape[0]

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds += time.perf_counter() - self._t0


if __name__ == "__main__":
    pl.seed_everything(3)
    model = Regressor()
    with torch.device("meta"):
        meta = Regressor()
        x = torch.randn(4, 8)
    model.flops_per_batch = measure_flops(meta, lambda: meta(x), lambda y: y.sum())
    clock = WallClock()
    monitor = ThroughputMonitor(batch_size_fn=lambda b: b[0].shape[0], length_fn=lambda b: 3 * b[0].shape[0],
                                window_size=3)
    loggers = [TensorBoardLogger(".", name="tb"), CSVLogger(".", name="csv")]
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=2, accumulate_grad_batches=2, limit_train_batches=9,
                         limit_val_batches=3, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, logger=loggers, callbacks=[monitor, clock])
    data = regression_data(48)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    trainer.test(model, DataLoader(data, batch_size=4), verbose=False)
    trainer.predict(model, DataLoader(data, batch_size=4))
    trainer.test(model, DataLoader(data, batch_size=4), verbose=False)
    report(trainer, model, samples=clock.samples, seconds=clock.seconds, sleep=SLEEP,
           flops_per_batch=model.flops_per_batch)
