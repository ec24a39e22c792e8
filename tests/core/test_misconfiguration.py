"""Configuration errors are Lightning's ``MisconfigurationException`` (issue 26) and still the
built-in error distengine raised before, with a one-line message."""
from __future__ import annotations

import pytest

import distengine as de
from distengine.callbacks import EarlyStopping, ModelCheckpoint
from distengine.utilities.exceptions import MisconfigurationException
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


def _caught(fn, builtin):
    with pytest.raises(MisconfigurationException) as info:
        fn()
    assert isinstance(info.value, builtin), type(info.value).__mro__
    assert "\n" not in str(info.value).strip(), str(info.value)
    return str(info.value)


def test_base_is_exception_as_in_lightning():
    assert MisconfigurationException.__mro__[1] is Exception


def test_trainer_flags(tmp_path):
    _caught(lambda: de.Trainer(accelerator="tpu"), ValueError)
    _caught(lambda: de.Trainer(strategy="deepspeed"), ValueError)
    _caught(lambda: de.Trainer(min_epochs=3, max_epochs=1), ValueError)
    msg = _caught(lambda: de.Trainer(default_root_dir=str(tmp_path), enable_checkpointing=False,
                                     callbacks=[ModelCheckpoint(dirpath=str(tmp_path))]), ValueError)
    assert "enable_checkpointing=False" in msg


def test_callback_arguments():
    _caught(lambda: ModelCheckpoint(mode="median"), ValueError)
    _caught(lambda: EarlyStopping("val_loss", mode="median"), ValueError)


def test_module_and_data(tmp_path):
    class NoOptimizers(Regressor):
        configure_optimizers = de.Module.configure_optimizers

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    _caught(lambda: trainer.fit(NoOptimizers(), loader(regression_data())), ValueError)
    _caught(lambda: quiet_trainer(tmp_path, max_epochs=1).fit(Regressor()), ValueError)


def test_enable_checkpointing_false_without_the_callback_is_fine(tmp_path):
    de.Trainer(default_root_dir=str(tmp_path), enable_checkpointing=False, callbacks=[EarlyStopping("val_loss")])
