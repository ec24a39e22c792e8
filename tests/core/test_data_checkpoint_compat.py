"""Lightning parity for loaders without a length, checkpoint folders and files, and 1.x idioms
(issue 10 items 2, 3, 4, 8, 9 and the checkpoint differences). Every expected value below was
measured with pytorch-lightning 2.6.6 (1.9.5 where the test says so)."""
from __future__ import annotations

import argparse
import io
import os

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import distengine as de
from distengine.callbacks import ModelCheckpoint, TQDMProgressBar
from distengine.checkpoint.io import read_last_pointer, safe_load
from distengine.loggers import CSVLogger, TensorBoardLogger


class Stream(IterableDataset):
    """``n`` samples of 4 features, no ``__len__``."""

    def __init__(self, n: int = 16) -> None:
        self.n = n

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(self.n):
            yield torch.randn(4, generator=g)


class Tiny(de.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.epoch_ends = 0
        self.val_batches = 0
        self.val_runs = 0

    def training_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.lin(x).pow(2).mean()

    def on_train_epoch_end(self):
        self.epoch_ends += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TinyVal(Tiny):
    def validation_step(self, batch, batch_idx):
        self.val_batches += 1
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.log("val_loss", self.lin(x).pow(2).mean())

    def on_validation_epoch_end(self):
        self.val_runs += 1


def _trainer(tmp_path, **kw):
    for key, value in dict(accelerator="cpu", logger=False, enable_progress_bar=False,
                           enable_model_summary=False, num_sanity_val_steps=0).items():
        kw.setdefault(key, value)
    return de.Trainer(default_root_dir=str(tmp_path), **kw)


def _tensors(n=8):
    return DataLoader(TensorDataset(torch.randn(n, 4)), batch_size=4)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if "tfevents" not in f)


# ----------------------------------------------------------------------------- item 2: no __len__
def test_iterable_dataset_trains_every_epoch(tmp_path):
    # Lightning 2.6.6: current_epoch 3, global_step 12, on_train_epoch_end 3 times,
    # checkpoints/epoch=2-step=12.ckpt
    model = Tiny()
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, DataLoader(Stream(16), batch_size=4))
    assert (trainer.current_epoch, trainer.global_step, model.epoch_ends) == (3, 12, 3)
    assert trainer.num_training_batches == float("inf")
    assert "checkpoints/epoch=2-step=12.ckpt" in _files(tmp_path)


@pytest.mark.parametrize("flags, expected", [
    ({}, dict(step=8, val_batches=8, val_runs=2, ntb=float("inf"), nvb=[float("inf")], esb=-1)),
    ({"val_check_interval": 2}, dict(step=8, val_batches=16, val_runs=4)),
    ({"limit_train_batches": 2}, dict(step=4, val_batches=8, ntb=2, esb=4)),
    ({"limit_val_batches": 2}, dict(step=8, val_batches=4, nvb=[2])),
    ({"limit_train_batches": 1.0, "limit_val_batches": 1.0}, dict(step=8, val_batches=8)),
    ({"max_steps": 5}, dict(step=5, esb=5)),
    ({"val_check_interval": 0.5}, "val_check_interval=0.5 is a fraction"),
    ({"limit_train_batches": 0.5}, "limit_train_batches=0.5 is a fraction"),
    ({"limit_val_batches": 0.5}, "limit_val_batches=0.5 is a fraction"),
])
def test_iterable_dataset_lengths_as_lightning(tmp_path, flags, expected):
    model = TinyVal()
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=False, **flags)
    train, val = DataLoader(Stream(16), batch_size=4), DataLoader(Stream(16), batch_size=4)
    if isinstance(expected, str):  # Lightning: a MisconfigurationException for a fraction
        with pytest.raises(ValueError, match=expected):
            trainer.fit(model, train, val)
        return
    trainer.fit(model, train, val)
    got = dict(step=trainer.global_step, val_batches=model.val_batches, val_runs=model.val_runs,
               ntb=trainer.num_training_batches, nvb=trainer.num_val_batches,
               esb=trainer.estimated_stepping_batches)
    assert {k: got[k] for k in expected} == expected


