"""The Module API of issue 2 inside real fits: hook order and arguments, step skipping,
manual optimization, ``self.log`` options, properties, hyperparameters, data sources, and
the evaluation entry points."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.base import Callback
from distengine.loggers.base import Logger
from tests.core.models import Regressor, loader, quiet_trainer, regression_data

N_BATCHES = 6

# ------------------------------------------------------------------ hook order
MODULE_HOOK_NAMES = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_validation_batch_start", "on_validation_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_save_checkpoint",
]


class HookModule(Regressor):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def training_step(self, batch, batch_idx):
        self.calls.append("training_step")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.calls.append("validation_step")
        super().validation_step(batch, batch_idx)

    def configure_optimizers(self):
        self.calls.append("configure_optimizers")
        return super().configure_optimizers()


def _add_recorders(cls, prefix):
    for name in MODULE_HOOK_NAMES:
        def hook(self, *args, _name=name, **kwargs):
            self.calls.append(prefix + _name)
        setattr(cls, name, hook)


_add_recorders(HookModule, "")


class ArgCheckingCallback(Callback):
    """Records its hooks and checks that each receives Lightning's arguments."""

    def __init__(self, calls, module):
        self.calls, self.module = calls, module
        self.errors: list[str] = []

    def _rec(self, name, trainer, module, nargs, args):
        self.calls.append("cb." + name)
        if not isinstance(trainer, de.Trainer) or module is not self.module:
            self.errors.append(f"{name}: got {type(trainer).__name__}, {type(module).__name__}")
        if len(args) != nargs:
            self.errors.append(f"{name}: {len(args)} extra args, expected {nargs}")

    def setup(self, trainer, module, stage):
        self._rec("setup", trainer, module, 0, ())
        assert stage == "fit"

    def teardown(self, trainer, module, stage):
        self._rec("teardown", trainer, module, 0, ())

    def on_sanity_check_start(self, trainer, module):
        self._rec("on_sanity_check_start", trainer, module, 0, ())
        assert trainer.sanity_checking

    def on_sanity_check_end(self, trainer, module):
        self._rec("on_sanity_check_end", trainer, module, 0, ())

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._rec("on_train_batch_start", trainer, module, 0, ())
        assert isinstance(batch, list) and isinstance(batch_idx, int)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._rec("on_train_batch_end", trainer, module, 0, ())
        # Lightning hands over {"loss": ...} even when training_step returned a tensor
        assert float(outputs["loss"]) > 0 and isinstance(batch_idx, int)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self._rec("on_validation_batch_end", trainer, module, 0, ())
        assert dataloader_idx == 0

    def on_before_backward(self, trainer, module, loss):
        self._rec("on_before_backward", trainer, module, 0, ())
        assert loss.requires_grad

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self._rec("on_before_optimizer_step", trainer, module, 0, ())
        assert optimizer is trainer.optimizers[0]

    def on_before_zero_grad(self, trainer, module, optimizer):
        self._rec("on_before_zero_grad", trainer, module, 0, ())
        assert optimizer is trainer.optimizers[0]

    def on_save_checkpoint(self, trainer, module, checkpoint):
        self._rec("on_save_checkpoint", trainer, module, 0, ())
        assert "state_dict" in checkpoint


for _name in ("on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start",
              "on_train_epoch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
              "on_validation_epoch_end", "on_validation_batch_start", "on_after_backward"):
    def _cb_hook(self, trainer, module, *args, _name=_name):
        self._rec(_name, trainer, module, 2 if _name == "on_validation_batch_start" else 0, args)
    setattr(ArgCheckingCallback, _name, _cb_hook)


VAL = ["on_validation_start", "on_validation_epoch_start",
       "on_validation_batch_start", "validation_step", "on_validation_batch_end",
       "on_validation_epoch_end", "on_validation_end"]
TRAIN_BATCH = ["on_train_batch_start", "training_step", "on_before_backward", "on_after_backward",
               "on_before_optimizer_step", "on_before_zero_grad", "on_train_batch_end"]


