"""Loop details that behave as in Lightning 2.6: epoch values logged under a name of one epoch
only, the order of optimizer calls, ``ckpt_path="last"``, the TensorBoard hparams row."""
from __future__ import annotations

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
