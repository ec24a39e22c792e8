"""``~`` in checkpoint and logger folders is the user's home, where Lightning 2.6.6 writes too
(not a folder named ``~`` in the working directory)."""
from __future__ import annotations

import os

import distengine as de
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.loggers.csv_logger import CSVLogger
from distengine.loggers.tensorboard import TensorBoardLogger
from tests.checkpoint.test_checkpoint_versions import Tiny, _loader


class Logs(Tiny):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss


def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    cb = ModelCheckpoint(dirpath="~/ckpts", filename="{epoch}")
    assert cb.dirpath == str(home / "ckpts")  # Lightning: realpath(expanduser(dirpath))
    auto = ModelCheckpoint(monitor="train_loss")  # follows the first logger's folder
    trainer = de.Trainer(accelerator="cpu", max_epochs=1, callbacks=[cb, auto], default_root_dir="~/root",
                         logger=[CSVLogger("~/csv"), TensorBoardLogger("~/tb")], enable_progress_bar=False,
                         log_every_n_steps=1)
    assert trainer.default_root_dir == str(home / "root")
    trainer.fit(Logs(), _loader())
    assert os.listdir(cwd) == []
    assert sorted(os.listdir(home / "ckpts")) == ["epoch=0.ckpt", "last.json"]
    assert os.path.isfile(home / "csv" / "lightning_logs" / "version_0" / "metrics.csv")
    assert os.listdir(home / "tb" / "lightning_logs" / "version_0")
    assert auto.dirpath == str(home / "csv" / "lightning_logs" / "version_0" / "checkpoints")
