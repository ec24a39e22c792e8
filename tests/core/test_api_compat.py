"""Issue 10: the Lightning API real scripts hit first, 1.x entry points and flags, and the
logging details that differed silently from pytorch-lightning 2.6.6.

The expected step indices and tags were measured with pytorch-lightning 2.6.6 (and 1.9.5 for
the 1.x flags) on the same model and data; docs/lightning.md ("Coming from Lightning") lists them.
"""
from __future__ import annotations

import argparse
import glob
import os
import warnings

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
    with torch.no_grad():
        want = float(torch.nn.functional.mse_loss(model.layer(x), y))
    assert first == pytest.approx(want, rel=1e-5)


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


def test_every_epoch_end_of_a_short_run_writes_its_last_step(tmp_path):
    # 4 epochs of 8 steps, log_every_n_steps=50 (the default): one point per epoch end, at the
    # epoch's last step, with that step's loss (it used to be one point, at 7, for the whole run;
    # Lightning 2.6.6 writes none). 3 epochs of 20 with 50: the flushes stop at the first
    # regular write (49), so the third epoch end adds nothing.
    trainer = _trainer(tmp_path / "a", max_epochs=4)
    model = Recording()
    trainer.fit(model, DataLoader(_data(), batch_size=8))
    got = _scalars(tmp_path / "a")
    assert got["tplain"] == [7, 15, 23, 31] and got["train_loss_step"] == [7, 15, 23, 31]
    assert [v for _, v in _values(tmp_path / "a", "tplain")] == pytest.approx(
        [model.losses[i] for i in (7, 15, 23, 31)], rel=1e-6)
    trainer = _trainer(tmp_path / "b", max_epochs=3)
    trainer.fit(Net(), DataLoader(_data(160), batch_size=8))
    assert _scalars(tmp_path / "b")["tplain"] == [19, 39, 49]


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


# ============================================================== A. distengine.utilities
def test_utilities_rank_zero_helpers_import_like_lightning():
    from distengine.utilities import rank_zero_debug, rank_zero_info, rank_zero_only, rank_zero_warn
    from distengine.utilities.rank_zero import rank_zero_only as same

    assert same is rank_zero_only is pl.utilities.rank_zero_only
    assert callable(rank_zero_info) and callable(rank_zero_debug) and callable(rank_zero_warn)
    assert rank_zero_only.rank == 0

    @rank_zero_only
    def answer():
        return 42

    assert answer() == 42
    rank_zero_only.rank = 1  # as scripts do by hand; the decorator compares it
    try:
        assert answer() is None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rank_zero_warn("only rank zero says this")
        assert caught == []
    finally:
        rank_zero_only.rank = None
    assert answer() == 42
    with pytest.warns(UserWarning, match="careful"):
        rank_zero_warn("careful")


def test_import_distengine_and_utilities_stays_free_of_torch():
    import subprocess
    import sys

    code = "import sys, distengine, distengine.utilities; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_the_optional_packages_load_only_when_a_run_uses_them():
    """`import distengine` and the classes a script names must not import torchmetrics,
    jsonargparse, rich, mlflow, wandb or comet_ml (import cost; they are optional extras)."""
    import subprocess
    import sys

    code = ("import sys, distengine as de\n"
            "de.Trainer, de.Module, de.callbacks.ModelCheckpoint, de.callbacks.StochasticWeightAveraging\n"
            "de.callbacks.BackboneFinetuning, de.callbacks.LearningRateFinder\n"
            "de.callbacks.ThroughputMonitor, de.callbacks.ModelPruning\n"
            "for name in ('RichProgressBar',):\n"
            "    getattr(de.callbacks, name, None)\n"
            "for name in ('MLFlowLogger', 'WandbLogger', 'CometLogger'):\n"
            "    getattr(de.loggers, name, None)\n"
            "import importlib.util\n"
            "if importlib.util.find_spec('distengine.cli'): import distengine.cli\n"
            "if importlib.util.find_spec('distengine.profilers'): import distengine.profilers\n"
            "print(sorted(m for m in ('torchmetrics', 'jsonargparse', 'rich', 'mlflow', 'wandb', 'comet_ml')\n"
            "             if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ============================================================== A. Module API
def test_freeze_unfreeze_dtype_on_gpu_loggers_print(tmp_path, capsys):
    model = Net()
    model.freeze()
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.float32 and model.double().dtype == torch.float64
    assert model.on_gpu is False and model.loggers == []
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model.float(), DataLoader(_data(), batch_size=8))
    assert model.loggers == trainer.loggers and len(model.loggers) == 1
    model.print("from rank zero")
    assert "from rank zero" in capsys.readouterr().out