def test_hooks_run_in_lightning_order_with_lightning_arguments(tmp_path):
    calls: list[str] = []
    module = HookModule(calls)
    callback = ArgCheckingCallback(calls, module)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                            num_sanity_val_steps=1, callbacks=[callback])
    trainer.fit(module, loader(regression_data()), loader(regression_data()))
    assert callback.errors == []
    module_calls = [c for c in calls if not c.startswith("cb.")]
    assert module_calls == [
        "setup", "configure_optimizers", "on_fit_start",
        *VAL,                                        # sanity check
        "on_train_start", "on_train_epoch_start",
        *TRAIN_BATCH, *TRAIN_BATCH,
        *VAL,                                        # validation at the epoch end ...
        "on_train_epoch_end",                        # ... before on_train_epoch_end (Lightning 2.x)
        "on_train_end", "on_fit_end", "teardown",
    ]
    cb_calls = [c[3:] for c in calls if c.startswith("cb.")]
    cb_val = [h for h in VAL if h != "validation_step"]
    cb_batch = [h for h in TRAIN_BATCH if h != "training_step"]
    assert cb_calls == [
        "setup", "on_fit_start", "on_sanity_check_start", *cb_val, "on_sanity_check_end",
        "on_train_start", "on_train_epoch_start", *cb_batch, *cb_batch, *cb_val,
        "on_train_epoch_end", "on_train_end", "on_fit_end", "teardown",
    ]
    # callbacks run before the module's own hook of the same name
    i = calls.index("cb.on_train_batch_start")
    assert calls[i + 1] == "on_train_batch_start"


def test_on_save_checkpoint_hooks_see_the_checkpoint(tmp_path):
    calls: list[str] = []
    module = HookModule(calls)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1,
                            callbacks=[ArgCheckingCallback(calls, module)])
    trainer.fit(module, loader(regression_data()))
    calls.clear()
    trainer.save_checkpoint(str(tmp_path / "x.ckpt"))
    assert calls == ["cb.on_save_checkpoint", "on_save_checkpoint"]  # the callbacks first, as in Lightning


# ------------------------------------------------------------------ skipping
class SkipFromBatch(Regressor):
    def __init__(self, skip_at):
        super().__init__()
        self.skip_at = skip_at
        self.ran: list[tuple[int, int]] = []
        self.epochs_ended = 0

    def on_train_batch_start(self, batch, batch_idx):
        if batch_idx == self.skip_at:
            return -1
        return None

    def training_step(self, batch, batch_idx):
        self.ran.append((self.current_epoch, batch_idx))
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self):
        self.epochs_ended += 1


def test_on_train_batch_start_minus_one_skips_the_rest_of_the_epoch(tmp_path):
    module = SkipFromBatch(skip_at=2)
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    trainer.fit(module, loader(regression_data()))
    # the rest of THIS epoch is skipped; the next epoch starts as usual (Lightning's contract)
    assert module.ran == [(e, b) for e in range(3) for b in range(2)]
    assert trainer.global_step == 6 and module.epochs_ended == 3


