"""A failing Trainer call as in Lightning 2.6.6 (checked with the same scripts): each callback's
``on_exception(trainer, module, exc)`` and the datamodule's ``on_exception(exc)`` run once; a
``KeyboardInterrupt`` raised inside the run (a hook, a step) leaves the Trainer interrupted and
ends with ``SystemExit(1)`` after the hooks and teardown (it used to escape as a
KeyboardInterrupt, without the datamodule's hook). ``configure_optimizers`` returning None trains
with no optimizer (a UserWarning): every step runs forward and backward, global_step counts, the
weights stay as they were (it used to raise ConfigError)."""
from __future__ import annotations

import warnings

import pytest
import torch

import distengine as de
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class _Record(de.Callback):
    def __init__(self):
        self.seen = []

    def on_exception(self, trainer, module, exception):
        self.seen.append(exception)


class _Data(de.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.seen = []

    def train_dataloader(self):
        return loader(regression_data())

    def on_exception(self, exception):
        self.seen.append(exception)


class _Raises(Regressor):
    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def training_step(self, batch, batch_idx):
        raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt("raised by user code")])
def test_on_exception_once_for_callbacks_and_datamodule(tmp_path, exc):
    cb, dm = _Record(), _Data()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[cb])
    expected = SystemExit if isinstance(exc, KeyboardInterrupt) else RuntimeError
    with pytest.raises(expected) as info:
        trainer.fit(_Raises(exc), datamodule=dm)
    if expected is SystemExit:
        assert info.value.code == 1
    assert cb.seen == [exc] and dm.seen == [exc]
    assert trainer.interrupted and trainer.state.status == "interrupted"


def test_keyboard_interrupt_in_a_hook_then_another_call_works(tmp_path):
    class Stop(de.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            raise KeyboardInterrupt

    cb = _Record()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[Stop(), cb])
    with pytest.raises(SystemExit):
        trainer.fit(Regressor(), loader(regression_data()))
    assert len(cb.seen) == 1 and isinstance(cb.seen[0], KeyboardInterrupt) and trainer.interrupted
    trainer.validate(Regressor(), loader(regression_data()))
    assert not trainer.interrupted and len(cb.seen) == 1


def test_configure_optimizers_none_trains_without_updates(tmp_path):
    steps, backwards = [], []

    class NoOpt(Regressor):
        def training_step(self, batch, batch_idx):
            steps.append(batch_idx)
            return super().training_step(batch, batch_idx)

        def on_after_backward(self):
            backwards.append(True)

        def configure_optimizers(self):
            return None

    model = NoOpt()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path, max_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(regression_data()))
    assert any(issubclass(w.category, UserWarning) and "configure_optimizers returned None" in str(w.message)
               for w in caught)
    assert steps == [0, 1, 2] and len(backwards) == 3 and trainer.global_step == 3
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(trainer.optimizers) == 1 and trainer.lr_scheduler_configs == []


@pytest.mark.parametrize("real_signal", [False, True])
def test_keyboard_interrupt_in_validate_raised_or_a_real_ctrl_c(tmp_path, real_signal):
    """Raised by user code: SystemExit(1), as Lightning. A real Ctrl-C (SIGINT) outside fit keeps
    distengine's behaviour: the KeyboardInterrupt goes on (exit 130 under the launcher)."""
    import signal

    class Interrupts(Regressor):
        def validation_step(self, batch, batch_idx):
            if real_signal:
                signal.raise_signal(signal.SIGINT)
            raise KeyboardInterrupt

    cb = _Record()
    trainer = quiet_trainer(tmp_path, callbacks=[cb])
    # Python's own handler, as in a terminal: pytest started by a non-interactive shell in the
    # background inherits SIGINT ignored (the case of the test below)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt if real_signal else SystemExit):
            trainer.validate(Interrupts(), loader(regression_data()))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert len(cb.seen) == 1 and isinstance(cb.seen[0], KeyboardInterrupt) and trainer.interrupted


def test_sigint_ignored_at_start_stays_ignored_in_validate(tmp_path):
    """A process started with SIGINT ignored (``nohup``, ``cmd &`` in a script): a SIGINT during
    validate changes nothing, the run finishes, and SIGINT is still ignored afterwards."""
    import signal

    class SignalsItself(Regressor):
        def validation_step(self, batch, batch_idx):
            signal.raise_signal(signal.SIGINT)
            return super().validation_step(batch, batch_idx)

    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer = quiet_trainer(tmp_path)
        results = trainer.validate(SignalsItself(), loader(regression_data()))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert len(results) == 1 and not trainer.interrupted


def test_a_failing_setup_runs_on_exception_and_puts_the_signal_handlers_back(tmp_path):
    """A module whose ``setup`` raises: the call ends as a failing step does (before, the fit's
    SIGINT handler stayed installed for the rest of the process and on_exception never ran)."""
    import signal

    class FailsInSetup(Regressor):
        def setup(self, stage):
            raise RuntimeError("no data here")

    before = signal.getsignal(signal.SIGINT)
    cb = _Record()
    with pytest.raises(RuntimeError, match="no data here"):
        quiet_trainer(tmp_path, callbacks=[cb]).fit(FailsInSetup(), loader(regression_data()))
    assert signal.getsignal(signal.SIGINT) is before
    assert len(cb.seen) == 1 and isinstance(cb.seen[0], RuntimeError)
