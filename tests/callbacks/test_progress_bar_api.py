"""ProgressBar's Lightning API: ``trainer``, ``total_train_batches``, ``total_val_batches``, and a
``get_metrics(trainer, pl_module)`` override with Lightning's two-argument signature."""
from __future__ import annotations

import io

import pytest

from distengine.callbacks import TQDMProgressBar
from distengine.callbacks.progress import ProgressBar
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class Recorder(TQDMProgressBar):
    def __init__(self):
        super().__init__(file=io.StringIO())
        self.seen = []
        self.at_start = []

    def on_train_epoch_start(self, trainer, module):
        super().on_train_epoch_start(trainer, module)
        self.at_start.append(self.total_train_batches)

    def on_train_epoch_end(self, trainer, module):
        super().on_train_epoch_end(trainer, module)
        self.seen.append((self.total_train_batches, self.total_val_batches))


def test_totals_follow_check_val_every_n_epoch(tmp_path):
    bar = Recorder()
    with pytest.raises(TypeError, match="not attached"):
        bar.trainer
    trainer = quiet_trainer(tmp_path, max_epochs=4, check_val_every_n_epoch=2, limit_val_batches=2,
                            num_sanity_val_steps=0, callbacks=[bar], enable_progress_bar=True)
    trainer.fit(Regressor(), loader(regression_data(32)), loader(regression_data(64)))
    assert bar.trainer is trainer
    n = trainer.num_training_batches
    assert bar.seen == [(n, 0), (n, 2), (n, 0), (n, 2)]


def test_total_val_batches_is_zero_without_validation(tmp_path):
    bar = Recorder()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[bar], enable_progress_bar=True)
    trainer.fit(Regressor(), loader(regression_data(32)))
    assert bar.seen == [(trainer.num_training_batches, 0)]


def test_total_train_batches_with_max_steps_and_endless_epochs(tmp_path):
    bar = Recorder()
    trainer = quiet_trainer(tmp_path, max_epochs=-1, max_steps=5, callbacks=[bar], enable_progress_bar=True)
    trainer.fit(Regressor(), loader(regression_data(128)))  # 128 / 8 batches an epoch, 5 steps in all
    assert trainer.num_training_batches > 5  # not all of it: the steps left (max_steps - global_step)
    assert bar.at_start == [5] and bar.seen == [(0, 0)]


def test_two_argument_get_metrics_override_is_called(tmp_path):
    calls = []

    class Lightning2Signature(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            calls.append(dict(items))
            return items

    class LogsToBar(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("shown", 1.0, prog_bar=True, on_step=False, on_epoch=True)
            return loss

    bar = Lightning2Signature(file=io.StringIO())
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[bar], enable_progress_bar=True)
    trainer.fit(LogsToBar(), loader(regression_data(32)))
    assert calls and "loss" not in calls[-1] and calls[-1]["shown"] == 1.0
    assert isinstance(bar, ProgressBar)
