"""``test()``/``validate()`` without a model after ``fit`` evaluate the best checkpoint of that fit, as
Lightning 2.6.6 does (checked by hand against it with the same script: the same file, the same loss,
the same warning; with no ModelCheckpoint both raise a ValueError)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de


class _Module(de.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _data():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    val = TensorDataset(x[:16] * 3, y[:16] * 3)
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(val, batch_size=16)


def _trainer(tmp_path, **kw):
    return de.Trainer(max_epochs=4, default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", devices=1, **kw)


def test_test_without_a_model_evaluates_the_best_checkpoint(tmp_path):
    train, val = _data()
    ckpt = de.callbacks.ModelCheckpoint(monitor="val_loss", mode="max")  # the worst epoch: not the last weights
    trainer = _trainer(tmp_path, callbacks=[ckpt])
    module = _Module()
    trainer.fit(module, train, val)
    last = trainer.test(module, dataloaders=val, verbose=False)[0]["test_loss"]  # a model given: its weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = trainer.test(dataloaders=val, verbose=False)[0]["test_loss"]
    assert ckpt.best_model_path.endswith("epoch=0-step=4.ckpt")
    best = _Module()
    best.load_state_dict(torch.load(ckpt.best_model_path, weights_only=True)["state_dict"])
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(best.layer(val.dataset.tensors[0]), val.dataset.tensors[1])
    assert got == pytest.approx(float(expected), rel=1e-6) and got != pytest.approx(last)
    assert trainer.ckpt_path == ckpt.best_model_path
    assert any("best model of the previous `fit`" in str(w.message) for w in caught)


def test_without_a_checkpoint_callback_it_is_an_error(tmp_path):
    train, val = _data()
    trainer = _trainer(tmp_path, enable_checkpointing=False)
    trainer.fit(_Module(), train)
    with pytest.raises(ValueError, match="needs a ModelCheckpoint"):
        trainer.test(dataloaders=val, verbose=False)
