"""Every bad input gets a clear one-line error before any epoch starts."""
from __future__ import annotations

import datetime
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import build as callbacks_build
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class NoStep(de.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_error(tmp_path, module, data="default", **kw):
    trainer = quiet_trainer(tmp_path, max_epochs=1, **kw)
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        trainer.fit(module, loader(regression_data()) if data == "default" else data)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    return message


def test_module_without_training_step(tmp_path):
    assert "does not define training_step()" in _fit_error(tmp_path, NoStep())


def test_fit_without_training_data(tmp_path):
    assert "no training data" in _fit_error(tmp_path, Regressor(), data=None)


def test_empty_dataloader(tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, 1)), batch_size=4)
    assert "is empty (len 0)" in _fit_error(tmp_path, Regressor(), data=empty)


@pytest.mark.parametrize("returned,expected", [
    ("sgd", "returned str"),
    ({"lr_scheduler": None}, "without 'optimizer'"),
    ([torch.nn.Linear(1, 1)], "not a torch.optim.Optimizer"),
])
def test_configure_optimizers_unusable(tmp_path, returned, expected):
    class Bad(Regressor):
        def configure_optimizers(self):
            return returned

    assert expected in _fit_error(tmp_path, Bad())


def test_gpus_that_are_not_there():
    with pytest.raises(ValueError, match=r"asked for 2 GPU\(s\) but 0 GPU\(s\) are available"):
        de.Trainer(accelerator="gpu", devices=2)
    with pytest.raises(ValueError, match=r"GPU indices \[0, 3\] but 0 GPU\(s\) are available"):
        de.Trainer(gpus=[0, 3])


def test_unknown_precision():
    with pytest.raises(ValueError, match="precision='fp8' is not supported; use one of"):
        de.Trainer(precision="fp8")


def test_max_epochs_below_min_epochs():
    with pytest.raises(ValueError, match="min_epochs=5 is larger than max_epochs=2"):
        de.Trainer(max_epochs=2, min_epochs=5)


def test_loss_not_a_scalar(tmp_path):
    class VectorLoss(Regressor):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self.net(x) - y) ** 2

    assert "must be a scalar tensor, got (16, 1)" in _fit_error(tmp_path, VectorLoss())


def test_unknown_trainer_flag():
    with pytest.raises(TypeError, match=r"^Trainer got an unknown flag 'max_epoch'; did you mean 'max_epochs'\?$"):
        de.Trainer(max_epoch=3)


def test_devices_contradicting_launched_world(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"devices=4\) contradicts the launched job, which runs 2"):
        de.Trainer(accelerator="cpu", devices=4)


