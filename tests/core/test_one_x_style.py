"""The 1.x style that tutorials still teach trains, and its 'log' values reach the logger."""
from __future__ import annotations

import torch

from distengine.loggers.base import Logger
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class RecordingLogger(Logger):
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []
        self.hparams = None

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params):
        self.hparams = dict(params)

    def keys(self):
        return {k for _, m in self.rows for k in m}


class OldStyle(Regressor):
    def __init__(self):
        super().__init__()
        self.epoch_end_sizes = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        return {"loss": loss, "log": {"train_mse": loss}, "progress_bar": {"mse": loss}}

    def training_epoch_end(self, outputs):
        self.epoch_end_sizes.append(len(outputs))
        assert all(not o["loss"].requires_grad for o in outputs)  # detached
        return {"log": {"train_epoch_mse": torch.stack([o["loss"] for o in outputs]).mean()}}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"val_loss": torch.nn.functional.mse_loss(self.net(x), y)}

    def validation_epoch_end(self, outputs):
        avg = torch.stack([o["val_loss"] for o in outputs]).mean()
        return {"val_loss": avg, "log": {"avg_val_loss": avg}, "progress_bar": {"vl": avg}}


def test_one_x_module_trains_and_logs(tmp_path):
    logger = RecordingLogger()
    module = OldStyle()
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1, num_sanity_val_steps=0)
    ds = regression_data()
    trainer.fit(module, loader(ds), loader(ds, batch_size=32))
    assert module.epoch_end_sizes == [6, 6]
    assert {"train_mse", "train_epoch_mse", "avg_val_loss"} <= logger.keys()
    assert "mse" not in logger.keys()  # progress_bar entries stay off the logger
    assert "val_loss" in trainer.callback_metrics  # top-level keys feed monitors (checkpoint, early stop)
    assert "vl" in trainer.progress_bar_metrics
    steps = [s for s, m in logger.rows if "train_mse" in m]
    assert steps == list(range(12))  # Lightning's indices: global_step - 1


def test_outputs_are_not_kept_without_epoch_end_hook(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(Regressor(), loader(regression_data()))
    assert trainer._run.adapted.collect_train_outputs is False
    assert trainer._parts.loop_state.train_outputs is None


def test_save_hyperparameters_reach_logger_and_checkpoint(tmp_path):
    class WithHparams(Regressor):
        def __init__(self, lr=0.05, hidden=16):
            super().__init__(lr=lr)
            self.save_hyperparameters()

    logger = RecordingLogger()
    module = WithHparams(lr=0.01)
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=logger)
    trainer.fit(module, loader(regression_data()))
    assert logger.hparams == {"lr": 0.01, "hidden": 16}
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(str(path))
    loaded = WithHparams.load_from_checkpoint(str(path))
    assert loaded.hparams.lr == 0.01
    for a, b in zip(loaded.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)
