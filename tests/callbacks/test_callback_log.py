"""pl_module.log from Callback hooks (issue 26): epoch-end hooks' values reach callback_metrics
and the loggers; the hooks where Lightning refuses self.log raise its MisconfigurationException.
tests/conformance/test_trainer_api.py (callback_log) compares the same with Lightning 2.6.6."""
from __future__ import annotations

import pytest

from distengine.callbacks import Callback
from distengine.utilities.exceptions import MisconfigurationException
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class EpochEndLogger(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.log("cb_train_epoch", float(trainer.current_epoch) + 0.5)

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("cb_val_epoch", 7.0)


def test_epoch_end_hooks_log_this_epochs_value(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[EpochEndLogger()], num_sanity_val_steps=0)
    trainer.fit(Regressor(), loader(regression_data(32)), loader(regression_data(16)))
    assert float(trainer.callback_metrics["cb_train_epoch"]) == 1.5  # the last epoch's, not the one before
    assert float(trainer.callback_metrics["cb_val_epoch"]) == 7.0
    results = trainer.validate(trainer.lightning_module, loader(regression_data(16)), verbose=False)
    assert results[0]["cb_val_epoch"] == 7.0


@pytest.mark.parametrize("hook", ["on_fit_start", "on_train_end", "on_sanity_check_start"])
def test_hooks_that_refuse_logging(tmp_path, hook):
    def log_it(self, trainer, pl_module, *args):
        pl_module.log("bad", 1.0)

    cb = type("Bad", (Callback,), {hook: log_it})()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[cb], num_sanity_val_steps=1)
    with pytest.raises(MisconfigurationException, match=hook) as info:
        trainer.fit(Regressor(), loader(regression_data(32)), loader(regression_data(16)))
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
