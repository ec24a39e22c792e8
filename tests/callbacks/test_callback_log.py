"""``self.log`` inside a callback logs through the module, as in Lightning (the Trainer gives
every callback the module's ``log`` and ``log_dict`` when a run starts)."""
from __future__ import annotations

import distengine as de
from tests.core.models import Regressor, loader, regression_data


class Logging(de.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.log("cb_step", float(batch_idx), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module):
        self.log_dict({"cb_epoch": float(trainer.current_epoch) + 10.0})


def test_a_callback_logs_with_self_log(tmp_path):
    trainer = de.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, callbacks=[Logging()],
                         default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=1)
    trainer.fit(Regressor(), loader(regression_data()))
    assert float(trainer.callback_metrics["cb_step"]) == 2.0  # the last batch's index
    assert float(trainer.callback_metrics["cb_epoch"]) == 11.0
    assert float(trainer.logged_metrics["cb_epoch"]) == 11.0
