"""Timer: duration parsing, stop on budget, per-stage times, resume from state."""
from datetime import timedelta
from types import SimpleNamespace

import pytest

from distengine.callbacks import timer as timer_mod
from distengine.callbacks.timer import Timer, parse_duration
from tests.callbacks.fakes import FakeTrainer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(timer_mod, "time", SimpleNamespace(monotonic=c))
    return c


@pytest.mark.parametrize("value, seconds", [
    ("00:00:01:30", 90), ("01:02:00:00", 26 * 3600), (timedelta(minutes=2), 120),
    ({"hours": 1, "minutes": 1}, 3660), (5, 5),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value).total_seconds() == seconds


@pytest.mark.parametrize("value, exc, match", [
    ("1:30", ValueError, "DD:HH:MM:SS"), ({"hourz": 1}, ValueError, "timedelta fields"),
    ([1], TypeError, "not supported"), ("00:00:00:00", ValueError, "positive"),
])
def test_parse_duration_errors(value, exc, match):
    with pytest.raises(exc, match=match):
        Timer(duration=value)


def test_bad_interval():
    with pytest.raises(ValueError, match="'step' or 'epoch'"):
        Timer(interval="batch")


def test_stops_after_duration_step_interval(clock, capsys):
    timer = Timer(duration={"seconds": 10})
    trainer = FakeTrainer()
    timer.on_fit_start(trainer, None)
    timer.on_train_start(trainer, None)
    for step in range(100):
        clock.now += 1.0
        timer.on_train_batch_end(trainer, None, None, None, step)
        if trainer.should_stop:
            break
    assert step == 9  # 10 s elapsed after the tenth batch
    assert "Time limit reached" in capsys.readouterr().err
    timer.on_train_end(trainer, None)
    assert timer.time_elapsed("train") == pytest.approx(10.0)
    assert timer.end_time("train") == clock.now and timer.start_time("train") == 1000.0


def test_epoch_interval_checks_only_at_epoch_end(clock):
    timer = Timer(duration={"seconds": 1}, interval="epoch", verbose=False)
    trainer = FakeTrainer()
    timer.on_train_start(trainer, None)
    clock.now += 5
    timer.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    timer.on_train_epoch_end(trainer, None)
    assert trainer.should_stop


def test_without_duration_only_measures(clock):
    timer = Timer()
    trainer = FakeTrainer()
    timer.on_train_start(trainer, None)
    timer.on_validation_start(trainer, None)
    clock.now += 3
    timer.on_validation_end(trainer, None)
    timer.on_validation_start(trainer, None)  # a second validation run accumulates
    clock.now += 2
    timer.on_validation_end(trainer, None)
    timer.on_train_batch_end(trainer, None, None, None, 0)
    assert not trainer.should_stop
    assert timer.time_elapsed("validate") == pytest.approx(5.0)
    assert timer.time_elapsed("train") == pytest.approx(5.0)
    assert timer.time_remaining() is None
    assert timer.time_elapsed("test") == 0.0
    with pytest.raises(ValueError, match="unknown stage"):
        timer.time_elapsed("fit")


def test_sanity_check_validation_is_not_counted_as_validate(clock):
    timer = Timer()
    trainer = FakeTrainer(sanity_checking=True)
    timer.on_validation_start(trainer, None)
    clock.now += 4
    timer.on_validation_end(trainer, None)
    assert timer.time_elapsed("validate") == 0.0


def test_resume_continues_counting(clock):
    timer = Timer(duration={"seconds": 10}, verbose=False)
    trainer = FakeTrainer()
    timer.on_train_start(trainer, None)
    clock.now += 7
    state = timer.state_dict()
    assert state["time_elapsed"]["train"] == pytest.approx(7.0)

    resumed = Timer(duration={"seconds": 10}, verbose=False)
    resumed.load_state_dict(state)
    trainer2 = FakeTrainer()
    resumed.on_fit_start(trainer2, None)
    resumed.on_train_start(trainer2, None)
    clock.now += 2
    resumed.on_train_batch_end(trainer2, None, None, None, 0)
    assert not trainer2.should_stop and resumed.time_elapsed() == pytest.approx(9.0)
    clock.now += 1
    resumed.on_train_batch_end(trainer2, None, None, None, 1)
    assert trainer2.should_stop


def test_resumed_run_with_spent_budget_stops_at_fit_start(clock):
    timer = Timer(duration={"seconds": 10}, verbose=False)
    timer.load_state_dict({"time_elapsed": {"train": 12.0}})
    trainer = FakeTrainer()
    timer.on_fit_start(trainer, None)
    assert trainer.should_stop