def test_training_step_returning_none_skips_backward_but_still_steps(tmp_path):
    class SkipOdd(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 2 else loss

    module = SkipOdd()
    before = [p.detach().clone() for p in module.parameters()]
    stepped = []

    class Count(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            stepped.append(trainer.global_step)

    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[Count()])
    trainer.fit(module, loader(regression_data()))
    # Lightning 2.6: the closure's optimizer step is taken (and counted) without a backward
    assert trainer.global_step == 6 and stepped == [0, 1, 2, 3, 4, 5]
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# ------------------------------------------------------------------ manual optimization
class TinyGAN(de.Module):
    """A generator and a discriminator with one optimizer each, stepped by hand."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.generator = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        self.discriminator = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        self.d_steps = 0

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        z = torch.randn(real.shape[0], 4, device=self.device)
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)

        self.toggle_optimizer(opt_g)
        g_loss = bce(self.discriminator(self.generator(z)), ones)
        assert all(not p.requires_grad for p in self.discriminator.parameters())
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        fake = self.generator(z).detach()
        d_loss = (bce(self.discriminator(real), ones) + bce(self.discriminator(fake), zeros)) / 2
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.d_steps += 1
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=1e-2),
                torch.optim.Adam(self.discriminator.parameters(), lr=1e-2)]


def test_manual_optimization_with_two_optimizers(tmp_path):
    module = TinyGAN()
    g0 = [p.detach().clone() for p in module.generator.parameters()]
    d0 = [p.detach().clone() for p in module.discriminator.parameters()]
    real = TensorDataset(torch.randn(64, 2) * 0.5 + 2.0)
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, DataLoader(real, batch_size=16))
    assert module.d_steps == 8 and trainer.global_step == 16  # +1 per optimizer.step(), as in Lightning 2.x
    assert all(not torch.equal(a, b) for a, b in zip(g0, module.generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, module.discriminator.parameters()))
    assert all(p.requires_grad for p in module.parameters())  # untoggle restored everything
    assert {"g_loss", "d_loss"} <= set(trainer.progress_bar_metrics)


def test_manual_optimization_optimizers_returns_the_single_optimizer(tmp_path):
    seen = []

    class Manual(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            seen.append(opt)
            raw.append(self.optimizers(use_pl_optimizer=False))
            loss = super().training_step(batch, batch_idx)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    raw = []
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(Manual(), loader(regression_data()))
    # as in Lightning: one LightningOptimizer (an instance of the optimizer's class too) around
    # the Trainer's optimizer, the same object on every call; use_pl_optimizer=False: the optimizer
    from distengine.optim import LightningOptimizer

    assert len(seen) == N_BATCHES and all(o is seen[0] for o in seen)
    assert isinstance(seen[0], LightningOptimizer) and isinstance(seen[0], type(trainer.optimizers[0]))
    assert seen[0].optimizer is trainer.optimizers[0] and seen[0].param_groups is trainer.optimizers[0].param_groups
    assert all(o is trainer.optimizers[0] for o in raw)


def test_two_optimizers_with_automatic_optimization_is_a_clear_error(tmp_path):
    class Two(Regressor):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.net[0].parameters(), lr=0.1),
                    torch.optim.SGD(self.net[2].parameters(), lr=0.1)]

    with pytest.raises(ValueError, match="does not take optimizer_idx: set self.automatic_optimization = False"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Two(), loader(regression_data()))


# ------------------------------------------------------------------ self.log
class RecordingLogger(Logger):
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def keys(self):
        return {k for _, m in self.rows for k in m}

    def values(self, key):
        return [(s, m[key]) for s, m in self.rows if key in m]


class LogOptions(Regressor):
    """Logs constant values so every reduction is known exactly."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        v = float(batch_idx + 1)                                     # 1..6 within an epoch
        self.log("default_step", v)                                  # on_step only in training
        self.log("both", v, on_step=True, on_epoch=True)             # both_step and both_epoch
        self.log("epoch_only", v, on_step=False, on_epoch=True)      # mean over the epoch
        self.log("summed", v, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("maxed", v, on_step=False, on_epoch=True, reduce_fx="max")
        self.log("bar", v, prog_bar=True, logger=False)
        self.log_dict({"d1": v, "d2": 2 * v}, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_default", float(batch_idx))                     # on_epoch in validation
        self.log("val_bar", 1.0, prog_bar=True)

    def on_train_epoch_end(self):
        self.log("in_epoch_end", 7.0)                                 # on_epoch by default here


def test_log_options_reach_the_right_places(tmp_path):
    logger = RecordingLogger()
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=logger, log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(LogOptions(), loader(regression_data()), loader(regression_data()))
    keys = logger.keys()
    assert {"default_step", "both_step", "both_epoch", "epoch_only", "summed", "maxed", "d1", "d2",
            "val_default", "val_bar", "in_epoch_end"} <= keys
    assert not {"both", "bar", "default_step_step", "default_step_epoch"} & keys
    # at Lightning's indices: step s is written at s - 1, the epoch values at the last step's
    assert logger.values("default_step") == [(s - 1, float(s)) for s in range(1, 7)]
    assert logger.values("both_step") == [(s - 1, float(s)) for s in range(1, 7)]
    assert logger.values("both_epoch") == [(5, 3.5)]
    assert logger.values("epoch_only") == [(5, 3.5)]
    assert logger.values("summed") == [(5, 21.0)]
    assert logger.values("maxed") == [(5, 6.0)]
    assert logger.values("d2") == [(5, 7.0)]
    assert logger.values("val_default") == [(5, 2.5)]
    assert logger.values("in_epoch_end") == [(5, 7.0)]
    # callback_metrics: the latest of everything (the epoch value under the bare name)
    cm = trainer.callback_metrics
    assert float(cm["both"]) == 3.5 and float(cm["both_epoch"]) == 3.5 and float(cm["both_step"]) == 6.0
    assert float(cm["summed"]) == 21.0 and float(cm["default_step"]) == 6.0 and float(cm["bar"]) == 6.0
    assert all(isinstance(v, torch.Tensor) for v in cm.values())
    # logged_metrics: what the loggers received
    lm = trainer.logged_metrics
    assert lm["both_epoch"] == 3.5 and "bar" not in lm and lm["val_default"] == 2.5
    # progress_bar_metrics: only prog_bar=True names (plus the running loss)
    pb = trainer.progress_bar_metrics
    # the bar shows the loss by itself; progress_bar_metrics hold only prog_bar values (Lightning 2.x)
    assert pb["bar"] == 6.0 and pb["val_bar"] == 1.0 and "summed" not in pb and "loss" not in pb
    assert all(isinstance(v, float) for v in pb.values())


def test_log_outside_a_trainer_does_nothing():
    module = LogOptions()
    module.log("x", 1.0)  # no error, nothing to record into
    assert module._trainer is None
    with pytest.raises(RuntimeError, match="LogOptions is not attached to a Trainer"):
        module.trainer  # as in Lightning: outside a Trainer, reading it is an error


def test_log_of_a_non_scalar_is_a_clear_error(tmp_path):
    class Bad(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("vec", torch.ones(3))
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"needs a scalar, got a tensor of shape \(3,\)"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Bad(), loader(regression_data()))


# ------------------------------------------------------------------ properties
def test_module_properties_during_fit(tmp_path):
    seen = []

    class Props(Regressor):
        def training_step(self, batch, batch_idx):
            seen.append((self.device, self.global_rank, self.local_rank, self.current_epoch, self.global_step,
                         self.trainer))
            return super().training_step(batch, batch_idx)

    module = Props()
    assert module._trainer is None and module.current_epoch == 0 and module.device == torch.device("cpu")
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2)
    trainer.fit(module, loader(regression_data()))
    assert [(e, s) for _, _, _, e, s, _ in seen] == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert all(d == torch.device("cpu") and r == 0 and lr == 0 and t is trainer for d, r, lr, _, _, t in seen)
    assert trainer.lightning_module is module and module.logger is None


# ------------------------------------------------------------------ hyperparameters
class HP(Regressor):
    def __init__(self, lr=0.05, hidden=16, net_name="mlp", extra=None):
        super().__init__(lr=lr)
        self.save_hyperparameters()


class HPSome(Regressor):
    def __init__(self, lr=0.05, hidden=16, net_name="mlp"):
        super().__init__(lr=lr)
        self.save_hyperparameters("lr", "net_name")


class HPIgnore(Regressor):
    def __init__(self, lr=0.05, hidden=16, backbone=None):
        super().__init__(lr=lr)
        self.save_hyperparameters(ignore=["backbone"])


class HPChild(HP):
    def __init__(self, depth=3, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters()


def test_save_hyperparameters_variants():
    assert dict(HP(lr=0.1).hparams) == {"lr": 0.1, "hidden": 16, "net_name": "mlp", "extra": None}
    assert HP(lr=0.1).hparams.lr == 0.1 and HP().hparams["hidden"] == 16
    assert dict(HPSome(hidden=3).hparams) == {"lr": 0.05, "net_name": "mlp"}
    assert dict(HPIgnore(backbone=torch.nn.Linear(1, 1)).hparams) == {"lr": 0.05, "hidden": 16}
    child = HPChild(depth=5, lr=0.2)
    assert child.hparams.depth == 5 and child.hparams.lr == 0.2
    with pytest.raises(AttributeError, match="no hyperparameter named 'nope'"):
        HP().hparams.nope

    class Wrong(Regressor):
        def __init__(self, lr=0.05):
            super().__init__(lr=lr)
            self.save_hyperparameters("learning_rate")

    with pytest.raises(ValueError, match=r"\['learning_rate'\] are not arguments of __init__"):
        Wrong()


def test_load_from_checkpoint_with_overrides(tmp_path):
    module = HP(lr=0.01, hidden=16, net_name="first")
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, loader(regression_data()))
    path = str(tmp_path / "hp.ckpt")
    trainer.save_checkpoint(path)
    loaded = HP.load_from_checkpoint(path)
    assert dict(loaded.hparams) == dict(module.hparams)
    overridden = HP.load_from_checkpoint(path, lr=0.5, net_name="second")
    assert overridden.hparams.lr == 0.5 and overridden.hparams.net_name == "second"
    assert overridden.hparams.hidden == 16
    for a, b in zip(overridden.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)
    assert not overridden.training or overridden._trainer is None


# ------------------------------------------------------------------ data sources
class DuckDataModule:
    """A datamodule by duck typing: prepare_data, setup(stage) and the *_dataloader methods."""

    def __init__(self):
        self.calls: list[str] = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        ds = regression_data()
        if stage == "fit":
            self.train, self.val = ds, regression_data(n=32, seed=1)
        if stage == "test":
            self.test = regression_data(n=48, seed=2)
        if stage == "predict":
            self.pred = regression_data(n=20, seed=3)

    def train_dataloader(self):
        return loader(self.train)

    def val_dataloader(self):
        return loader(self.val)

    def test_dataloader(self):
        return loader(self.test)

    def predict_dataloader(self):
        return DataLoader(self.pred.tensors[0], batch_size=8)


class FullModule(Regressor):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))


