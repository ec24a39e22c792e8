"""LambdaCallback (functions as hooks) and OnExceptionCheckpoint (a checkpoint when the run
raises, removed by a later run that ends cleanly), as Lightning's; 2 ranks in
tests/distributed/test_ranked_utilities.py."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

import distengine as de
from distengine.callbacks import LambdaCallback, OnExceptionCheckpoint
from tests.core.models import Regressor, regression_data


def _trainer(tmp_path, callbacks, **kw):
    return de.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                      callbacks=callbacks, **kw)


def test_lambda_callback_calls_each_given_hook_with_its_arguments(tmp_path):
    calls = []
    cb = LambdaCallback(on_fit_start=lambda trainer, module: calls.append(("fit_start", trainer.global_step)),
                        on_train_batch_end=lambda trainer, module, outputs, batch, batch_idx:
                        calls.append(("batch_end", batch_idx, float(outputs["loss"]) > 0)),
                        on_train_epoch_end=lambda trainer, module: calls.append(("epoch_end", trainer.current_epoch)),
                        on_validation_epoch_end=None)
    _trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=2).fit(
        Regressor(), DataLoader(regression_data(16), batch_size=4))
    assert calls == [("fit_start", 0), ("batch_end", 0, True), ("batch_end", 1, True), ("epoch_end", 0),
                     ("batch_end", 0, True), ("batch_end", 1, True), ("epoch_end", 1)]
    with pytest.raises(TypeError, match=r"unknown hook\(s\) \['on_train_epoch_ends'\]"):
        LambdaCallback(on_train_epoch_ends=print)


class FailsAtStep(Regressor):
    def __init__(self, at: int | None):
        super().__init__()
        self.at = at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_on_exception_checkpoint_saves_on_failure_and_a_clean_run_removes_it(tmp_path):
    with pytest.raises(ValueError, match="filename cannot be empty"):
        OnExceptionCheckpoint(tmp_path, filename="")
    cb = OnExceptionCheckpoint(tmp_path / "ck")
    assert cb.ckpt_path == os.path.join(tmp_path / "ck", "on_exception.ckpt")
    data = DataLoader(regression_data(32), batch_size=4)
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, [cb], max_epochs=1).fit(FailsAtStep(3), data)
    assert torch.load(cb.ckpt_path, weights_only=True)["global_step"] == 3
    trainer = _trainer(tmp_path, [cb], max_steps=5)
    trainer.fit(FailsAtStep(None), data, ckpt_path=cb.ckpt_path)  # resumes from it, then ends cleanly
    assert trainer.global_step == 5 and not os.path.exists(cb.ckpt_path)
