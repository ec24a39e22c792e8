"""trainer.state / ckpt_path / interrupted (issue 26; the values at each hook are compared with
Lightning in tests/conformance/test_trainer_api.py)."""
from __future__ import annotations

import pytest
import torch

from distengine.callbacks import ModelCheckpoint
from distengine.trainer_states import RunningStage, TrainerFn, TrainerStatus
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


def test_ckpt_path_setter_is_loaded_by_the_next_call(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True,
                            callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ck"))])
    model = Regressor()
    trainer.fit(model, loader(regression_data()))
    saved = trainer.checkpoint_callback.best_model_path
    trained = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert trainer.ckpt_path is None  # the fit loaded nothing
    trainer.ckpt_path = saved
    trainer.validate(model, loader(regression_data(32)), verbose=False)
    assert trainer.ckpt_path == saved
    assert all(torch.equal(a, b) for a, b in zip(trained, model.parameters()))
    assert trainer.state.fn == TrainerFn.VALIDATING and trainer.state.finished and trainer.state.stage is None


def test_an_error_leaves_the_trainer_interrupted(tmp_path):
    class Fails(Regressor):
        def training_step(self, batch, batch_idx):
            assert self.trainer.state.stage == RunningStage.TRAINING
            raise KeyError("boom")

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    assert trainer.state.status == TrainerStatus.INITIALIZING and not trainer.interrupted
    with pytest.raises(KeyError):
        trainer.fit(Fails(), loader(regression_data()))
    assert trainer.interrupted and trainer.state.status == TrainerStatus.INTERRUPTED and trainer.state.stopped