def _gather_ranks(rank: int):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    model = Net()
    t = torch.full((3,), float(rank))
    stacked = model.all_gather(t)
    scalar = model.all_gather(rank + 1)
    nested = model.all_gather({"a": torch.tensor([rank, 10 * rank]), "b": [torch.tensor(rank * 1.0)]})
    x = torch.tensor([1.0 + rank], requires_grad=True)
    g = model.all_gather(x * 2, sync_grads=True)
    g.sum().backward()
    return stacked, scalar, nested, x.grad


def test_all_gather_stacks_across_two_ranks():
    for stacked, scalar, nested, grad in run_ranks(_gather_ranks, 2, timeout=120):
        assert torch.equal(stacked, torch.tensor([[0.0] * 3, [1.0] * 3]))
        assert torch.equal(scalar, torch.tensor([1, 2]))
        assert torch.equal(nested["a"], torch.tensor([[0, 0], [1, 10]]))
        assert torch.equal(nested["b"][0], torch.tensor([0.0, 1.0]))
        # the sum over both ranks' gathered copies flows back: d/dx of 2 * (2x) summed = 4
        assert torch.equal(grad, torch.tensor([4.0]))


def test_all_gather_outside_a_process_group_returns_the_data():
    t = torch.arange(3)
    assert Net().all_gather(t) is t
    assert torch.equal(Net().all_gather(5), torch.tensor(5))


class ManualClip(Net):
    def __init__(self, algorithm):
        super().__init__(lr=0.0)
        self.automatic_optimization = False
        self.algorithm = algorithm
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = 1000 * self._loss(batch)
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=0.01, gradient_clip_algorithm=self.algorithm)
        grads = torch.cat([p.grad.flatten() for p in self.parameters()])
        self.seen.append(float(grads.norm() if self.algorithm == "norm" else grads.abs().max()))
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_clip_gradients_in_manual_optimization(tmp_path, algorithm):
    model = ManualClip(algorithm)
    _trainer(tmp_path, max_steps=3, logger=False).fit(model, DataLoader(_data(), batch_size=8))
    assert len(model.seen) == 3 and all(v == pytest.approx(0.01, rel=1e-4) for v in model.seen)


# ============================================================== A. 1.x entry points
def test_test_dataloaders_keyword(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, logger=False)
    model = Net()
    trainer.fit(model, DataLoader(_data(), batch_size=8))
    (res,) = trainer.test(model, test_dataloaders=DataLoader(_data(), batch_size=64), verbose=False)
    x, y = _data()[:]
    with torch.no_grad():
        want = float(torch.nn.functional.mse_loss(model.layer(x), y))
    assert res["test_loss_epoch"] == pytest.approx(want, rel=1e-5)


def test_argparse_class_methods_as_in_1_9_5():
    parser = pl.Trainer.add_argparse_args(argparse.ArgumentParser())
    group = next(g for g in parser._action_groups if g.title == "pl.Trainer")
    actions = {a.dest: a for a in group._group_actions}
    # every Trainer flag that takes a plain value, with its default (1.9.5 has 49; ours differ)
    assert {"max_epochs", "devices", "gpus", "log_every_n_steps", "precision", "track_grad_norm",
            "weights_summary", "auto_lr_find", "enable_progress_bar", "limit_train_batches"} <= set(actions)
    assert "callbacks" not in actions
    assert actions["log_every_n_steps"].default is None and actions["max_steps"].default == -1
    assert actions["enable_progress_bar"].nargs == "?" and actions["enable_progress_bar"].const is True
    args = parser.parse_args(["--max_epochs", "3", "--limit_train_batches", "0.5", "--enable_progress_bar",
                              "False", "--fast_dev_run", "2", "--gpus", "0", "--accelerator", "cpu"])
    assert (args.max_epochs, args.limit_train_batches, args.enable_progress_bar, args.fast_dev_run) == \
        (3, 0.5, False, 2)
    bare = pl.Trainer.parse_argparser(parser.parse_args(["--detect_anomaly"]))
    assert bare.detect_anomaly is True
    trainer = pl.Trainer.from_argparse_args(parser.parse_args(["--max_epochs", "3", "--accelerator", "cpu"]),
                                            max_epochs=5, logger=False, enable_progress_bar=False)
    assert trainer.max_epochs == 5 and trainer.accelerator == "cpu"
    namespace = argparse.Namespace(max_epochs=2, my_own_flag="ignored", accelerator="cpu")
    assert pl.Trainer.from_argparse_args(namespace, logger=False).max_epochs == 2