def test_iterable_dataset_steps_on_an_unfinished_accumulation(tmp_path):
    # 5 batches, accumulate_grad_batches=2: Lightning 2.6.6 steps 3 times per epoch (the last
    # batch is known in advance), as it does for a loader with a length
    trainer = _trainer(tmp_path, max_epochs=2, accumulate_grad_batches=2, enable_checkpointing=False)
    trainer.fit(Tiny(), DataLoader(Stream(20), batch_size=4))
    assert trainer.global_step == 6


def test_iterable_dataset_progress_bar_counts_batches(tmp_path):
    out = io.StringIO()
    trainer = _trainer(tmp_path, max_epochs=2, enable_checkpointing=False, enable_progress_bar=True,
                       callbacks=[TQDMProgressBar(plain=True, file=out)])
    trainer.fit(Tiny(), DataLoader(Stream(16), batch_size=4))
    lines = out.getvalue().splitlines()
    assert any(line.startswith("Epoch 1 done: 4 batches") for line in lines), lines


# ----------------------------------------------------------------------------- item 3
def test_validation_loader_without_validation_step_saves_every_epoch(tmp_path):
    # Lightning 2.6.6: num_val_batches [], checkpoints epoch=0-step=2.ckpt and epoch=1-step=4.ckpt
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(save_top_k=-1)])
    trainer.fit(Tiny(), _tensors(), _tensors())
    assert trainer.num_val_batches == []
    ckpts = [f for f in _files(tmp_path) if f.endswith(".ckpt")]
    assert ckpts == ["checkpoints/epoch=0-step=2.ckpt", "checkpoints/epoch=1-step=4.ckpt"]


# ----------------------------------------------------------------------------- item 4
def test_checkpoint_callback_object_is_honoured(tmp_path):
    # Lightning 1.0-1.2 appended a ModelCheckpoint passed as checkpoint_callback to the
    # callbacks (1.9.5 no longer has the flag: TypeError)
    cb = ModelCheckpoint(dirpath=str(tmp_path / "mine"), monitor="val_loss", save_top_k=2,
                         filename="{epoch}")
    trainer = _trainer(tmp_path, max_epochs=3, checkpoint_callback=cb)
    assert trainer.checkpoint_callback is cb and trainer.checkpoint_callbacks == [cb]
    trainer.fit(TinyVal(), _tensors(), _tensors())
    assert len(os.listdir(tmp_path / "mine")) == 3  # two kept by top-k, and last.json
    assert cb.best_model_path.startswith(str(tmp_path / "mine"))


@pytest.mark.parametrize("value, count", [(False, 0), (True, 1), (None, 1)])
def test_checkpoint_callback_bool(tmp_path, value, count):
    trainer = _trainer(tmp_path, checkpoint_callback=value)
    assert len(trainer.checkpoint_callbacks) == count


