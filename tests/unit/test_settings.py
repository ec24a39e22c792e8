"""resolve_settings (issue 22): the flags in, one frozen Settings out, each flag in one form."""
from __future__ import annotations

import dataclasses

import pytest

import distengine as de
from distengine.config import TrainerConfig
from distengine.settings import Settings, fit_max_epochs, resolve_settings


def test_settings_are_frozen_and_resolved_once():
    s = resolve_settings(TrainerConfig(fast_dev_run=True, logger=False, enable_progress_bar=False))
    assert isinstance(s, Settings)
    assert (s.fast_dev_run, s.max_epochs, s.max_steps, s.num_sanity_val_steps) == (True, 1, 1, 0)
    assert dict(s.limits) == {"train": 1, "val": 1, "test": 1, "predict": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_epochs = 3
    with pytest.raises(TypeError):
        s.limits["train"] = 5


def test_one_form_per_flag():
    s = resolve_settings(TrainerConfig(num_sanity_val_steps=-1, overfit_batches=2, logger=False))
    assert s.num_sanity_val_steps == float("inf") and s.limits["train"] == s.limits["val"] == 2
    assert s.max_epochs is None and s.max_epochs_defaulted
    assert fit_max_epochs(None, -1, []) == 1000 and fit_max_epochs(None, 10, []) == -1 and fit_max_epochs(3, 1, []) == 3


def test_trainer_changes_do_not_reach_its_settings():
    trainer = de.Trainer(max_epochs=2, limit_val_batches=3, logger=False, enable_progress_bar=False)
    trainer.max_epochs = 5
    trainer.limit_val_batches = 1
    trainer.fit_loop.max_epochs = 7
    assert trainer.settings.max_epochs == 2 and trainer.settings.limits["val"] == 3
    assert (trainer.max_epochs, trainer.limit_val_batches) == (7, 1)


def test_bad_flag_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match="max_epochs"):
        resolve_settings(TrainerConfig(max_epochs=-5))


def test_settings_pickle_with_the_trainer():
    """ddp_spawn pickles the Trainer into its ranks (tests/distributed/test_notebook_strategies.py)."""
    import pickle

    trainer = de.Trainer(limit_val_batches=2, logger=False, enable_progress_bar=False)
    copy = pickle.loads(pickle.dumps(trainer.settings))
    assert dict(copy.limits) == dict(trainer.settings.limits)
    with pytest.raises(TypeError):
        copy.limits["val"] = 1
