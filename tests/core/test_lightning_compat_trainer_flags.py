"""Trainer flags behave as in Lightning 2.6: errors, read-back values, info lines,
``barebones``, and when ``fit`` validates (``val_check_interval``, ``check_val_every_n_epoch``)."""
from __future__ import annotations

import datetime
import logging
import math
from unittest import mock

import pytest
import torch

import distengine as de
from distengine.trainer_states import TrainerFn
from distengine.utilities.exceptions import MisconfigurationException
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


@pytest.mark.parametrize("flags", [dict(max_epochs=-100), dict(max_steps=-2), dict(check_val_every_n_epoch=1.2),
                                   dict(limit_val_batches=-1), dict(val_check_interval=0.5,
                                                                    check_val_every_n_epoch=None)])
def test_bad_flags_raise_misconfiguration(tmp_path, flags):
    with pytest.raises(MisconfigurationException, match=next(iter(flags))):
        quiet_trainer(tmp_path, **flags)


def test_num_sanity_val_steps_minus_one_reads_inf_and_runs_every_batch(tmp_path):
    seen = []

    class M(Regressor):
        def validation_step(self, batch, batch_idx):
            if self.trainer.sanity_checking:
                seen.append(batch_idx)

    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=-1, max_steps=1)
    assert trainer.num_sanity_val_steps == math.inf
    trainer.fit(M(), loader(regression_data()), loader(regression_data(n=48), batch_size=8))
    assert seen == list(range(6)) and trainer.num_sanity_val_batches == [6]


@pytest.mark.parametrize("flag", ["limit_train_batches", "limit_val_batches", "limit_test_batches",
                                  "limit_predict_batches", "overfit_batches", "val_check_interval"])