def test_checkpoint_callback_object_with_enable_checkpointing_false_is_refused(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_callback"):
        _trainer(tmp_path, checkpoint_callback=ModelCheckpoint(), enable_checkpointing=False)


# ----------------------------------------------------------------------------- item 8
class NamespaceModel(Tiny):
    """The 0.x/1.x style: ``self.hparams = hparams`` with an argparse Namespace."""

    def __init__(self, hparams):
        super().__init__()
        self.hparams = hparams
        self.lin = torch.nn.Linear(4, hparams.out)


class SavedNamespaceModel(Tiny):
    def __init__(self, args):
        super().__init__()
        self.save_hyperparameters(args)
        assert isinstance(args, argparse.Namespace)  # load_from_checkpoint hands back a Namespace
        self.lin = torch.nn.Linear(4, args.out)


@pytest.mark.parametrize("cls", [NamespaceModel, SavedNamespaceModel])
def test_namespace_hparams_round_trip(tmp_path, cls):
    model = cls(argparse.Namespace(lr=0.1, out=1))
    assert model.hparams.lr == 0.1 and model.hparams["out"] == 1
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _tensors())
    path = trainer.checkpoint_callback.best_model_path
    # Lightning 1.9.5 and 2.6.6 store the dict and the name of the __init__ argument
    ckpt = safe_load(path)
    assert ckpt["hyper_parameters"] == {"lr": 0.1, "out": 1}
    assert ckpt["hparams_name"] == ("hparams" if cls is NamespaceModel else "args")
    loaded = cls.load_from_checkpoint(path)
    assert loaded.hparams.lr == 0.1
    assert torch.equal(loaded.lin.weight, model.lin.weight)
    assert cls.load_from_checkpoint(path, out=1, lr=0.5).hparams.lr == 0.5  # overrides


def test_hparams_setter_takes_a_dict(tmp_path):
    model = Tiny()
    model.hparams = {"a": 1}
    assert model.hparams.a == 1


# ----------------------------------------------------------------------------- item 9
class OneXEpochEnd(TinyVal):
    def validation_step(self, batch, batch_idx):
        return {"val_loss": self.lin(batch[0]).pow(2).mean()}

    def validation_epoch_end(self, outputs):
        avg = torch.stack([o["val_loss"] for o in outputs]).mean()
        return {"val_loss": avg, "log": {"val_loss": avg}, "progress_bar": {"val_loss": avg}}


def test_epoch_end_key_in_log_and_progress_bar_reaches_the_bar(tmp_path):
    out = io.StringIO()
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False, enable_progress_bar=True,
                       callbacks=[TQDMProgressBar(plain=True, file=out)])
    trainer.fit(OneXEpochEnd(), _tensors(), _tensors())
    assert "val_loss" in trainer.progress_bar_metrics
    assert "val_loss" in trainer.logged_metrics
    line = next(x for x in out.getvalue().splitlines() if x.startswith("Epoch 0 done"))
    assert "val_loss=" in line, line


# ----------------------------------------------------------------------------- checkpoint folder
@pytest.mark.parametrize("make_logger, folder", [
    (lambda d: True, "root/lightning_logs/version_0/checkpoints"),
    (lambda d: False, "root/checkpoints"),
    (lambda d: TensorBoardLogger(os.path.join(d, "tbs"), name="exp", version=3), "tbs/exp/version_3/checkpoints"),
    (lambda d: TensorBoardLogger(os.path.join(d, "tbs"), name="", version="v"), "tbs/v/checkpoints"),
    (lambda d: CSVLogger(os.path.join(d, "csvs"), name="c"), "csvs/c/version_0/checkpoints"),
    (lambda d: [CSVLogger(os.path.join(d, "csvs"), name="c"), TensorBoardLogger(os.path.join(d, "tbs"))],
     "csvs/c/version_0/checkpoints"),
])
def test_checkpoint_folder_follows_the_first_logger(tmp_path, make_logger, folder):
    trainer = _trainer(tmp_path / "root", max_epochs=2, logger=make_logger(str(tmp_path)))
    trainer.fit(Tiny(), _tensors())
    assert trainer.checkpoint_callback.dirpath == str(tmp_path / folder)
    assert os.path.isfile(tmp_path / folder / "epoch=1-step=4.ckpt")


def test_resume_last_finds_the_previous_version(tmp_path):
    # a restarted job's logger picks a new version; "last" still finds the previous run's file,
    # and the resumed run goes on in that run's own version folder (tests/checkpoint/test_resume_folder.py)
    first = _trainer(tmp_path, max_epochs=1, logger=True)
    first.fit(Tiny(), _tensors())
    second = _trainer(tmp_path, max_epochs=2, logger=True)
    assert second.logger.version == 1
    second.fit(Tiny(), _tensors(), ckpt_path="last")
    assert second.global_step == 4 and second.logger.version == 0
    assert os.path.isfile(tmp_path / "lightning_logs/version_0/checkpoints/epoch=1-step=4.ckpt")
    assert not os.path.exists(tmp_path / "lightning_logs/version_1")


