"""Flag checks and the LR finder as Lightning 2.x behaves (tests_pytorch/trainer/test_dataloaders.py,
tuner/test_lr_finder.py): a bad batch limit is a ConfigError (MisconfigurationException);
``fast_dev_run=1`` reads back as True; lr_find takes num_training=1, a max_lr below min_lr,
and records a NaN loss for a step whose training_step returned None."""
from __future__ import annotations

import math

import pytest
import torch

import distengine as de
from distengine.utilities.exceptions import ConfigError, MisconfigurationException
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


@pytest.mark.parametrize("flag", ["limit_train_batches", "limit_val_batches", "val_check_interval", "overfit_batches"])
@pytest.mark.parametrize("value", [-0.1, 1.2])
def test_bad_batch_limit_is_config_error(tmp_path, flag, value):
    with pytest.raises(MisconfigurationException, match=flag):
        quiet_trainer(tmp_path, **{flag: value})
    with pytest.raises(ValueError):  # still a ValueError
        quiet_trainer(tmp_path, **{flag: value})


def test_fast_dev_run_one_reads_back_true(tmp_path):
    t = quiet_trainer(tmp_path, fast_dev_run=1)
    assert t.fast_dev_run is True and t.limit_train_batches == 1 and t.max_epochs == 1
    assert quiet_trainer(tmp_path, fast_dev_run=3).fast_dev_run == 3
    with pytest.raises(ConfigError):
        quiet_trainer(tmp_path, fast_dev_run=-1)


class LrModel(Regressor):
    def __init__(self, none_steps=()):
        super().__init__(optimizer="sgd", lr=0.01)
        self.none_steps = none_steps

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step in self.none_steps:
            return None
        return super().training_step(batch, batch_idx)


def _tuner(tmp_path):
    return de.Tuner(quiet_trainer(tmp_path, max_epochs=50))


def test_lr_find_none_step_is_nan_point(tmp_path):
    torch.manual_seed(0)
    finder = _tuner(tmp_path).lr_find(LrModel(none_steps=(5, 12)), loader(regression_data(), batch_size=8),
                                      num_training=20, early_stop_threshold=None)
    assert len(finder.results["lr"]) == len(finder.results["loss"]) == 20
    assert math.isnan(finder.results["loss"][5]) and math.isnan(finder.results["loss"][12])
    assert math.isfinite(finder.results["loss"][13])


def test_lr_find_one_step_and_downward_sweep(tmp_path):
    model = LrModel()
    finder = _tuner(tmp_path).lr_find(model, loader(regression_data()), num_training=1, update_attr=True)
    assert finder.suggestion() is None and model.lr == 0.01  # too few points: unchanged
    finder = _tuner(tmp_path).lr_find(LrModel(), loader(regression_data()), min_lr=1.0, max_lr=1e-8, num_training=3)
    assert all(1e-8 <= lr <= 1.0 for lr in finder.results["lr"])


def test_lr_find_two_optimizers_is_config_error(tmp_path):
    class Two(LrModel):
        automatic_optimization = False

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(MisconfigurationException, match="single optimizer"):
        _tuner(tmp_path).lr_find(Two(), loader(regression_data()))


@pytest.mark.parametrize("interval, expected", [(1 / 3, [5, 10, 15]), (5, [5, 10, 15]), (4, [4, 8, 12, 16])])
def test_val_check_interval_last_batch_validates_only_on_the_interval(tmp_path, interval, expected):
    """Lightning validates after every n-th batch only: 16 batches every 5 give 5, 10, 15 (no
    extra validation at the end of the epoch); every 4 ends on 16."""
    seen = []

    class M(Regressor):
        def on_validation_epoch_start(self):
            if not self.trainer.sanity_checking:
                seen.append(self.trainer.global_step)

    trainer = quiet_trainer(tmp_path, max_epochs=1, val_check_interval=interval, limit_val_batches=1,
                            num_sanity_val_steps=0)
    trainer.fit(M(), loader(regression_data(n=96), batch_size=6), loader(regression_data(), batch_size=96))
    assert seen == expected


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(list(regression_data(n=32)))


