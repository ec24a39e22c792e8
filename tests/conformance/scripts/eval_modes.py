"""A submodule the user froze in eval mode stays so through validation, test and predict, and
the evaluation hooks (start, epoch start/end, end) run inside torch.inference_mode.

style: 2.x
ranks: no
"""
import warnings

import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class FrozenNorm(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(8)
        self.norm.eval()  # frozen statistics: must stay in eval mode while training
        self.layer = nn.Linear(8, 1)
        self.seen = []

    def _note(self, hook):
        self.seen.append([hook, torch.is_inference_mode_enabled(), torch.is_grad_enabled(), self.training,
                          self.norm.training])

    def forward(self, x):
        return self.layer(self.norm(x))

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self._note("training_step")
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self._note("validation_step")
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        self._note("test_step")

    def predict_step(self, batch, batch_idx):
        self._note("predict_step")
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


HOOKS = ["on_train_start", "on_train_epoch_start", "on_train_epoch_end",
         "on_validation_start", "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_end",
         "on_test_start", "on_test_epoch_start", "on_test_epoch_end", "on_test_end",
         "on_predict_start", "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_end"]
for _hook in HOOKS:
    setattr(FrozenNorm, _hook, (lambda name: lambda self, *a: self._note(name))(_hook))


if __name__ == "__main__":
    pl.seed_everything(5)
    model = FrozenNorm()
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, limit_val_batches=2, log_every_n_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, DataLoader(regression_data(32), batch_size=8),
                    DataLoader(regression_data(16, seed=1), batch_size=8))
    eval_warning = [str(w.message) for w in caught if "eval mode" in str(w.message)]
    loader = DataLoader(regression_data(16, seed=2), batch_size=8)
    trainer.test(model, loader, verbose=False)
    trainer.predict(model, loader)
    report(trainer, model, seen=model.seen, eval_warning=eval_warning, norm_training=model.norm.training)