def test_datamodule_for_fit_validate_test_predict(tmp_path):
    dm = DuckDataModule()
    module = FullModule()
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == N_BATCHES and trainer.num_val_batches == [2]
    assert dm.calls == ["prepare_data", "setup:fit"]
    (val,) = trainer.validate(module, datamodule=dm)
    assert "val_loss" in val
    (test,) = trainer.test(module, datamodule=dm)
    assert "test_loss" in test
    preds = trainer.predict(module, datamodule=dm)
    assert len(preds) == 3 and torch.cat(preds).shape == (20, 1)
    # prepare_data once; setup once per stage, with Lightning's stage names
    assert dm.calls == ["prepare_data", "setup:fit", "setup:validate", "setup:test", "setup:predict"]


def test_datamodule_passed_positionally(tmp_path):
    dm = DuckDataModule()
    module = FullModule()
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, dm)  # Lightning accepts the datamodule in the dataloaders' place
    assert trainer.global_step == N_BATCHES and trainer.num_val_batches == [2]
    (test,) = trainer.test(module, dm)
    assert "test_loss" in test


def test_dataloaders_defined_on_the_module(tmp_path):
    class WithLoaders(FullModule):
        def train_dataloader(self):
            return loader(regression_data())

        def val_dataloader(self):
            return loader(regression_data(n=32, seed=1))

        def test_dataloader(self):
            return [loader(regression_data(n=16, seed=2)), loader(regression_data(n=32, seed=3))]

        def test_step(self, batch, batch_idx, dataloader_idx=0):  # several loaders: the index is passed
            super().test_step(batch, batch_idx)

    module = WithLoaders()
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module)
    assert trainer.global_step == N_BATCHES and "val_loss" in trainer.callback_metrics
    results = trainer.test(module)
    assert [sorted(r) for r in results] == [["test_loss/dataloader_idx_0"], ["test_loss/dataloader_idx_1"]]