# ----------------------------------------------------------------------------- last.ckpt
def test_save_last_writes_last_ckpt(tmp_path):
    # Lightning 2.6.6: checkpoints/epoch=1-step=4.ckpt and checkpoints/last.ckpt
    cb = ModelCheckpoint(save_last=True)
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[cb])
    model = Tiny()
    trainer.fit(model, _tensors())
    folder = tmp_path / "checkpoints"
    assert sorted(os.listdir(folder)) == ["epoch=1-step=4.ckpt", "last.ckpt", "last.json"]
    last = safe_load(folder / "last.ckpt")
    assert last["global_step"] == 4 and torch.equal(last["state_dict"]["lin.weight"], model.lin.weight)
    assert read_last_pointer(folder) == str(folder / "epoch=1-step=4.ckpt")
    # resuming from the file itself works, as in Lightning
    again = _trainer(tmp_path, max_epochs=3, callbacks=[ModelCheckpoint(save_last=True)])
    again.fit(Tiny(), _tensors(), ckpt_path=str(folder / "last.ckpt"))
    assert again.global_step == 6 and safe_load(folder / "last.ckpt")["global_step"] == 6


def test_last_ckpt_is_not_a_top_k_candidate(tmp_path):
    cb = ModelCheckpoint(save_last=True, save_top_k=-1)
    _trainer(tmp_path, max_epochs=2, callbacks=[cb]).fit(Tiny(), _tensors())
    assert sorted(os.path.basename(p) for p in cb.best_k_models) == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"]
    # last.ckpt is the same file as the newest one (a hard link where the file system has them)
    assert os.path.samefile(tmp_path / "checkpoints" / "last.ckpt", cb.last_model_path)


# ----------------------------------------------------------------------------- best_model_score
def test_best_model_score_is_a_tensor(tmp_path):
    # Lightning 2.6.6: best_model_score tensor(4), current_score tensor(4), best_k_models values tensors
    cb = ModelCheckpoint(monitor="step", mode="max")
    _trainer(tmp_path, max_epochs=2, callbacks=[cb]).fit(Tiny(), _tensors())
    assert isinstance(cb.best_model_score, torch.Tensor) and cb.best_model_score.item() == 4
    assert isinstance(cb.current_score, torch.Tensor)
    assert all(isinstance(v, torch.Tensor) for v in cb.best_k_models.values())
    state = cb.state_dict()
    fresh = ModelCheckpoint(monitor="step", mode="max")
    fresh.load_state_dict(state)
    assert isinstance(fresh.best_model_score, torch.Tensor)
    old_style = dict(state, best_model_score=4.0, current_score=4.0)  # written by an older distengine
    fresh.load_state_dict(old_style)
    assert isinstance(fresh.best_model_score, torch.Tensor) and fresh.best_model_score.item() == 4.0


# ----------------------------------------------------------------------------- hparams.yaml
def test_hparams_yaml_without_hyperparameters(tmp_path):
    # Lightning 2.6.6: TensorBoardLogger writes hparams.yaml "{}\n"; CSVLogger writes none
    tb = TensorBoardLogger(str(tmp_path / "tb"))
    _trainer(tmp_path, max_epochs=1, logger=tb).fit(Tiny(), _tensors())
    with open(os.path.join(tb.log_dir, "hparams.yaml")) as f:
        assert f.read() == "{}\n"
    csv = CSVLogger(str(tmp_path / "csv"))
    _trainer(tmp_path, max_epochs=1, logger=csv).fit(Tiny(), _tensors())
    assert not os.path.exists(os.path.join(csv.log_dir, "hparams.yaml"))