@pytest.mark.parametrize("value", [1, 1.0])
def test_batch_flag_given_as_one_logs_which_one(tmp_path, caplog, flag, value):
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path, **{flag: value})
    assert f"`Trainer({flag}={value})` was configured so" in caplog.text
    assert ("(an int counts batches)" if isinstance(value, int) else "(a float is a fraction)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path)
    assert "was configured so" not in caplog.text


def test_device_ids(tmp_path):
    assert quiet_trainer(tmp_path).device_ids == [0]
    assert quiet_trainer(tmp_path, devices=2).device_ids == [0, 1]


def test_state_fn_can_be_set_between_calls(tmp_path):
    trainer = quiet_trainer(tmp_path)
    assert trainer.state.fn is None
    trainer.state.fn = TrainerFn.TESTING
    assert trainer.state.fn == TrainerFn.TESTING and trainer.state.stage is None
    trainer.state.fn = "fit"
    assert trainer.state.fn == TrainerFn.FITTING


def test_logger_none_is_the_default_logger(tmp_path):
    assert len(de.Trainer(default_root_dir=str(tmp_path)).loggers) == 1
    assert len(de.Trainer(default_root_dir=str(tmp_path), logger=None).loggers) == 1
    assert de.Trainer(default_root_dir=str(tmp_path), logger=False).loggers == []


def test_barebones_turns_the_extras_off(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        trainer = de.Trainer(barebones=True, max_epochs=1, default_root_dir=str(tmp_path))
    assert "`Trainer(barebones=True)` mode" in caplog.text
    assert trainer.barebones and not trainer.loggers and not trainer.checkpoint_callbacks
    assert trainer.progress_bar_callback is None and trainer.callbacks == []
    assert trainer.log_every_n_steps == 0 and trainer.num_sanity_val_steps == 0 and not trainer.fast_dev_run
    model = Regressor()
    with pytest.warns(UserWarning, match=r"barebones=True\)` is configured"):
        trainer.fit(model, loader(regression_data()))
    assert trainer.global_step == 6 and "train_loss" not in trainer.callback_metrics


@pytest.mark.parametrize("flags", [dict(enable_checkpointing=True), dict(logger=True), dict(enable_progress_bar=True),
                                   dict(enable_model_summary=True), dict(log_every_n_steps=1),
                                   dict(num_sanity_val_steps=1), dict(fast_dev_run=1), dict(detect_anomaly=True),
                                   dict(profiler="simple")])
def test_barebones_refuses_what_it_turns_off(flags):
    (name, value), = flags.items()
    with pytest.raises(ValueError, match=rf"barebones=True, {name}={value!r}\)` was passed"):
        de.Trainer(barebones=True, **flags)


class _ValAt(Regressor):
    def __init__(self):
        super().__init__()
        self.at = []

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.at.append((self.trainer.current_epoch, self.trainer.global_step))


def _val_steps(tmp_path, **flags):
    model = _ValAt()
    trainer = quiet_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0, **flags)
    trainer.fit(model, loader(regression_data(n=10), batch_size=1), loader(regression_data(n=10), batch_size=5))
    return model.at


# the steps Lightning 2.6.6 validates at (10 batches per epoch)
@pytest.mark.parametrize(("flags", "expected"), [
    (dict(val_check_interval=1 / 3), [(0, 3), (0, 6), (0, 9), (1, 13), (1, 16), (1, 19)]),
    (dict(val_check_interval=4), [(0, 4), (0, 8), (1, 14), (1, 18)]),
    (dict(val_check_interval=0.5), [(0, 5), (0, 10), (1, 15), (1, 20)]),
    (dict(val_check_interval=3, check_val_every_n_epoch=None), [(0, 3), (0, 6), (0, 9), (1, 12), (1, 15), (1, 18)]),
    (dict(val_check_interval=0.5, check_val_every_n_epoch=2), [(1, 15), (1, 20)]),
])
def test_validation_runs_where_lightning_runs_it(tmp_path, flags, expected):
    assert _val_steps(tmp_path, **flags) == expected


def test_val_check_interval_longer_than_the_epoch_raises(tmp_path):
    with pytest.raises(ValueError, match="must be less than or equal to the number of the training batches"):
        _val_steps(tmp_path, val_check_interval=100)
    assert _val_steps(tmp_path, val_check_interval=12, check_val_every_n_epoch=None) == [(1, 12)]


@pytest.mark.parametrize("interval", ["00:00:00:04", {"seconds": 4}, datetime.timedelta(seconds=4)])
def test_time_based_val_check_interval(tmp_path, interval):
    clock = iter(range(1000))  # one second per reading of the clock
    with mock.patch("distengine.val_schedule.time.monotonic", side_effect=lambda: next(clock)):
        steps = _val_steps(tmp_path, val_check_interval=interval)
    # start at 0; a reading after each batch; a validation resets the clock (one more reading)
    assert steps == [(0, 4), (0, 8), (1, 12), (1, 16), (1, 20)]


def test_bad_time_based_val_check_interval(tmp_path):
    with pytest.raises(MisconfigurationException, match="val_check_interval"):
        quiet_trainer(tmp_path, val_check_interval="00:00:xx:00")
    torch.manual_seed(0)


def test_overrides_taking_args_kwargs_get_the_2x_arguments(tmp_path):
    """``configure_gradient_clipping(self, *args, **kwargs)`` / ``optimizer_step(self, *args,
    **kwargs)`` that call ``super()`` receive the 2.x arguments (no 1.x ``optimizer_idx``)."""
    norms, steps = [], []

    class M(Regressor):
        def configure_gradient_clipping(self, *args, **kwargs):
            super().configure_gradient_clipping(*args, **kwargs)
            norms.append(torch.norm(torch.stack([p.grad.norm() for p in self.parameters()])).item())

        def optimizer_step(self, *args, **kwargs):
            steps.append(len(args))
            return super().optimizer_step(*args, **kwargs)

    trainer = quiet_trainer(tmp_path, max_steps=2, gradient_clip_val=0.05, gradient_clip_algorithm="norm")
    trainer.fit(M(), loader(regression_data()))
    assert norms == pytest.approx([0.05, 0.05], rel=1e-4) and steps == [4, 4]


class _HP(Regressor):
    def __init__(self, lr: float = 0.05, width: int = 6):
        super().__init__(lr=lr)
        self.save_hyperparameters()


def test_load_from_checkpoint_hparams_file_and_strict(tmp_path):
    model = _HP(lr=0.5)
    model.extra = torch.nn.Linear(2, 2)  # a layer the class does not build
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, loader(regression_data()))
    path = str(tmp_path / "m.ckpt")
    trainer.save_checkpoint(path)
    with pytest.raises(Exception):
        _HP.load_from_checkpoint(path)
    assert _HP.load_from_checkpoint(path, strict=False).hparams["lr"] == 0.5
    (tmp_path / "hp.yaml").write_text("lr: 0.25\nwidth: 6\n")
    (tmp_path / "hp.csv").write_text("key,value\nlr,0.125\n")
    assert _HP.load_from_checkpoint(path, hparams_file=tmp_path / "hp.yaml", strict=False).hparams["lr"] == 0.25
    assert _HP.load_from_checkpoint(path, hparams_file=str(tmp_path / "hp.csv"), strict=False).lr == 0.125
    with pytest.warns(RuntimeWarning, match="does not exist"):
        loaded = _HP.load_from_checkpoint(path, hparams_file=str(tmp_path / "none.yaml"), strict=False)
    assert loaded.hparams["lr"] == 0.05  # the class defaults: the file replaces the checkpoint's values