class _NoLen:
    """A loader whose __len__ raises NotImplementedError (Lightning treats it as having no length)."""

    def __init__(self):
        self.dl = loader(regression_data(n=32), batch_size=8)

    def __iter__(self):
        return iter(self.dl)

    def __len__(self):
        raise NotImplementedError


class _Tested(Regressor):
    def test_step(self, batch, batch_idx):
        self.log("test_seen", 1.0, reduce_fx="sum")


def test_loader_without_length_in_test_and_fit(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_test_batches=2)
    out = trainer.test(_Tested(), dataloaders=torch.utils.data.DataLoader(_Stream(), batch_size=8), verbose=False)
    assert trainer.num_test_batches == [2] and out == [{"test_seen": 2.0}]
    trainer = quiet_trainer(tmp_path, max_steps=3, max_epochs=1, limit_val_batches=0)
    trainer.fit(Regressor(), _NoLen())
    assert trainer.global_step == 3
    with pytest.raises(MisconfigurationException, match="limit_val_batches=0.5"):
        quiet_trainer(tmp_path, limit_val_batches=0.5).validate(Regressor(), _NoLen(), verbose=False)


def test_loggers_get_metrics_by_keyword(tmp_path):
    """Lightning calls ``logger.log_metrics(metrics=..., step=...)``; a mock or a logger with
    keyword-only parameters sees the same call."""
    from distengine.loggers.base import Logger

    class KwOnly(Logger):
        def __init__(self):
            super().__init__()
            self.calls = []

        @property
        def name(self):
            return "kw"

        @property
        def version(self):
            return 0

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, *, metrics, step):
            self.calls.append((dict(metrics), step))

    lg = KwOnly()
    trainer = quiet_trainer(tmp_path, logger=lg, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                            log_every_n_steps=1)
    trainer.fit(Regressor(), loader(regression_data()), loader(regression_data()))
    assert [step for _, step in lg.calls if "train_loss" in _] == [0, 1]


@pytest.mark.parametrize("value", [None, "foo", [1, 2, 3], {"a": 1}])
def test_log_of_a_non_number_names_the_value(tmp_path, value):
    class M(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("foo", value)
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=f"self.log\\('foo', {__import__('re').escape(repr(value))}\\)"):
        quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(M(), loader(regression_data()))


class _OwnScheduler:
    """A scheduler outside torch's interface (no step()): fine when the user steps it."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_manual_optimization_takes_any_scheduler_and_plateau_without_monitor(tmp_path):
    class M(Regressor):
        automatic_optimization = False

        def __init__(self, sched):
            super().__init__()
            self.sched = sched

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))
            opt.step()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [self.sched(opt)]

    fit = dict(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    quiet_trainer(tmp_path, **fit).fit(M(_OwnScheduler), loader(regression_data()))
    quiet_trainer(tmp_path, **fit).fit(M(torch.optim.lr_scheduler.ReduceLROnPlateau), loader(regression_data()))
    with pytest.warns(RuntimeWarning, match="'monitor'"):
        t = quiet_trainer(tmp_path, **fit)
        t.fit(M(lambda o: {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o), "monitor": "x",
                           "interval": "step"}), loader(regression_data()))
    assert t.lr_scheduler_configs[0].interval == "step"
    with pytest.raises(ConfigError, match="_OwnScheduler"):  # automatic optimization steps it: refused
        quiet_trainer(tmp_path, **fit).fit(type("A", (M,), {"automatic_optimization": True,
                                                             "training_step": Regressor.training_step})(
            _OwnScheduler), loader(regression_data()))


def test_log_reduce_fx_name_in_any_case(tmp_path):
    class M(Regressor):
        def training_step(self, batch, batch_idx):
            self.log("n", 1.0, on_step=False, on_epoch=True, reduce_fx="SUM")
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(M(), loader(regression_data()))
    assert float(trainer.callback_metrics["n"]) == 3.0


def test_val_check_interval_beyond_the_epoch_is_config_error(tmp_path):
    """Lightning refuses a whole-number val_check_interval larger than the epoch (no batch of it
    would validate): a ConfigError (a ValueError, as there) naming the interval and the epoch length."""
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, val_check_interval=10)
    with pytest.raises(ConfigError, match=r"val_check_interval=10\).*training batches per epoch \(4\)"):
        trainer.fit(Regressor(), loader(regression_data()), loader(regression_data()))