def test_nonfinite_loss_names_step_and_rank(tmp_path):
    class Diverging(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if batch_idx == 2 else loss

    with pytest.raises(FloatingPointError, match="global step 2 .*on rank 0"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Diverging(), loader(regression_data()))
    module = Diverging()
    trainer = quiet_trainer(tmp_path, max_epochs=1, on_nonfinite_loss="skip")
    trainer.fit(module, loader(regression_data()))
    assert trainer._parts.loop_state.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_devices_two_in_plain_python_without_script_says_how_to_launch(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["-c"])
    trainer = de.Trainer(accelerator="cpu", devices=2, logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="distengine launch --cpus 2"):
        trainer.fit(Regressor(), loader(regression_data()))


def test_device_side_nonfinite_watch_reports_the_first_bad_step():
    """The accelerator path records the first non-finite step on the device (no per-step sync)
    and raises when read; exercised here with CPU tensors."""
    from types import SimpleNamespace

    from distengine.loop import NonFiniteWatch

    t = SimpleNamespace(progress=SimpleNamespace(epoch=0), global_rank=0)
    watch = NonFiniteWatch(torch.device("cpu"))
    watch.update(torch.tensor(1.0), 0)
    watch.check(t)  # nothing yet
    watch.update(torch.tensor(float("inf")), 5)
    watch.update(torch.tensor(float("nan")), 6)
    with pytest.raises(FloatingPointError, match="global step 5 .*on rank 0"):
        watch.check(t)


def test_skipped_fp16_steps_are_logged(tmp_path):
    from tests.core.test_one_x_style import RecordingLogger

    class Exploding(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * (float("inf") if batch_idx == 3 else 1.0)

    logger = RecordingLogger()
    trainer = quiet_trainer(tmp_path, max_epochs=1, precision="16-mixed", logger=logger, log_every_n_steps=1)
    trainer.fit(Exploding(), loader(regression_data()))
    skipped = [m["skipped_steps"] for _, m in logger.rows if "skipped_steps" in m]
    assert skipped == sorted(skipped) and skipped[-1] == trainer.precision_plugin.skipped_steps >= 1


class SkipsBatches(Regressor):
    """training_step returns None (Lightning: skip this batch) for the batches in ``skip``."""

    def __init__(self, skip):
        super().__init__()
        self.skip = skip

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return None if self.skip(batch_idx) else loss


def _no_step_warnings(tmp_path, module, **kw):
    before = [p.detach().clone() for p in module.parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = quiet_trainer(tmp_path, max_epochs=2, **kw)
        trainer.fit(module, loader(regression_data()))
    unchanged = all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    return [str(w.message) for w in caught if "trained nothing" in str(w.message)], unchanged, trainer


def test_training_step_returning_none_on_every_batch_warns_once_per_epoch(tmp_path):
    messages, unchanged, trainer = _no_step_warnings(tmp_path, SkipsBatches(lambda i: True))
    # Lightning 2.6: the optimizer step is still taken (without gradients) and counted
    assert unchanged and trainer.global_step == 12
    assert len(messages) == 2, messages  # one per epoch, not one per batch
    assert messages[0].startswith("epoch 0 trained nothing (training_step returned None for all 6 "
                                  "batches)") and messages[1].startswith("epoch 1 ")
    assert "return the loss" in messages[0] and "\n" not in messages[0]


def test_returning_none_for_some_batches_is_a_quiet_skip(tmp_path):
    messages, unchanged, trainer = _no_step_warnings(tmp_path, SkipsBatches(lambda i: i % 2 == 0))
    assert messages == [] and not unchanged and trainer.global_step == 12
    # accumulation: a window whose last micro-batch is skipped steps with the first one's gradients
    messages, unchanged, trainer = _no_step_warnings(tmp_path, SkipsBatches(lambda i: i % 2 == 1),
                                                     accumulate_grad_batches=2)
    assert messages == [] and not unchanged and trainer.global_step == 6


# Every numeric flag: values Lightning 2.x refuses (or that would run forever, like
# max_epochs=-5), each of which must stop Trainer(...) itself, before any work, with one line
# that names the flag and the value.
BAD_FLAG_VALUES = [
    ("max_epochs", -5), ("max_epochs", -2), ("max_epochs", 2.5), ("max_epochs", "10"),
    ("min_epochs", -3), ("min_epochs", 1.5),
    ("max_steps", -5), ("max_steps", 10.5), ("max_steps", "1000"),
    ("min_steps", -2), ("min_steps", float("nan")),
    ("limit_train_batches", -1), ("limit_train_batches", 1.5), ("limit_train_batches", -0.5),
    ("limit_val_batches", -3), ("limit_val_batches", 2.5), ("limit_val_batches", "all"),
    ("limit_test_batches", -1), ("limit_test_batches", float("nan")),
    ("limit_predict_batches", -2), ("limit_predict_batches", 1.01),
    ("overfit_batches", -1), ("overfit_batches", 1.5),
    ("val_check_interval", -0.5), ("val_check_interval", 1.5), ("val_check_interval", 0),
    ("val_check_interval", -3), ("val_check_interval", "00:00:xx:00"),
    ("check_val_every_n_epoch", 0), ("check_val_every_n_epoch", -1), ("check_val_every_n_epoch", 1.5),
    ("log_every_n_steps", -1), ("log_every_n_steps", 2.5),
    ("accumulate_grad_batches", 0), ("accumulate_grad_batches", -2), ("accumulate_grad_batches", 1.5),
    ("accumulate_grad_batches", {0: 4}), ("accumulate_grad_batches", None),
    ("gradient_clip_val", -1.0), ("gradient_clip_val", float("inf")), ("gradient_clip_val", "1.0"),
    ("num_sanity_val_steps", -2), ("num_sanity_val_steps", 0.5),
    ("max_time", "-00:01:00:00"), ("max_time", "1 hour"), ("max_time", datetime.timedelta(seconds=-5)),
    ("max_time", {"hours": -1}), ("max_time", {"hourz": 1}), ("max_time", [1, 2]), ("max_time", 0),
    ("fast_dev_run", -1), ("fast_dev_run", 1.5),
]


@pytest.mark.parametrize("flag, value", BAD_FLAG_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_FLAG_VALUES])
def test_bad_numeric_flag_is_refused_by_the_constructor(tmp_path, monkeypatch, flag, value):
    def no_work(*args, **kwargs):
        raise AssertionError("the Trainer started work before refusing the flag")

    monkeypatch.setattr(callbacks_build, "build_callbacks", no_work)  # the first part it would build
    with pytest.raises((ValueError, TypeError)) as info:
        de.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), **{flag: value})
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"Trainer({flag}={value!r}): "), message
    assert f"for example {flag}=" in message or "distengine" in message, message  # says what to pass


