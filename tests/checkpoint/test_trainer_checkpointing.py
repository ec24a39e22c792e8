"""ModelCheckpoint and the checkpoint files driven by the real Trainer (one process)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.checkpoint.io import read_last_pointer, safe_load
from distengine.loggers.base import Logger
from tests.core.models import Regressor


class Reg(Regressor):
    def __init__(self, hidden: int = 4) -> None:
        # SGD with momentum at a step size where val_loss goes up and down between epochs
        # (so the best checkpoint is not the last)
        super().__init__(torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(),
                                             torch.nn.Linear(hidden, 1)), lr=0.2, optimizer="sgd")
        self.save_hyperparameters()


class Memory(Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def _loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]])).tanh()
    return (DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
            DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8))


def _trainer(tmp_path, callbacks, logger=None, epochs=6, **kw):
    return de.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=str(tmp_path),
                      callbacks=callbacks, logger=logger or False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.mark.parametrize("async_save", [False, True])
def test_top_k_by_val_loss_with_the_trainer(tmp_path, async_save):
    de.seed_everything(3)
    ckpt = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2,
                           filename="{epoch}-{step}-{val_loss:.4f}", async_save=async_save)
    logger = Memory()
    trainer = _trainer(tmp_path, [ckpt], logger)
    trainer.fit(Reg(), *_loaders())
    vals = [(step, m["val_loss"]) for step, m in logger.rows if "val_loss" in m]
    assert len(vals) == 6
    # logged under the batch index (Lightning's): the value at index i is that of global step i + 1
    best2 = [(i + 1, v) for i, v in sorted(vals, key=lambda sv: sv[1])[:2]]
    expected = sorted(f"epoch={step // 4 - 1}-step={step}-val_loss={v:.4f}.ckpt" for step, v in best2)
    folder = Path(tmp_path) / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == expected
    assert ckpt.best_model_score == pytest.approx(best2[0][1])
    # last.json points at the newest file written (a top-2 one, since save_last is off)
    assert read_last_pointer(folder) == ckpt.last_model_path
    state = safe_load(ckpt.best_model_path)
    assert state["global_step"] == best2[0][0]
    restored = Reg.load_from_checkpoint(ckpt.best_model_path)
    assert restored.hparams["hidden"] == 4
    for k, v in state["state_dict"].items():
        assert torch.equal(restored.state_dict()[k], v)


def test_default_trainer_keeps_the_last_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, [], epochs=2)
    model = Reg(hidden=5)
    trainer.fit(model, _loaders()[0])
    folder = Path(tmp_path) / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["epoch=1-step=8.ckpt"]
    assert read_last_pointer(folder) == str(folder / "epoch=1-step=8.ckpt")
    again = Reg.load_from_checkpoint(folder / "epoch=1-step=8.ckpt")
    assert again.hparams["hidden"] == 5
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_last_falls_back_when_newest_is_truncated(tmp_path, capfd):
    ckpt = ModelCheckpoint(save_top_k=-1)
    _trainer(tmp_path, [ckpt], epochs=2).fit(Reg(), _loaders()[0])
    folder = Path(tmp_path) / "checkpoints"
    newest = folder / "epoch=1-step=8.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])
    trainer = _trainer(tmp_path, [ModelCheckpoint(save_top_k=-1)], epochs=3)
    with pytest.warns(UserWarning, match="epoch=0-step=4.ckpt") as rec:
        trainer.fit(Reg(), _loaders()[0], ckpt_path="last")
    assert any("truncated or corrupt" in str(w.message) for w in rec)
    assert "resumed from" in capfd.readouterr().err
    assert trainer.global_step == 12  # epochs 1 and 2 after the epoch-0 checkpoint


def test_last_with_nothing_saved_starts_fresh(tmp_path):
    trainer = _trainer(tmp_path, [], epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Reg(), _loaders()[0], ckpt_path="last")
    # Lightning's warning that no checkpoint is loaded; no fallback warning (nothing to fall back to)
    user = [str(w.message) for w in caught if w.category is UserWarning]
    assert len(user) == 1 and user[0].startswith("ckpt_path='last' found no checkpoint in"), user
    assert trainer.global_step == 4
    assert os.path.exists(Path(tmp_path) / "checkpoints" / "last.json")


class AdamReg(Reg):
    """The same model; configure_optimizers now returns Adam instead of SGD."""

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class TwoGroupReg(Reg):
    """The same model and optimizer class, but the parameters split into two groups."""

    def configure_optimizers(self):
        first, second = list(self.net[0].parameters()), list(self.net[2].parameters())
        return torch.optim.SGD([{"params": first}, {"params": second, "lr": 0.01}], lr=0.2, momentum=0.9)


def _sgd_checkpoint(tmp_path, strip_class_names=False) -> Path:
    """Train 2 epochs with SGD; return the last checkpoint (as an older release wrote it, if asked)."""
    _trainer(tmp_path, None, epochs=2).fit(Reg(), *_loaders())
    path = Path(read_last_pointer(tmp_path / "checkpoints"))
    if strip_class_names:
        ckpt = safe_load(path)
        ckpt.pop("optimizer_classes", None)
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("module_cls, old_file, expected", [
    (AdamReg, False, r"saved with the optimizer SGD but configure_optimizers now returns Adam"),
    (AdamReg, True, r"lacks \['amsgrad', 'betas', 'eps'\], which Adam needs"),
    (TwoGroupReg, False, r"parameter groups of \[4\] parameters, but configure_optimizers now builds "
                         r"groups of \[2, 2\]"),
])
def test_resume_with_another_optimizer_is_refused_before_announcing_it(tmp_path, capfd, module_cls,
                                                                       old_file, expected):
    path = _sgd_checkpoint(tmp_path, strip_class_names=old_file)
    capfd.readouterr()
    module = module_cls()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = _trainer(tmp_path, None, epochs=4)
    with pytest.raises(RuntimeError, match=expected) as info:
        trainer.fit(module, *_loaders(), ckpt_path="last")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "load_from_checkpoint" in message
    assert "resumed from" not in capfd.readouterr().err
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters())), "nothing was restored"
