"""``pytorch_lightning.loggers.logger``'s public names: :class:`Logger` (the base class),
:class:`DummyLogger` (what ``fast_dev_run`` puts in place of the loggers) and
``rank_zero_experiment``.

Example::

    from distengine.loggers.logger import DummyLogger
    trainer = Trainer(fast_dev_run=True, logger=TensorBoardLogger("runs"))
    assert isinstance(trainer.logger, DummyLogger)   # nothing is written
"""
from __future__ import annotations

from typing import Any, Mapping

from distengine.loggers.base import Logger, NoOpExperiment

__all__ = ["DummyLogger", "Logger", "rank_zero_experiment"]


class DummyLogger(Logger):
    """A logger that writes nothing; ``logger.experiment.anything(...)`` does nothing too, so
    user code written for a real logger runs unchanged under ``fast_dev_run``."""

    def __init__(self) -> None:
        self._experiment = NoOpExperiment()

    @property
    def experiment(self) -> NoOpExperiment:
        return self._experiment

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def __getitem__(self, idx: int) -> DummyLogger:  # (Lightning allows `trainer.logger[0]`)
        return self

    def __getattr__(self, name: str) -> Any:  # any other logger method does nothing
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def rank_zero_experiment(fn: Any) -> Any:
    """Lightning's decorator for a logger's ``experiment`` property: on ranks other than zero
    the property returns an experiment whose every method does nothing."""
    import functools

    from distengine.distributed.rank_zero import rank_zero_only

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        return fn(self) if rank_zero_only.rank == 0 else NoOpExperiment()

    return experiment
