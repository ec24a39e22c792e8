"""Loop details that behave as in Lightning 2.6: epoch values logged under a name of one epoch
only, the order of optimizer calls, ``ckpt_path="last"``, the TensorBoard hparams row."""
from __future__ import annotations

import os
from unittest import mock

import torch

import distengine as de
from distengine.loggers.base import Logger
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class RecordingLogger(Logger):
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def test_an_epoch_value_of_one_epoch_only_keeps_its_value_and_is_logged_once(tmp_path):
    class M(Regressor):
        def on_train_epoch_end(self):
            self.log(f"epoch_metric_{self.current_epoch}", float(self.current_epoch + 1), prog_bar=True)

    logger = RecordingLogger()
    trainer = quiet_trainer(tmp_path, max_epochs=3, logger=logger, limit_train_batches=2)
    trainer.fit(M(), loader(regression_data()))
    for epoch in range(3):
        name = f"epoch_metric_{epoch}"
        assert trainer.progress_bar_metrics[name] == epoch + 1
        assert float(trainer.callback_metrics[name]) == epoch + 1
        assert [m[name] for _, m in logger.rows if name in m] == [epoch + 1]


def _fit_with_checkpoints(tmp_path, save_last):
    mc = de.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), save_last=save_last)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[mc])
    trainer.fit(Regressor(), loader(regression_data()))
    return trainer, mc


def test_ckpt_path_last_with_save_last_names_last_ckpt(tmp_path):
    trainer, mc = _fit_with_checkpoints(tmp_path, save_last=True)
    assert mc.last_model_path.endswith("last.ckpt")
    trainer.validate(Regressor(), loader(regression_data()), ckpt_path="last")
    assert trainer.ckpt_path == mc.last_model_path


def test_ckpt_path_last_without_save_last_is_the_newest_checkpoint(tmp_path):
    trainer, mc = _fit_with_checkpoints(tmp_path, save_last=False)
    trainer.validate(Regressor(), loader(regression_data()), ckpt_path="last")
    assert trainer.ckpt_path == mc.best_model_path and os.path.basename(trainer.ckpt_path) == "epoch=0-step=2.ckpt"


def test_manual_steps_count_once_each_even_when_the_step_method_is_replaced(tmp_path):
    class Manual(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt_a, opt_b = self.optimizers()
            x, y = batch
            self.manual_backward(torch.nn.functional.mse_loss(self(x), y))
            opt_a.step(closure=lambda: None)
            if batch_idx % 2 == 0:
                opt_b.step()

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.01), torch.optim.Adam(self.parameters(), lr=0.01)]

    # a step method replaced on the class (a mock, a patched optimizer) bypasses torch's step hooks;
    # Lightning counts the LightningOptimizer.step calls, so does distengine
    with mock.patch("torch.optim.SGD.step") as sgd_step:
        trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4)
        trainer.fit(Manual(), loader(regression_data()))
    assert sgd_step.call_count == 4 and trainer.global_step == 4 + 2
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4)  # not patched: counted once each
    trainer.fit(Manual(), loader(regression_data()))
    assert trainer.global_step == 4 + 2
