"""The LR finder at Lightning's module paths, with a DataModule, and its scheduler and logging rules."""
import logging

import pytest
import torch
from torch.utils.data import DataLoader

import distengine as de
from distengine.utilities.exceptions import ConfigError
from tests.tuner.test_tuner import Regression, fast_trainer, regression_data


def test_module_paths_hold_the_same_classes():
    from distengine.callbacks import Callback, LearningRateFinder
    from distengine.callbacks.batch_size_finder import BatchSizeFinder as BSF
    from distengine.callbacks.callback import Callback as C
    from distengine.callbacks.lr_finder import LearningRateFinder as LRF
    from distengine.tuner import LRFinder
    from distengine.tuner.lr_finder import LRFinder as F

    assert (C, LRF, F) == (Callback, LearningRateFinder, LRFinder)
    assert BSF is de.callbacks.BatchSizeFinder

    class Custom(C):  # a callback subclassed from the Lightning path runs like any other
        def __init__(self):
            self.fit_started = 0

        def on_fit_start(self, trainer, module):
            self.fit_started += 1

    cb = Custom()
    fast_trainer(max_steps=2, callbacks=[cb]).fit(Regression())
    assert cb.fit_started == 1


class RegressionData(de.DataModule):
    def __init__(self):
        super().__init__()
        self.setup_calls = 0

    def setup(self, stage):
        self.setup_calls += 1

    def train_dataloader(self):
        return DataLoader(regression_data(64), batch_size=8)


def test_lr_find_takes_a_datamodule():
    class NoLoader(Regression):
        train_dataloader = None  # the data can only come from the DataModule

    model, dm = NoLoader(lr=0.5), RegressionData()
    finder = de.Tuner(fast_trainer()).lr_find(model, datamodule=dm, num_training=12, early_stop_threshold=None)
    assert len(finder.results["lr"]) == 12 and dm.setup_calls >= 1
    assert model.lr == finder.suggestion() != 0.5


@pytest.mark.parametrize("kw, match", [({"method": "validate"}, "method='validate'"),
                                       ({"dataloaders": [1]}, "dataloaders=")])
def test_lr_find_refuses_evaluation_arguments(kw, match):
    with pytest.raises(ConfigError, match=match):
        de.Tuner(fast_trainer()).lr_find(Regression(), **kw)


def test_the_modules_schedulers_do_not_step_during_the_sweep():
    """A ReduceLROnPlateau on a validation metric (which the sweep never logs) and a step
    scheduler are both left alone: the sweep sets the lr; the real fit uses them afterwards."""
    stepped = []

    class WithSchedulers(Regression):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.training_step(batch, batch_idx))

        def val_dataloader(self):
            return DataLoader(regression_data(16), batch_size=8)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.lr)
            step = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: stepped.append(n) or 1.0)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return [opt], [{"scheduler": step, "interval": "step"},
                           {"scheduler": plateau, "interval": "epoch", "monitor": "val_loss"}]

    model = WithSchedulers()
    finder = de.Tuner(fast_trainer(max_epochs=3)).lr_find(model, num_training=20, early_stop_threshold=None)
    assert len(finder.results["lr"]) == 20
    assert stepped == [0]  # LambdaLR's own first call when it was built; no step in the sweep
    trainer = fast_trainer(max_epochs=1, limit_train_batches=3)
    trainer.fit(model)
    assert stepped[-1] == 3  # the real fit steps it


def test_no_suggestion_logs_an_error(caplog):
    finder = de.tuner.lr_finder.LRFinder("exponential", 1e-6, 1e-1, 20)
    finder.results = {"lr": [1e-6 * 2 ** i for i in range(6)], "loss": [1.0, 0.9, float("nan"), 0.7, 0.6, 0.5]}
    with caplog.at_level(logging.ERROR, logger="distengine.tuner.lr_finder"):
        assert finder.suggestion(skip_begin=2, skip_end=1) is None
    assert "no learning rate suggested" in caplog.text and "num_training" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="distengine.tuner.lr_finder"):
        assert finder.suggestion(skip_begin=0, skip_end=1) is not None
    assert caplog.text == ""
