"""LearningRateMonitor with two optimizers in manual optimization: lr-SGD and lr-Adam (a second SGD
would be lr-SGD-1; parameter groups /pg<i> or /<name>), -momentum and -weight_decay, every
log_every_n_steps batches (not optimizer steps).

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import LearningRateMonitor
from torch import nn
from torch.utils.data import DataLoader


class TwoOptimizers(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a = nn.Linear(8, 1)
        self.b = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        for opt in self.optimizers():
            loss = nn.functional.mse_loss(self.a(x) + self.b(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        for sched in self.lr_schedulers():
            sched.step()

    def configure_optimizers(self):
        sgd = torch.optim.SGD([{"params": self.a.weight, "name": "weight"}, {"params": self.a.bias}],
                              lr=0.05, momentum=0.9)
        adam = torch.optim.Adam(self.b.parameters(), lr=0.01, weight_decay=0.1)
        extra = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
        return [sgd, adam, extra], [torch.optim.lr_scheduler.StepLR(sgd, 2, 0.5),
                                    torch.optim.lr_scheduler.StepLR(extra, 1, 0.9)]


if __name__ == "__main__":
    pl.seed_everything(6)
    model = TwoOptimizers()
    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True, log_weight_decay=True)
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor], enable_progress_bar=False, log_every_n_steps=2)
    trainer.fit(model, DataLoader(regression_data(64), batch_size=16))
    report(trainer, model, lrs={k: [float(v) for v in vals] for k, vals in monitor.lrs.items()},
           momentum=sorted(monitor.last_momentum_values), weight_decay=sorted(monitor.last_weight_decay_values))
