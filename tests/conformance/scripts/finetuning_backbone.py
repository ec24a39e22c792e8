"""BackboneFinetuning unfreezes the backbone at epoch 1; GradientAccumulationScheduler
accumulates 2 batches from epoch 2.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import BackboneFinetuning, GradientAccumulationScheduler
from torch import nn
from torch.utils.data import DataLoader


class Finetuned(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.head(self.backbone(x)), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()), lr=0.02)


class RecordLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


if __name__ == "__main__":
    pl.seed_everything(3)
    model = Finetuned()
    record = RecordLR()
    trainer = pl.Trainer(max_epochs=4, log_every_n_steps=1, enable_progress_bar=False,
                         callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda e: 2.0),
                                    GradientAccumulationScheduler({2: 2}), record])
    trainer.fit(model, DataLoader(regression_data(48), batch_size=8))
    report(trainer, model, lrs=record.lrs)