class MultiEval(Regressor):
    def __init__(self):
        super().__init__()
        self.seen_idx: list[int] = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen_idx.append(dataloader_idx)
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))
        self.log("const", float(dataloader_idx + 1))

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("test_const", 10.0 * (dataloader_idx + 1))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]) * 0 + dataloader_idx


def test_validate_test_predict_with_several_dataloaders(tmp_path):
    module = MultiEval()
    trainer = quiet_trainer(tmp_path)
    a, b = loader(regression_data(n=32)), loader(regression_data(n=48, seed=5))
    results = trainer.validate(module, [a, b])
    assert len(results) == 2 and module.seen_idx == [0, 0, 1, 1, 1]
    assert results[0]["const/dataloader_idx_0"] == 1.0 and results[1]["const/dataloader_idx_1"] == 2.0
    assert "val_loss/dataloader_idx_1" in results[1] and "val_loss/dataloader_idx_1" not in results[0]
    tests = trainer.test(module, [a, b])
    assert tests == [{"test_const/dataloader_idx_0": 10.0}, {"test_const/dataloader_idx_1": 20.0}]
    p0, p1 = trainer.predict(module, [a, b])
    assert len(p0) == 2 and len(p1) == 3
    assert all(float(t.max()) == 0 for t in p0) and all(float(t.min()) == 1 for t in p1)
    single = trainer.predict(module, a)
    assert len(single) == 2 and single[0].shape == (16, 1)


def test_validate_returns_metrics_and_sets_callback_metrics(tmp_path):
    trainer = quiet_trainer(tmp_path)
    module = Regressor()
    (result,) = trainer.validate(module, loader(regression_data()))
    assert set(result) == {"val_loss"} and isinstance(result["val_loss"], float)
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(result["val_loss"])
    assert trainer.logged_metrics["val_loss"] == pytest.approx(result["val_loss"])
