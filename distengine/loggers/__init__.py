"""Loggers: where metrics and hyperparameters go. They write on global rank zero only.

``Logger`` is the base class; ``TensorBoardLogger`` (the default), ``CSVLogger``,
``MLFlowLogger``, ``WandbLogger`` and ``CometLogger`` are loaded on first access, so
``import distengine.loggers`` imports none of tensorboard, mlflow, wandb, comet_ml or the logger modules.

Example::

    from distengine.loggers import CSVLogger, TensorBoardLogger
    trainer = de.Trainer(logger=[TensorBoardLogger("runs"), CSVLogger("runs")])
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distengine.loggers.base import Logger

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from distengine.loggers.comet import CometLogger
    from distengine.loggers.csv_logger import CSVLogger
    from distengine.loggers.mlflow_logger import MLFlowLogger
    from distengine.loggers.tensorboard import TensorBoardLogger
    from distengine.loggers.wandb_logger import WandbLogger

__all__ = ["CSVLogger", "CometLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]

_LAZY = {
    "TensorBoardLogger": "distengine.loggers.tensorboard",
    "CSVLogger": "distengine.loggers.csv_logger",
    "MLFlowLogger": "distengine.loggers.mlflow_logger",
    "WandbLogger": "distengine.loggers.wandb_logger",
    "CometLogger": "distengine.loggers.comet",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distengine.loggers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
