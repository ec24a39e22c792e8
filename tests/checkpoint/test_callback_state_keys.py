"""Callback state lands under Lightning 2.6.6's keys (the strings below are what Lightning wrote for
the same callbacks); a checkpoint written by an earlier distengine, under its old key, still
restores; ``ModelCheckpoint.to_yaml``."""
from __future__ import annotations

import datetime
import os

import torch
import yaml

import distengine as de
from distengine.callbacks.early_stopping import EarlyStopping
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.checkpoint.io import safe_load
from tests.checkpoint.test_checkpoint_versions import Tiny, _loader

LIGHTNING_KEYS = {
    "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}",
    "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
    "'train_time_interval': None}",
    "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 3, 'every_n_epochs': 0, "
    "'train_time_interval': None}",
    "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 0, "
    "'train_time_interval': datetime.timedelta(seconds=3600)}",
}


class Validated(Tiny):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(1.0 / (1 + self.current_epoch)))


def _fit(folder, epochs, callbacks, ckpt_path=None):
    trainer = de.Trainer(accelerator="cpu", max_epochs=epochs, callbacks=callbacks, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder))
    trainer.fit(Validated(), _loader(), _loader(), ckpt_path=ckpt_path)


def test_state_keys_are_lightnings_and_to_yaml(tmp_path):
    cbs = [ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, filename="{epoch}"),
           ModelCheckpoint(dirpath=tmp_path / "s", every_n_train_steps=3),
           ModelCheckpoint(dirpath=tmp_path / "t", train_time_interval=datetime.timedelta(hours=1)),
           EarlyStopping("val_loss")]
    _fit(tmp_path, 3, cbs)
    assert set(safe_load(cbs[0].best_model_path)["callbacks"]) == LIGHTNING_KEYS
    cbs[0].to_yaml()
    # Lightning 2.6.6: {'epoch=1.ckpt': 0.5, 'epoch=2.ckpt': 0.3333333432674408}
    with open(tmp_path / "best_k_models.yaml") as f:
        written = yaml.safe_load(f)
    assert {os.path.basename(k): v for k, v in written.items()} == {"epoch=1.ckpt": 0.5,
                                                                    "epoch=2.ckpt": 0.3333333432674408}
    cbs[0].to_yaml(tmp_path / "other.yaml")
    assert os.path.isfile(tmp_path / "other.yaml")


def test_a_checkpoint_with_the_old_keys_still_restores(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=3, filename="{epoch}")
    stop = EarlyStopping("val_loss", mode="max", patience=5)
    _fit(tmp_path, 1, [cb, stop])
    path = cb.best_model_path
    ckpt = torch.load(path, weights_only=False)
    # the keys distengine wrote before it took Lightning's
    old = {"ModelCheckpoint{monitor='val_loss', mode='min', every_n_train_steps=0, every_n_epochs=1, "
           "train_time_interval=None}": ckpt["callbacks"].pop(cb.state_key),
           "EarlyStopping{'monitor': 'val_loss', 'mode': 'max'}": ckpt["callbacks"].pop(stop.state_key)}
    old[next(iter(old))]["best_k_models"] = {path: torch.tensor(1.0), str(tmp_path / "gone.ckpt"): torch.tensor(2.0)}
    ckpt["callbacks"] = old
    torch.save(ckpt, path)
    again = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=3, filename="{epoch}")
    stop2 = EarlyStopping("val_loss", mode="max", patience=5)
    _fit(tmp_path, 2, [again, stop2], ckpt_path=path)
    assert str(tmp_path / "gone.ckpt") in again.best_k_models  # restored from the old key
    assert stop2.wait_count == 1  # 1.0 then 0.5 in max mode: one epoch without improvement since the restore
