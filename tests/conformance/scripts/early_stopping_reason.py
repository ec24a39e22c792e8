"""EarlyStopping's stopping_reason (the EarlyStoppingReason enum) and what it saves in a checkpoint.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(1.0 / (1 + self.current_epoch)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(5)
    model = Regressor()
    stop = EarlyStopping(monitor="val_loss", stopping_threshold=0.3)
    before = stop.stopping_reason
    trainer = pl.Trainer(max_epochs=10, callbacks=[stop], enable_progress_bar=False, log_every_n_steps=1)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=16),
                DataLoader(regression_data(16, seed=1), batch_size=16))
    state = stop.state_dict()
    again = EarlyStopping(monitor="val_loss")
    again.load_state_dict(state)
    report(trainer, model, before=before.name, reason=stop.stopping_reason.name,
           is_enum=stop.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD,
           threshold_message="Stopping threshold reached" in stop.stopping_reason_message,
           stopped_epoch=stop.stopped_epoch, saved_reason=state["stopping_reason"],
           restored=again.stopping_reason.name,
           restored_message=again.stopping_reason_message == stop.stopping_reason_message,
           values=[r.value for r in EarlyStoppingReason], names=[r.name for r in EarlyStoppingReason])