GOOD_FLAG_VALUES = [
    (dict(max_epochs=-1), dict(max_epochs=-1)), (dict(max_epochs=0), dict(max_epochs=0)),
    (dict(max_epochs=3.0), dict(max_epochs=3)), (dict(max_steps=None), dict(max_steps=-1)),
    (dict(max_steps=-1, max_epochs=None), dict(max_steps=-1, max_epochs=None)),  # 1000 once a fit starts
    (dict(min_epochs=-1), dict(min_epochs=0)), (dict(min_steps=None), dict(min_steps=0)),
    (dict(limit_train_batches=1.0, limit_val_batches=0.0, limit_test_batches=5.0, limit_predict_batches=1),
     dict(limits={"train": 1.0, "val": 0.0, "test": 5, "predict": 1})),
    (dict(val_check_interval=1), dict(val_check_interval=1)),
    (dict(val_check_interval=100.0), dict(val_check_interval=100)),
    (dict(check_val_every_n_epoch=None), dict(check_val_every_n_epoch=None)),  # Lightning: no epoch gate
    (dict(log_every_n_steps=0), dict(log_every_n_steps=0)),
    (dict(log_every_n_steps=None), dict(log_every_n_steps=50)),
    (dict(accumulate_grad_batches=4.0), dict(accumulate_grad_batches=4)),
    (dict(gradient_clip_val=0), dict(gradient_clip_val=0)), (dict(gradient_clip_val=1), dict(gradient_clip_val=1)),
    (dict(num_sanity_val_steps=-1), dict(num_sanity_val_steps=float("inf"))),  # as Lightning reads it back
    (dict(max_time="00:12:00:00"), {}), (dict(max_time={"days": 1, "hours": 2}), {}),
    (dict(max_time=datetime.timedelta(minutes=5)), {}), (dict(max_time=90.5), {}),
    (dict(fast_dev_run=2), dict(fast_dev_run=2)), (dict(fast_dev_run=True), dict(fast_dev_run=True)),
    (dict(fast_dev_run=1), dict(fast_dev_run=True)),  # Lightning: 1 reads back as True
]


@pytest.mark.parametrize("flags, expected", GOOD_FLAG_VALUES, ids=[str(f) for f, _ in GOOD_FLAG_VALUES])
def test_valid_lightning_values_are_accepted(tmp_path, flags, expected):
    trainer = de.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), logger=False, **flags)
    for name, value in expected.items():
        assert getattr(trainer, name) == value and type(getattr(trainer, name)) is type(value), name


def test_devices_none_means_auto_as_in_lightning_1x(tmp_path):
    # Lightning 1.9.5's default devices=None (what a 1.x argparse script passes) picks the
    # devices automatically; it used to fail with int(None)'s raw TypeError here
    auto = de.Trainer(devices="auto", accelerator="cpu", logger=False, default_root_dir=str(tmp_path))
    none = de.Trainer(devices=None, accelerator="cpu", logger=False, default_root_dir=str(tmp_path))
    assert (none.accelerator, none.num_devices) == (auto.accelerator, auto.num_devices) == ("cpu", 1)


def test_returning_none_under_a_grad_scaler_skips_the_step_but_counts_it(tmp_path):
    """Lightning's MixedPrecision.optimizer_step: after a skipped backward no scaler.step /
    update (the window's earlier gradients are dropped), yet global_step counts the step."""
    module = SkipsBatches(lambda i: i % 2 == 1)  # the last micro-batch of every window
    messages, unchanged, trainer = _no_step_warnings(tmp_path, module, accumulate_grad_batches=2,
                                                     precision="16-mixed")
    assert unchanged and trainer.global_step == 6 and messages == []
    assert trainer.precision_plugin.scaler.get_scale() == 2.0 ** 16  # never updated
