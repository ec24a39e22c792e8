"""The ``Checkpoint`` base class (ordering, isinstance) and ``RichModelSummary``."""
from __future__ import annotations

import subprocess
import sys

import pytest

from distengine.callbacks import Checkpoint, ModelCheckpoint, OnExceptionCheckpoint, RichModelSummary
from distengine.callbacks.base import Callback
from tests.callbacks.test_with_trainer import Model, loader, make_trainer


def test_checkpoint_callbacks_are_checkpoints(tmp_path):
    assert isinstance(ModelCheckpoint(dirpath=str(tmp_path)), Checkpoint)
    assert isinstance(OnExceptionCheckpoint(str(tmp_path)), Checkpoint)


def test_a_custom_checkpoint_runs_after_the_other_callbacks(tmp_path):
    order = []

    class Saver(Checkpoint):
        def on_train_epoch_end(self, trainer, module):
            order.append("saver")
            trainer.save_checkpoint(str(tmp_path / f"e{trainer.current_epoch}.ckpt"))

    class Other(Callback):
        def on_train_epoch_end(self, trainer, module):
            order.append("other")

    trainer = make_trainer(max_epochs=2, callbacks=[Saver(), Other()], limit_val_batches=0)
    trainer.fit(Model(), loader())
    assert order == ["other", "saver"] * 2, "a Checkpoint runs after the callbacks given after it"
    assert (tmp_path / "e1.ckpt").is_file()


def test_rich_model_summary_prints_a_table(capsys):
    trainer = make_trainer(max_epochs=1, callbacks=[RichModelSummary(max_depth=1)], limit_val_batches=0)
    assert sum(isinstance(c, RichModelSummary) for c in trainer.callbacks) == 1
    trainer.fit(Model(), loader())
    out = capsys.readouterr().out
    assert "lin" in out and "Linear" in out and "Trainable params" in out and "3" in out
    assert "Name | Type" not in out, "the rich table replaces the plain one (no default ModelSummary)"


def test_rich_model_summary_without_rich_fails_as_lightning_does():
    code = ("import sys; sys.modules['rich'] = None\n"
            "from distengine.callbacks import RichModelSummary\n"
            "RichModelSummary()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "ModuleNotFoundError: `RichModelSummary` requires `rich` to be installed" in proc.stderr


def test_rich_model_summary_bad_depth():
    with pytest.raises(ValueError, match="max_depth"):
        RichModelSummary(max_depth=-2)
