"""The logger interface. Loggers write on global rank zero only.

A logger receives already-reduced Python floats; it never sees tensors and never runs a
collective, so calling it cannot hang a distributed job.
"""
from __future__ import annotations

from typing import Any, Mapping


class Logger:
    """Base class. Subclasses override ``log_metrics``, ``log_hyperparams`` and ``finalize``.

    The Trainer calls these methods only on global rank zero.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def version(self) -> int | str | None:
        return None

    @property
    def save_dir(self) -> str | None:
        """The local folder that holds this logger's runs, if it has one."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The folder this logger writes to (``trainer.log_dir`` of the first logger)."""
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        pass

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        pass

    def save(self) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called on global rank zero once a ``ModelCheckpoint`` file is on disk (Lightning's
        hook); loggers that upload checkpoints (``log_model``) override it."""

    def finalize(self, status: str) -> None:
        pass


class NoOpExperiment:
    """Stands in for a logger's experiment on non-zero ranks: every method call does nothing,
    so ``logger.experiment.add_image(...)`` is safe in code that runs on every rank."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
