"""Issue 10: the Lightning API real scripts hit first, 1.x entry points and flags, and the
logging details that differed silently from pytorch-lightning 2.6.6.

The expected step indices and tags were measured with pytorch-lightning 2.6.6 (and 1.9.5 for
the 1.x flags) on the same model and data; the README ("Coming from Lightning") lists them.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as pl
from tests.helpers import run_ranks


def _data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


class Net(pl.LightningModule):
    def __init__(self, lr: float = 0.01):
        super().__init__()
        self.lr = lr
        self.layer = torch.nn.Linear(4, 1)

    def _loss(self, batch):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("tplain", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("val_loss", loss, on_step=True, on_epoch=True)
        self.log("vplain", loss)

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch), on_step=True, on_epoch=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Recording(Net):
    def __init__(self):
        super().__init__()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss))
        return loss


def _trainer(tmp_path, **kw) -> pl.Trainer:
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("enable_model_summary", False)
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(default_root_dir=str(tmp_path), **kw)


def _scalars(root) -> dict[str, list[int]]:
    """Every scalar tag of every event file under ``root`` -> its steps (files in write order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[int]] = {}
    for f in sorted(glob.glob(os.path.join(str(root), "**", "events.out.tfevents*"), recursive=True)):
        acc = EventAccumulator(f)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return out


def _values(root, tag) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = []
    for f in sorted(glob.glob(os.path.join(str(root), "**", "events.out.tfevents*"), recursive=True)):
        acc = EventAccumulator(f)
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out += [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


# ============================================================== B. logging, as in Lightning 2.6.6
def _fit_and_eval(tmp_path):
    """2 epochs of 8 batches, log_every_n_steps=5, 4 validation batches per epoch (the script
    the figures below were measured with, under pytorch-lightning 2.6.6)."""
    ds = _data()
    trainer = _trainer(tmp_path, max_epochs=2, log_every_n_steps=5)
    model = Net()
    trainer.fit(model, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=16))
    return trainer, model


def test_train_step_and_epoch_indices_match_lightning(tmp_path):
    _fit_and_eval(tmp_path)
    got = _scalars(tmp_path)
    # 2.6.6: step values go to step global_step - 1; epoch-end values (train and the
    # validation run at the epoch end) to the last step of the epoch, 7 and 15
    assert got["train_loss_step"] == [4, 9, 14]
    assert got["tplain"] == [4, 9, 14]
    assert got["train_loss_epoch"] == [7, 15]
    assert got["val_loss_epoch"] == [7, 15] and got["vplain"] == [7, 15]
    assert sorted(got["epoch"]) == [4, 7, 7, 9, 14, 15, 15]
    # the values are real: the epoch scalar says which epoch each write belongs to
    assert [v for _, v in sorted(_values(tmp_path, "epoch"))] == [0, 0, 0, 1, 1, 1, 1]


def test_eval_on_step_values_reach_the_loggers(tmp_path):
    trainer, model = _fit_and_eval(tmp_path)
    got = _scalars(tmp_path)
    # 2.6.6: one `val_loss_step` per validation batch, at a batch counter that runs on across
    # the validation runs of one fit (4 batches per run), with no `epoch` scalar beside it
    assert got["val_loss_step"] == list(range(8))
    trainer.test(model, DataLoader(_data(), batch_size=16), verbose=False)
    got = _scalars(tmp_path)
    assert got["test_loss_step"] == [0, 1, 2, 3]  # a new count for each test() call
    assert got["test_loss_epoch"] == [16]  # outside fit: at global_step
    # the per-batch values are the losses of those batches (batch 0 of the test set)
    first = _values(tmp_path, "test_loss_step")[0][1]
    x, y = _data()[:16]
    assert first == pytest.approx(float(torch.nn.functional.mse_loss(model.layer(x), y)), rel=1e-5)


def test_callback_metrics_hold_only_the_last_stage(tmp_path):
    trainer, model = _fit_and_eval(tmp_path)
    assert {"train_loss", "train_loss_step", "val_loss", "tplain"} <= set(trainer.callback_metrics)
    trainer.test(model, DataLoader(_data(), batch_size=16), verbose=False)
    # 2.6.6: after test(), only what test logged
    assert sorted(trainer.callback_metrics) == ["test_loss", "test_loss_epoch"]
    assert sorted(trainer.logged_metrics) == ["test_loss_epoch", "test_loss_step"]
    trainer.validate(model, DataLoader(_data(), batch_size=16), verbose=False)
    assert sorted(trainer.callback_metrics) == ["val_loss", "val_loss_epoch", "vplain"]
    trainer.predict(model, DataLoader(_data(), batch_size=16))
    assert trainer.callback_metrics == {}


def test_a_run_shorter_than_log_every_n_steps_still_writes_its_train_loss(tmp_path):
    ds = _data(46 * 2)
    trainer = _trainer(tmp_path, max_epochs=2, log_every_n_steps=50)
    model = Recording()
    trainer.fit(model, DataLoader(ds, batch_size=2))
    got = _scalars(tmp_path)
    # 46 steps per epoch: Lightning 2.6.6 writes step 49 only (and warns); distengine also
    # writes the last step of the first epoch (45): nothing had been written before it
    assert got["train_loss_step"] == [45, 49]
    assert got["tplain"] == [45, 49]
    assert got["train_loss_epoch"] == [45, 91]
    # the value at 45 is the loss of the last batch of epoch 0, not a stale one
    assert dict(_values(tmp_path, "tplain"))[45] == pytest.approx(model.losses[45], rel=1e-6)


def test_max_steps_shorter_than_log_every_n_steps_writes_the_last_step(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3, log_every_n_steps=50)
    trainer.fit(Net(), DataLoader(_data(), batch_size=8))
    assert _scalars(tmp_path)["train_loss_step"] == [2]
    assert float(trainer.callback_metrics["tplain"]) == pytest.approx(_values(tmp_path, "tplain")[0][1])


def test_last_step_of_an_epoch_is_not_written_twice(tmp_path):
    ds = _data(64)
    trainer = _trainer(tmp_path, max_epochs=2, log_every_n_steps=4)
    trainer.fit(Net(), DataLoader(ds, batch_size=8))  # 8 steps per epoch: 3, 7, 11, 15
    assert _scalars(tmp_path)["train_loss_step"] == [3, 7, 11, 15]