def test_early_stop_callback_flag(tmp_path):
    from distengine.callbacks import EarlyStopping

    trainer = _trainer(tmp_path, early_stop_callback=True)
    (es,) = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    assert es.monitor == "val_loss" and trainer.early_stopping_callback is es
    mine = EarlyStopping(monitor="vplain", patience=0)
    trainer = _trainer(tmp_path, early_stop_callback=mine, max_epochs=20)
    assert trainer.early_stopping_callback is mine
    trainer.fit(Net(lr=0.0), DataLoader(_data(), batch_size=8), DataLoader(_data(), batch_size=16))
    assert trainer.current_epoch == 2  # lr 0: stopped at the end of epoch 1 (patience 0), counted as finished


def test_model_checkpoint_filepath_is_split_as_lightning_1_x(tmp_path):
    from distengine.callbacks import ModelCheckpoint

    ck = ModelCheckpoint(filepath=str(tmp_path / "ckpts" / "model-{epoch}"))
    assert (ck.dirpath, ck.filename) == (str(tmp_path / "ckpts"), "model-{epoch}")
    (tmp_path / "existing").mkdir()
    ck = ModelCheckpoint(filepath=str(tmp_path / "existing"))
    assert (ck.dirpath, ck.filename) == (str(tmp_path / "existing"), None)
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(filepath=str(tmp_path / "c" / "m-{epoch}"))],
                       enable_checkpointing=True, logger=False)
    trainer.fit(Net(), DataLoader(_data(), batch_size=8))
    assert os.path.isfile(tmp_path / "c" / "m-epoch=0.ckpt")
    with pytest.raises(ValueError, match="not both"):
        ModelCheckpoint(filepath="a/b", dirpath="c")


class LRNet(Net):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(_data(), batch_size=8)


def test_trainer_tuner_lr_find(tmp_path):
    model = LRNet(lr=0.01)
    finder = _trainer(tmp_path, logger=False).tuner.lr_find(model, num_training=10, early_stop_threshold=None)
    assert len(finder.results["lr"]) == 10 and model.lr == finder.suggestion() != 0.01


def test_auto_lr_find_acts_in_fit_when_tune_was_not_called(tmp_path, capsys):
    model = LRNet(lr=0.01)
    trainer = _trainer(tmp_path, auto_lr_find=True, max_steps=2, logger=False)
    trainer.fit(model)
    err = capsys.readouterr().err
    assert "trainer.tune() was not called, so fit runs it first" in err
    assert model.lr != 0.01 and trainer.global_step == 2
    # tune() first: fit does not search again
    model = LRNet(lr=0.01)
    trainer = _trainer(tmp_path, auto_lr_find=True, max_steps=2, logger=False)
    trainer.tune(model, lr_find_kwargs={"num_training": 10})
    tuned = model.lr
    trainer.fit(model)
    assert model.lr == tuned and "was not called" not in capsys.readouterr().err


# ============================================================== A. 1.x flags
def test_one_x_flags_translate(tmp_path, monkeypatch):
    from distengine.callbacks.model_summary import ModelSummary
    from distengine.compat_flags import translate
    from distengine.distributed.env import OVERSUBSCRIBE_VAR

    known = ["accelerator", "strategy", "devices", "log_every_n_steps", "enable_model_summary", "callbacks"]
    assert translate({"accelerator": "ddp"}, known)[0] == {"strategy": "ddp"}
    assert translate({"distributed_backend": "ddp"}, known)[0] == {"strategy": "ddp"}
    assert translate({"distributed_backend": "ddp_cpu"}, known)[0] == {"strategy": "ddp", "accelerator": "cpu"}
    assert translate({"num_processes": 2}, known)[0] == {"accelerator": "cpu", "devices": 2}
    assert translate({"row_log_interval": 7}, known)[0] == {"log_every_n_steps": 7}
    assert translate({"row_log_interval": 7, "log_every_n_steps": 3}, known)[0] == {"log_every_n_steps": 3}
    assert _trainer(tmp_path, row_log_interval=7).log_every_n_steps == 7
    monkeypatch.setenv(OVERSUBSCRIBE_VAR, "1")
    trainer = _trainer(tmp_path, num_processes=2, accelerator="auto")
    assert (trainer.accelerator, trainer.num_devices) == ("cpu", 2)
    assert not any(isinstance(c, ModelSummary) for c in _trainer(tmp_path, weights_summary=None,
                                                                  enable_model_summary=None).callbacks)
    (full,) = [c for c in _trainer(tmp_path, weights_summary="full", enable_model_summary=None).callbacks
               if isinstance(c, ModelSummary)]
    assert full.max_depth == -1
    assert _trainer(tmp_path, accelerator="ddp", devices=1).accelerator == "cpu"