@pytest.mark.parametrize(("flags", "at_fit"), [({}, 1000), (dict(max_steps=2), -1), (dict(max_time="00:00:10:00"), -1),
                                               (dict(callbacks=[de.callbacks.Timer("00:00:10:00")]), -1)])
def test_max_epochs_unset_reads_none_until_fit(tmp_path, flags, at_fit):
    seen = []

    class M(Regressor):
        def on_fit_start(self):
            seen.append(self.trainer.max_epochs)
            self.trainer.should_stop = True

    trainer = quiet_trainer(tmp_path, limit_train_batches=1, **flags)
    assert trainer.max_epochs is None and trainer.max_steps == flags.get("max_steps", -1)
    trainer.fit(M(), loader(regression_data()))
    assert seen == [at_fit] and trainer.max_epochs == at_fit


def test_fast_dev_run_dummy_logger_limits_and_skipped_tuner(tmp_path):
    from distengine.loggers import CSVLogger
    from distengine.loggers.logger import DummyLogger
    from distengine.tuner import Tuner

    class M(Regressor):
        def training_step(self, batch, batch_idx):
            self.logger.experiment.add_histogram("w", self.net[0].weight)  # any experiment call
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, fast_dev_run=2, logger=CSVLogger(str(tmp_path)), val_check_interval=2)
    assert isinstance(trainer.logger, DummyLogger) and trainer.max_steps == 2 and trainer.max_epochs == 1
    assert trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1
    trainer.fit(M(), loader(regression_data()), loader(regression_data()))
    assert trainer.global_step == 2 and not list(tmp_path.glob("lightning_logs*"))
    assert quiet_trainer(tmp_path, fast_dev_run=True, logger=False).loggers == []
    model = M()
    model.lr = 0.1
    with pytest.warns(UserWarning, match="fast_dev_run"):
        assert Tuner(trainer).lr_find(model) is None
    with pytest.warns(UserWarning, match="fast_dev_run"):
        assert Tuner(trainer).scale_batch_size(model) is None


def test_ckpt_path_missing_file_and_last_with_nothing_saved(tmp_path):
    model = Regressor()
    checkpoint = de.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "c"))
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[checkpoint])
    with pytest.warns(UserWarning, match="ckpt_path='last' found no checkpoint"):
        trainer.fit(model, loader(regression_data()), ckpt_path="last")
    assert trainer.ckpt_path is None and trainer.global_step == 1
    with pytest.raises(FileNotFoundError, match="random.ckpt"):
        trainer.validate(model, loader(regression_data()), ckpt_path="random.ckpt")
    fresh = quiet_trainer(tmp_path / "f")
    with pytest.warns(UserWarning, match="ckpt_path='last' found no checkpoint"):
        out = fresh.validate(model, loader(regression_data()), ckpt_path="last", verbose=False)
    assert "val_loss" in out[0] and fresh.ckpt_path is None


def test_limit_train_batches_zero_trains_nothing(tmp_path):
    model = Regressor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=0.0, limit_val_batches=0.2)
    trainer.fit(model, loader(regression_data()), loader(regression_data()))
    assert trainer.state.finished and trainer.current_epoch == 0 and trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_no_model_errors(tmp_path):
    trainer = quiet_trainer(tmp_path)
    for fn in (trainer.validate, trainer.test, trainer.predict):
        with pytest.raises(TypeError, match="needs a model"):
            fn()
    with pytest.raises(AttributeError, match="save_checkpoint needs a model"):
        trainer.save_checkpoint(str(tmp_path / "x.ckpt"))


def test_fast_dev_run_does_not_check_early_stopping_nor_make_the_checkpoint_folder(tmp_path):
    stopper = de.callbacks.EarlyStopping(monitor="not_logged")  # would fail: the metric does not exist
    checkpoint = de.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpts"))
    trainer = quiet_trainer(tmp_path, fast_dev_run=2, callbacks=[stopper, checkpoint])
    trainer.fit(Regressor(), loader(regression_data()), loader(regression_data()))
    assert trainer.global_step == 2 and not trainer.should_stop and not (tmp_path / "ckpts").exists()


def test_freeze_and_unfreeze_return_the_module():
    model = Regressor()
    assert model.freeze() is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.unfreeze() is model and model.training
    assert all(p.requires_grad for p in model.parameters())
