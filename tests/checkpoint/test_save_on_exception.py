"""ModelCheckpoint(save_on_exception=True): the state when a fit fails, under the filename template's
name (Lightning 2.6.6 gave the same files for these fits: see each test)."""
from __future__ import annotations

import os

import pytest
import torch

import distengine as de
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.checkpoint.io import read_last_pointer, safe_load
from tests.checkpoint.test_checkpoint_versions import Tiny, _files, _loader


class FailsAt(Tiny):
    def __init__(self, step):
        super().__init__()
        self.fail_at = step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at:
            raise RuntimeError("Trouble!")
        return super().training_step(batch, batch_idx)


def _failing_fit(folder, step, **kwargs):
    cb = ModelCheckpoint(dirpath=folder, save_on_exception=True, **kwargs)
    trainer = de.Trainer(accelerator="cpu", max_epochs=4, callbacks=[cb], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder))
    with pytest.raises(RuntimeError, match="Trouble!"):
        trainer.fit(FailsAt(step), _loader())  # 2 steps an epoch
    return cb


def test_the_failed_state_is_saved_under_the_template_name(tmp_path):
    _failing_fit(tmp_path, 3, filename="exception", every_n_epochs=7)
    # Lightning 2.6.6: [('exception.ckpt', global_step 3)]
    assert _files(tmp_path) == ["exception.ckpt"]
    assert safe_load(tmp_path / "exception.ckpt")["global_step"] == 3
    assert read_last_pointer(str(tmp_path)) == str(tmp_path / "exception.ckpt")  # fit(ckpt_path="last") finds it


def test_with_save_last_and_the_default_name(tmp_path):
    _failing_fit(tmp_path, 3, save_last=True)
    # Lightning 2.6.6: epoch=0-step=2 (2), epoch=1-step=3 (3), last.ckpt (3)
    assert _files(tmp_path) == ["epoch=0-step=2.ckpt", "epoch=1-step=3.ckpt", "last.ckpt"]
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 3


def test_nothing_when_no_step_ran_or_the_step_is_saved(tmp_path):
    _failing_fit(tmp_path / "a", 0, filename="x")
    assert _files(tmp_path / "a") == []  # Lightning 2.6.6: nothing before the first step
    _failing_fit(tmp_path / "b", 3, filename="{epoch}", every_n_train_steps=1)
    assert _files(tmp_path / "b") == ["epoch=1.ckpt"]  # saved at step 3 already: no second file


def test_a_name_in_use_is_not_overwritten(tmp_path):
    torch.save({"mine": 1}, tmp_path / "exception.ckpt")
    _failing_fit(tmp_path, 3, filename="exception", every_n_epochs=7)
    assert torch.load(tmp_path / "exception.ckpt") == {"mine": 1}
    assert safe_load(tmp_path / "exception-v1.ckpt")["global_step"] == 3
    assert os.path.exists(tmp_path / "exception-v1.ckpt")


def _rank_fails(rank, folder):
    torch.set_num_threads(1)
    cb = _failing_fit(folder, 3, filename="exception", every_n_epochs=7)
    return cb._last_global_step_saved


def test_two_ranks_that_fail_together_save_one_file(tmp_path):
    from tests.helpers import run_ranks

    torch.save({"mine": 1}, tmp_path / "exception.ckpt")  # rank 0 sees it: both ranks use -v1
    assert run_ranks(_rank_fails, 2, str(tmp_path), timeout=120) == [3, 3]
    assert _files(tmp_path) == ["exception-v1.ckpt", "exception.ckpt"]
    assert safe_load(tmp_path / "exception-v1.ckpt")["global_step"] == 3