def test_one_x_no_op_flags_say_so_once(tmp_path, capsys):
    _trainer(tmp_path, amp_level="O2", log_save_interval=100)
    _trainer(tmp_path, amp_level="O1")
    err = capsys.readouterr().err
    assert err.count("Trainer(amp_level=...) is accepted and does nothing") == 1
    assert err.count("Trainer(log_save_interval=...) is accepted and does nothing") == 1


def test_track_grad_norm_logs_1_x_names(tmp_path):
    trainer = _trainer(tmp_path, max_epochs=1, track_grad_norm=2, log_every_n_steps=2)
    model = Net()
    trainer.fit(model, DataLoader(_data(), batch_size=8))
    got = _scalars(tmp_path)
    # pytorch-lightning 1.9.5, same run: these tags at steps 1, 3, 5, 7 and 7
    for name in ("grad_2.0_norm/layer.weight", "grad_2.0_norm/layer.bias", "grad_2.0_norm_total"):
        assert got[f"{name}_step"] == [1, 3, 5, 7] and got[f"{name}_epoch"] == [7]
    total = dict(_values(tmp_path, "grad_2.0_norm_total_step"))
    weight, bias = (dict(_values(tmp_path, f"grad_2.0_norm/layer.{n}_step")) for n in ("weight", "bias"))
    assert total[7] == pytest.approx((weight[7] ** 2 + bias[7] ** 2) ** 0.5, abs=2e-4)
    with pytest.raises(ValueError, match="track_grad_norm"):
        _trainer(tmp_path, track_grad_norm=0)


class Reloading(Net):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def train_dataloader(self):
        self.calls.append(("train", self.current_epoch))
        return DataLoader(_data(16), batch_size=8)

    def val_dataloader(self):
        self.calls.append(("val", self.current_epoch))
        return DataLoader(_data(16), batch_size=8)


def test_reload_dataloaders_every_n_epochs_calls_the_hooks_again(tmp_path):
    model = Reloading()
    _trainer(tmp_path, max_epochs=5, reload_dataloaders_every_n_epochs=2, logger=False).fit(model)
    # pytorch-lightning 2.6.6 on the same module: the same calls
    assert model.calls == [("train", 0), ("val", 0), ("train", 2), ("val", 2), ("train", 4), ("val", 4)]
    model = Reloading()
    _trainer(tmp_path, max_epochs=3, logger=False).fit(model)
    assert model.calls == [("train", 0), ("val", 0)]


def test_prepare_data_per_node_flag(tmp_path, monkeypatch):
    class Prep(LRNet):
        prepared = 0

        def prepare_data(self):
            Prep.prepared += 1

    trainer = _trainer(tmp_path, max_steps=1, logger=False, prepare_data_per_node=False)
    assert trainer.prepare_data_per_node is False
    trainer.fit(Prep())
    assert Prep.prepared == 1  # global rank 0 prepares
    monkeypatch.setattr(pl.Trainer, "global_rank", property(lambda self: 1))
    _trainer(tmp_path, max_steps=1, logger=False, prepare_data_per_node=False).fit(Prep())
    assert Prep.prepared == 1  # not global rank 0 (local rank 0): skipped
    _trainer(tmp_path, max_steps=1, logger=False, prepare_data_per_node=True).fit(Prep())
    assert Prep.prepared == 2  # per node: local rank 0 prepares


def test_unknown_flag_names_the_closest_known_one():
    with pytest.raises(TypeError, match=r"^Trainer got an unknown flag 'min_epoch'; did you mean 'min_epochs'\?$"):
        pl.Trainer(min_epoch=3)
    with pytest.raises(TypeError, match=r"did you mean 'weights_summary'"):
        pl.Trainer(weight_summary=None)
    with pytest.raises(TypeError, match=r"unknown flag 'zzz'; see help"):
        pl.Trainer(zzz=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("gpus", [[0], 1])
def test_gpus_without_a_gpu_names_a_fix_that_works(gpus):
    with pytest.raises(ValueError, match=r"remove gpus=.* \(or set gpus=0 or None\) to train on the CPU") as err:
        pl.Trainer(gpus=gpus, accelerator="cpu")
    assert "accelerator='cpu'" not in str(err.value)
    pl.Trainer(gpus=0, logger=False)  # the fix works
    pl.Trainer(gpus=None, logger=False)
