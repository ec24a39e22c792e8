"""Prints, as JSON, what Lightning's Trainer API gives (issue 26: exceptions, Trainer
properties at hook times, PL_TRAINER_* defaults, logging from callbacks, logger experiments,
warnings). Run under real Lightning and under distengine through the shim; the test compares
the two outputs. Argument: the part to probe."""
import json
import os
import sys
import tempfile
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.pop("PL_TRAINER_MAX_EPOCHS", None)


def _data(n=16, bs=4, seed=0, num_workers=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=bs, num_workers=num_workers)


def _module_cls():
    import pytorch_lightning as pl

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", nn.functional.mse_loss(self.layer(x), y))

        def predict_step(self, batch, batch_idx):
            return self.layer(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return M


def _trainer(tmp, **kw):
    import pytorch_lightning as pl

    args = dict(default_root_dir=tmp, enable_progress_bar=False, enable_model_summary=False, logger=False,
                enable_checkpointing=False, max_epochs=1)
    args.update(kw)
    return pl.Trainer(**args)


def exceptions(tmp):
    """Which bad configurations raise MisconfigurationException (and with which built-in base)."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException as FabricMisconfig
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    M = _module_cls()

    class NoOpt(M):
        configure_optimizers = pl.LightningModule.configure_optimizers

    class NoTest(M):
        test_step = pl.LightningModule.test_step

    class Manual(M):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    class BadLog(M):
        def training_step(self, batch, batch_idx):
            self.log("x", torch.ones(3))
            return super().training_step(batch, batch_idx)

    cases = {
        "limit_str": lambda: _trainer(tmp, limit_train_batches="a"),
        "ckpt_disabled": lambda: _trainer(tmp, enable_checkpointing=False, callbacks=[ModelCheckpoint(dirpath=tmp)]),
        "ckpt_mode": lambda: ModelCheckpoint(mode="median"),
        "es_mode": lambda: EarlyStopping("val_loss", mode="median"),
        "no_configure_optimizers": lambda: _trainer(tmp).fit(NoOpt(), _data()),
        "no_test_step": lambda: _trainer(tmp).test(NoTest(), _data()),
        "no_train_data": lambda: _trainer(tmp).fit(M()),
        "manual_accumulate": lambda: _trainer(tmp, accumulate_grad_batches=2).fit(Manual(), _data()),
        "log_non_scalar": lambda: _trainer(tmp).fit(BadLog(), _data()),
        "test_without_model": lambda: _trainer(tmp).test(dataloaders=_data()),
    }
    out = {"same_class": MisconfigurationException is FabricMisconfig,
           "base": [b.__name__ for b in MisconfigurationException.__mro__[1:]][:1]}
    for name, fn in cases.items():
        try:
            fn()
            out[name] = "no error"
        except Exception as e:  # noqa: BLE001 - the exception class is what is compared
            out[name] = isinstance(e, MisconfigurationException)
    return out


_PROPS = ("val_dataloaders", "test_dataloaders", "predict_dataloaders", "train_dataloader", "num_val_batches",
          "num_training_batches", "num_sanity_val_batches", "num_test_batches", "num_predict_batches",
          "enable_validation", "ckpt_path", "is_last_batch", "estimated_stepping_batches", "interrupted",
          "early_stopping_callbacks", "early_stopping_callback", "checkpoint_callback", "checkpoint_callbacks",
          "progress_bar_callback", "lightning_module", "log_dir")


def _snap(t, tmp, skip=()):
    out = {}
    for n in _PROPS:
        if n in skip:
            continue
        v = getattr(t, n)
        if n.endswith("dataloaders") or n == "train_dataloader":
            v = None if v is None else (type(v).__name__, len(v) if isinstance(v, (list, dict)) else None)
        elif n.endswith("callbacks"):
            v = len(v)
        elif n.endswith("callback") or n == "lightning_module":
            v = v is not None
        elif isinstance(v, float):
            v = repr(v)
        elif isinstance(v, str):
            v = os.path.relpath(v, tmp)
        out[n] = v
    st = t.state
    out["state"] = [str(st.fn), str(st.stage), str(st.status), st.finished, st.stopped]
    return out


def properties(tmp):
    """Trainer properties and trainer.state at hook times, after each call, and after an error."""
    from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
    from pytorch_lightning.trainer.states import RunningStage, TrainerFn, TrainerStatus

    class Rec(Callback):
        def __init__(self):
            self.s = {"batch_end": []}

        def on_train_epoch_start(self, t, m):
            self.s["train_epoch_start"] = _snap(t, tmp)

        def on_train_batch_end(self, t, m, o, b, i):
            self.s["batch_end"].append([t.is_last_batch, str(t.state.stage)])

        def on_validation_epoch_start(self, t, m):
            if not t.sanity_checking:
                self.s["val_start"] = _snap(t, tmp)
            else:
                self.s["sanity_stage"] = str(t.state.stage)

        def on_test_start(self, t, m):
            self.s["test_start"] = _snap(t, tmp, skip=("estimated_stepping_batches",))

        def on_predict_start(self, t, m):
            self.s["predict_start"] = _snap(t, tmp, skip=("estimated_stepping_batches",))

    rec = Rec()
    t = _trainer(tmp, callbacks=[rec, EarlyStopping("train_loss"), ModelCheckpoint(dirpath=tmp)],
                 enable_progress_bar=True, enable_checkpointing=True, num_sanity_val_steps=1, limit_val_batches=2)
    res = {"init": _snap(t, tmp, skip=("estimated_stepping_batches", "log_dir"))}
    model = _module_cls()()
    t.fit(model, _data(), [_data(8), _data(8, seed=1)])
    res["after_fit"] = _snap(t, tmp)
    t.test(model, dataloaders=_data(8), ckpt_path="best", verbose=False)
    res["after_test"] = _snap(t, tmp, skip=("estimated_stepping_batches",))
    t.predict(model, dataloaders={"a": _data(8)})
    res["after_predict"] = _snap(t, tmp, skip=("estimated_stepping_batches",))
    res.update(rec.s)
    res["enums"] = [TrainerFn.FITTING == "fit", RunningStage.SANITY_CHECKING.value, RunningStage.TESTING.evaluating,
                    RunningStage.SANITY_CHECKING.dataloader_prefix, TrainerStatus.INTERRUPTED.stopped]

    class Fails(_module_cls()):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    t = _trainer(tmp, enable_progress_bar=False)
    try:
        t.fit(Fails(), _data())
    except RuntimeError:
        pass
    res["after_error"] = [t.interrupted, str(t.state.status), str(t.state.fn), str(t.state.stage)]
    return res


def env_defaults(tmp):
    """PL_TRAINER_* variables give Trainer defaults; arguments passed win."""
    import pytorch_lightning as pl

    os.environ.update({"PL_TRAINER_MAX_EPOCHS": "3", "PL_TRAINER_LIMIT_TRAIN_BATCHES": "2",
                       "PL_TRAINER_ACCELERATOR": "cpu", "PL_TRAINER_ENABLE_PROGRESS_BAR": "False",
                       "PL_TRAINER_LOGGER": "False", "PL_TRAINER_ENABLE_CHECKPOINTING": "", "PL_TRAINER_BOGUS": "1"})
    t = pl.Trainer(default_root_dir=tmp, enable_model_summary=False)
    t.fit(_module_cls()(), _data())
    explicit = pl.Trainer(default_root_dir=tmp, max_epochs=1, enable_model_summary=False)
    explicit.fit(_module_cls()(), _data())
    return {"env": [t.max_epochs, t.global_step, t.current_epoch, t.progress_bar_callback is None,
                    t.logger is None, t.checkpoint_callback is not None],
            "explicit": [explicit.max_epochs, explicit.global_step]}


def callback_log(tmp):
    """pl_module.log from Callback hooks: the defaults of each hook, and the hooks that refuse it."""
    from pytorch_lightning.callbacks import Callback
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    class Logs(Callback):
        def on_train_batch_end(self, t, m, outputs, batch, batch_idx):
            m.log("cb_train_batch", float(batch_idx))

        def on_train_epoch_end(self, t, m):
            m.log("cb_train_epoch", float(t.current_epoch) + 0.5)

        def on_validation_batch_end(self, t, m, outputs, batch, batch_idx, dataloader_idx=0):
            m.log("cb_val_batch", float(batch_idx))

        def on_validation_epoch_end(self, t, m):
            m.log("cb_val_epoch", 7.0, prog_bar=True)

        def on_test_batch_end(self, t, m, outputs, batch, batch_idx, dataloader_idx=0):
            m.log("cb_test_batch", float(batch_idx) * 2, on_step=True)

    t = _trainer(tmp, callbacks=[Logs()], logger=CSVLogger(tmp, name="csv", version=0), max_epochs=2,
                 log_every_n_steps=1, num_sanity_val_steps=0)
    t.fit(_module_cls()(), _data(), _data(8))
    fit_metrics = {k: round(float(v), 5) for k, v in t.callback_metrics.items() if k.startswith("cb_")}
    t.test(t.lightning_module, _data(8), verbose=False)
    test_metrics = {k: round(float(v), 5) for k, v in t.callback_metrics.items() if k.startswith("cb_")}
    import csv
    with open(os.path.join(tmp, "csv", "version_0", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    logged = sorted({k for r in rows for k, v in r.items() if v and k.startswith("cb_")})

    out = {"fit": fit_metrics, "test": test_metrics, "csv_columns": logged}
    for hook in ("on_fit_start", "on_train_start", "on_sanity_check_start", "on_predict_batch_end"):
        class Bad(Callback):
            pass

        def log_it(self, t, m, *args, **kwargs):
            m.log("bad", 1.0)

        setattr(Bad, hook, log_it)
        try:
            tr = _trainer(tmp, callbacks=[Bad()], num_sanity_val_steps=1)
            if hook == "on_predict_batch_end":
                tr.predict(_module_cls()(), _data(8))
            else:
                tr.fit(_module_cls()(), _data(), _data(8))
            out[hook] = "no error"
        except MisconfigurationException:
            out[hook] = "MisconfigurationException"
    return out


def loggers(tmp):
    """CSVLogger.experiment (Lightning's ExperimentWriter) and TensorBoardLogger.experiment."""
    import csv

    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    lg = CSVLogger(tmp, name="n", version=0)
    w = lg.experiment
    out = {"type": type(w).__name__, "same": lg.experiment is w, "dir": os.path.isdir(lg.log_dir),
           "path": os.path.relpath(w.metrics_file_path, tmp), "log_dir": os.path.relpath(w.log_dir, tmp)}
    w.log_metrics({"a": torch.tensor(1.5)}, step=3)
    w.log_metrics({"b": 2.0})
    out["kept"] = list(w.metrics)
    w.save()
    out["after_save"] = list(w.metrics)
    w.log_hparams({"lr": 0.1})
    out["hparams"] = [w.hparams, open(os.path.join(lg.log_dir, "hparams.yaml")).read().strip()]
    with open(w.metrics_file_path) as f:
        out["rows"] = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
    out["tensorboard"] = [hasattr(TensorBoardLogger(tmp).experiment, n) for n in ("add_scalar", "add_image", "flush")]
    return out


def user_warnings(tmp):
    """Lightning's PossibleUserWarnings at the start of a run (on a machine with 8 usable cores),
    and disable_possible_user_warnings silencing them."""
    from pytorch_lightning.callbacks import Callback
    from pytorch_lightning.utilities import disable_possible_user_warnings

    os.sched_getaffinity = lambda pid: set(range(8))  # the worker advice depends on the cores

    class StopAfterOneEpoch(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    class NoValStep(_module_cls()):
        validation_step = None

    def run(disable):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if disable:
                disable_possible_user_warnings()
            t = _trainer(tmp, logger=True, max_epochs=None, limit_train_batches=2, callbacks=[StopAfterOneEpoch()])
            t.fit(_module_cls()(), _data(), _data(8))
            t.test(t.lightning_module, _data(8), verbose=False)
            t = _trainer(tmp, max_epochs=None, max_steps=2)  # max_steps set: no max_epochs warning
            t.fit(_module_cls()(), _data(num_workers=2))  # a validation_step, no val loader
            t = _trainer(tmp)
            t.fit(NoValStep(), _data(num_workers=2), _data(8, num_workers=2))
        keys = ("max_epochs", "workers", "logging interval", "Skipping val loop")
        return [[w.category.__name__, issubclass(w.category, UserWarning), str(w.message)] for w in caught
                if any(k in str(w.message) for k in keys)]

    return {"warnings": run(False), "disabled": run(True)}


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    part = globals()[sys.argv[1]]
    with tempfile.TemporaryDirectory() as tmp:
        print("PROBE " + json.dumps(part(tmp), sort_keys=True))
