"""Lightning's PossibleUserWarnings at the start of a run (issue 26; the texts are compared with
Lightning 2.6.6 by tests/conformance/test_trainer_api.py, part user_warnings)."""
from __future__ import annotations

import os
import warnings

import distengine as de
from distengine.callbacks import Callback
from distengine.loggers import CSVLogger
from distengine.utilities import disable_possible_user_warnings
from distengine.utilities.warnings import PossibleUserWarning
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class StopAfterOneEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def _warnings(fn, disable=False):
    with warnings.catch_warnings(record=True) as caught:  # restores the filters afterwards
        warnings.simplefilter("always")
        if disable:
            disable_possible_user_warnings()
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, PossibleUserWarning)]


def test_max_epochs_not_set(tmp_path):
    def fit(**kw):
        return lambda: quiet_trainer(tmp_path, callbacks=[StopAfterOneEpoch()], **kw).fit(
            Regressor(), loader(regression_data(32)))

    assert any(m.startswith("`max_epochs` was not set. Setting it to 1000 epochs") for m in _warnings(fit()))
    assert not any("max_epochs" in m for m in _warnings(fit(max_steps=2)))
    assert not any("max_epochs" in m for m in _warnings(fit(max_time="00:00:01:00")))
    assert not any("max_epochs" in m for m in _warnings(fit(max_epochs=1)))


def test_fewer_batches_than_the_logging_interval(tmp_path):
    def fit(logger):
        return lambda: quiet_trainer(tmp_path, max_epochs=1, logger=logger, log_every_n_steps=50).fit(
            Regressor(), loader(regression_data(32)))

    expected = ("The number of training batches (2) is smaller than the logging interval "
                "Trainer(log_every_n_steps=50).")
    assert any(m.startswith(expected) for m in _warnings(fit(CSVLogger(str(tmp_path)))))
    assert not any("logging interval" in m for m in _warnings(fit(False)))


def test_few_workers_on_a_machine_with_cores_to_spare(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    trainer = quiet_trainer(tmp_path, max_epochs=1)

    def run():
        trainer.fit(Regressor(), loader(regression_data(32)), loader(regression_data(16), num_workers=2))
        trainer.validate(trainer.lightning_module, loader(regression_data(16)), verbose=False)

    messages = [m for m in _warnings(run) if "workers" in m]
    assert [m.split("'")[1] for m in messages] == ["train_dataloader", "val_dataloader"]  # the fit's val loader has 2
    assert "`num_workers=7`" in messages[0]
    assert _warnings(run, disable=True) == []
    assert not _warnings(lambda: de.Trainer(default_root_dir=str(tmp_path), logger=False))  # at fit, not before


def test_validation_data_and_step_must_come_together(tmp_path):
    class NoValidationStep(Regressor):
        validation_step = de.Module.validation_step

    def caught(module, *loaders):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            quiet_trainer(tmp_path, max_epochs=1).fit(module, *loaders)
        return [(w.category, str(w.message)) for w in got if "Skipping val loop" in str(w.message)]

    train, val = loader(regression_data(32)), loader(regression_data(16))
    assert caught(NoValidationStep(), train, val) == [
        (UserWarning, "You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.")]
    assert caught(Regressor(), train) == [
        (PossibleUserWarning, "You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.")]
    assert caught(Regressor(), train, val) == []
