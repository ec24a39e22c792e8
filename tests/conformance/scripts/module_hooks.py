"""The module hooks around the steps, in Lightning's order and with its arguments:
configure_callbacks (replacing a Trainer callback of the same type, checkpoints last),
configure_model, on_{validation,test,predict}_model_eval/train, and the batch transfer hooks
(dataloader_idx per loader), through fit, validate, test and predict.

style: 2.x
ranks: no
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

CALLS = []


class Note(pl.Callback):
    def __init__(self, tag):
        self.tag = tag

    def on_fit_start(self, trainer, module):
        CALLS.append(["callbacks", [type(c).__name__ + getattr(c, "tag", "") for c in trainer.callbacks
                                    if not type(c).__name__.endswith(("ProgressBar", "ModelSummary"))]])


class Hooked(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = None

    def configure_model(self):
        CALLS.append(["configure_model", self.layer is None])
        if self.layer is None:
            self.layer = nn.Linear(8, 1)

    def configure_callbacks(self):
        CALLS.append(["configure_callbacks"])
        return [Note("model"), EarlyStopping(monitor="val_loss/dataloader_idx_0", patience=5)]

    def configure_optimizers(self):
        CALLS.append(["configure_optimizers"])
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        CALLS.append(["on_before_batch_transfer", dataloader_idx, batch[0].device.type])
        return [batch[0] * 2, batch[1]]

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        CALLS.append(["transfer_batch_to_device", dataloader_idx, device.type])
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        CALLS.append(["on_after_batch_transfer", dataloader_idx, torch.is_inference_mode_enabled()])
        return [batch[0] + 1, batch[1]]

    def on_validation_model_eval(self):
        CALLS.append(["on_validation_model_eval", self.trainer.sanity_checking])
        super().on_validation_model_eval()

    def on_validation_model_train(self):
        CALLS.append(["on_validation_model_train", self.training])
        super().on_validation_model_train()

    def on_test_model_eval(self):
        CALLS.append(["on_test_model_eval"])
        super().on_test_model_eval()

    def on_test_model_train(self):
        CALLS.append(["on_test_model_train"])
        super().on_test_model_train()

    def on_predict_model_eval(self):
        CALLS.append(["on_predict_model_eval"])
        super().on_predict_model_eval()

    def training_step(self, batch, batch_idx):
        x, y = batch
        CALLS.append(["training_step", batch_idx, float(x[0, 0])])
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        CALLS.append(["validation_step", batch_idx, dataloader_idx])
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch, batch_idx):
        CALLS.append(["test_step", batch_idx])

    def predict_step(self, batch, batch_idx):
        CALLS.append(["predict_step", batch_idx])
        return self.layer(batch[0])


if __name__ == "__main__":
    pl.seed_everything(7)
    model = Hooked()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ModelCheckpoint(), Note("trainer"),
                                    EarlyStopping(monitor="val_loss/dataloader_idx_0")])
    val = [DataLoader(regression_data(8, seed=1), batch_size=4), DataLoader(regression_data(8, seed=2), batch_size=4)]
    trainer.fit(model, DataLoader(regression_data(16), batch_size=4), val)
    loader = DataLoader(regression_data(4, seed=3), batch_size=4)
    trainer.validate(model, loader, verbose=False)
    trainer.test(model, loader, verbose=False)
    trainer.predict(model, loader)
    report(trainer, model, calls=CALLS)
