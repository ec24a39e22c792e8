"""``trainer.state`` as Lightning code reads it (``pytorch_lightning.trainer.states``):
``state.fn`` (the user-facing call: fit, validate, test, predict), ``state.stage`` (what runs
now: training, sanity checking, validating, ...), ``state.status`` (initializing, running,
finished, interrupted) and ``state.finished``/``state.stopped``.

Example::

    from distengine.trainer_states import RunningStage, TrainerFn
    if trainer.state.fn == TrainerFn.FITTING and trainer.state.stage == RunningStage.VALIDATING: ...

The Trainer keeps its own plain state (distengine/state.py); :class:`TrainerState` is a view of
it, computed when read, so nothing in the loop writes Lightning's enums.
"""
from __future__ import annotations

from typing import Any

from distengine.utilities.enums import LightningEnum

__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]


class TrainerStatus(LightningEnum):
    """Where the Trainer is in its life: created, running a call, done, or stopped by an interrupt."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        return self in (self.FINISHED, self.INTERRUPTED)


class TrainerFn(LightningEnum):
    """The user-facing Trainer call (kept after it returns, as in Lightning)."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(LightningEnum):
    """What runs now; ``None`` between calls."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (self.VALIDATING, self.TESTING, self.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str | None:
        return "val" if self in (self.VALIDATING, self.SANITY_CHECKING) else self.value


class TrainerState:
    """Lightning's ``TrainerState`` (``fn``, ``stage``, ``status``, ``finished``, ``stopped``),
    read from the Trainer's status and the stage its metric store is in."""

    __slots__ = ("_status", "_results")

    def __init__(self, status: Any, results: Any) -> None:
        self._status, self._results = status, results

    @property
    def fn(self) -> TrainerFn | None:
        fn = self._status.stage or self._status.last_fn
        return None if fn is None else TrainerFn(fn)

    @fn.setter
    def fn(self, value: TrainerFn | str | None) -> None:
        """Lightning code (and its tests) set ``trainer.state.fn`` by hand; between calls it is
        the call the Trainer reports until the next one starts."""
        if self._status.stage is not None:
            raise RuntimeError(f"trainer.state.fn cannot be set while Trainer.{self._status.stage} runs")
        self._status.last_fn = None if value is None else TrainerFn(value).value

    @property
    def stage(self) -> RunningStage | None:
        s = self._status
        if s.stage is None:
            return None
        if s.sanity_checking:
            return RunningStage.SANITY_CHECKING
        if s.stage == "fit":
            return RunningStage.VALIDATING if self._results.stage == "validate" else RunningStage.TRAINING
        return RunningStage(s.stage)

    @property
    def status(self) -> TrainerStatus:
        return TrainerStatus(self._status.run_status)

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status.stopped

    def __repr__(self) -> str:
        return f"TrainerState(status={self.status!r}, fn={self.fn!r}, stage={self.stage!r})"
