"""Measure the time spent in each stage and stop training when a time budget is spent.

The Trainer's ``max_time`` flag adds one of these. Like every stop reason, the Timer only
sets ``trainer.should_stop`` on the rank whose clock ran out; the Trainer all-reduces the
flag, so all ranks stop at the same step. The elapsed training time is saved in checkpoints,
so a resumed run keeps counting from where it stopped instead of starting a fresh budget.

Example::

    from distengine.callbacks import Timer

    timer = Timer(duration="00:12:00:00")          # 12 hours
    trainer = de.Trainer(callbacks=[timer])
    trainer.fit(model)
    print(timer.time_elapsed("train"), timer.time_elapsed("validate"))
"""
from __future__ import annotations

import re
import sys
import time
from datetime import timedelta
from typing import Any

from distengine.callbacks.base import Callback
from distengine.utilities.exceptions import ConfigError, ConfigTypeError

#: The stages a Timer measures (Lightning's running-stage names).
STAGES = ("train", "sanity_check", "validate", "test", "predict")


def parse_duration(duration: str | timedelta | dict[str, float] | float | None) -> timedelta | None:
    """Turn ``"DD:HH:MM:SS"``, a ``timedelta``, a dict of timedelta fields or seconds into a timedelta.

    >>> parse_duration("00:01:30:00")
    datetime.timedelta(seconds=5400)
    """
    if duration is None or isinstance(duration, timedelta):
        result = duration
    elif isinstance(duration, str):
        m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", duration)
        if not m:
            raise ConfigError(f"Timer duration {duration!r} is not in the form 'DD:HH:MM:SS' "
                              "(days:hours:minutes:seconds, e.g. '00:12:00:00')")
        days, hours, minutes, seconds = m.groups()
        result = timedelta(days=int(days), hours=int(hours), minutes=int(minutes), seconds=float(seconds))
    elif isinstance(duration, dict):
        try:
            result = timedelta(**duration)
        except TypeError as exc:
            raise ConfigError(f"Timer duration {duration!r}: the keys must be timedelta fields "
                              f"(days, hours, minutes, seconds, ...): {exc}") from None
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool):
        result = timedelta(seconds=duration)
    else:
        raise ConfigTypeError(f"Timer duration of type {type(duration).__name__} is not supported; pass "
                              "'DD:HH:MM:SS', a datetime.timedelta, a dict such as {'hours': 2}, or seconds")
    if result is not None and result.total_seconds() <= 0:
        raise ConfigError(f"Timer duration {duration!r} must be positive")
    return result


class Timer(Callback):
    """Track elapsed time per stage and request a stop once ``duration`` has passed.

    Args:
        duration: the training-time budget; ``None`` only measures.
        interval: check the budget after every training ``"step"`` or every ``"epoch"``.
        verbose: print a line on rank zero when the budget is spent.
    """

    def __init__(self, duration: str | timedelta | dict[str, float] | None = None,
                 interval: str = "step", verbose: bool = True) -> None:
        if interval not in ("step", "epoch"):
            raise ConfigError(f"Timer(interval={interval!r}): interval must be 'step' or 'epoch'")
        self.duration = parse_duration(duration)
        self.interval = interval
        self.verbose = verbose
        self._start: dict[str, float | None] = {s: None for s in STAGES}
        self._end: dict[str, float | None] = {s: None for s in STAGES}
        # time carried over from a checkpoint, per stage
        self._offset: dict[str, float] = {s: 0.0 for s in STAGES}

    # ------------------------------------------------------------------ queries
    def start_time(self, stage: str = "train") -> float | None:
        """``time.monotonic()`` when ``stage`` last started, or None."""
        return self._start[_check_stage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        """``time.monotonic()`` when ``stage`` last ended, or None while it runs."""
        return self._end[_check_stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage``, including time restored from a checkpoint."""
        stage = _check_stage(stage)
        start, end = self._start[stage], self._end[stage]
        offset = self._offset[stage]
        if start is None:
            return offset
        return offset + ((end if end is not None else time.monotonic()) - start)

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left of the budget, or None without a duration."""
        if self.duration is None:
            return None
        return self.duration.total_seconds() - self.time_elapsed(stage)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {s: self.time_elapsed(s) for s in STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        elapsed = state_dict.get("time_elapsed", {})
        for stage in STAGES:
            self._offset[stage] = float(elapsed.get(stage, 0.0))
            # a checkpoint restored mid-stage continues from the saved amount; the clock of the
            # current run (if any) restarts so the same seconds are not counted twice
            if self._start[stage] is not None and self._end[stage] is None:
                self._start[stage] = time.monotonic()

    # ------------------------------------------------------------------ hooks
    def _begin(self, stage: str) -> None:
        if self._start[stage] is not None and self._end[stage] is not None:
            # a stage that runs again (validation each epoch) accumulates its time
            self._offset[stage] += self._end[stage] - self._start[stage]
        self._start[stage] = time.monotonic()
        self._end[stage] = None

    def _finish(self, stage: str) -> None:
        self._end[stage] = time.monotonic()

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._begin("train")

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self._finish("train")

    def on_sanity_check_start(self, trainer: Any, module: Any) -> None:
        self._begin("sanity_check")

    def on_sanity_check_end(self, trainer: Any, module: Any) -> None:
        self._finish("sanity_check")

    def on_validation_start(self, trainer: Any, module: Any) -> None:
        if not getattr(trainer, "sanity_checking", False):
            self._begin("validate")

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if not getattr(trainer, "sanity_checking", False):
            self._finish("validate")

    def on_test_start(self, trainer: Any, module: Any) -> None:
        self._begin("test")

    def on_test_end(self, trainer: Any, module: Any) -> None:
        self._finish("test")

    def on_predict_start(self, trainer: Any, module: Any) -> None:
        self._begin("predict")

    def on_predict_end(self, trainer: Any, module: Any) -> None:
        self._finish("predict")

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        # a resumed run whose budget is already spent should not train at all
        self._check(trainer)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.interval == "step":
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self.interval == "epoch":
            self._check(trainer)

    def _check(self, trainer: Any) -> None:
        if self.duration is None:
            return
        elapsed = self.time_elapsed("train")
        if elapsed < self.duration.total_seconds():
            return
        if not getattr(trainer, "should_stop", False) and self.verbose and getattr(trainer, "is_global_zero", True):
            print(f"Time limit reached: {timedelta(seconds=int(elapsed))} elapsed of "
                  f"{self.duration}. Requesting a stop.", file=sys.stderr, flush=True)
        trainer.should_stop = True


def _check_stage(stage: Any) -> str:
    stage = getattr(stage, "value", stage)  # accept enum-like stages
    if stage == "validation":
        stage = "validate"
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return stage
