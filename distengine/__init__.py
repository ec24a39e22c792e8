"""distengine: a distributed multi-GPU training engine for PyTorch.

Write the science as a :class:`Module` (Lightning-style hooks); :class:`Trainer` runs the
loops, devices, precision, data sharding, checkpointing and logging::

    import distengine as de
    trainer = de.Trainer(max_epochs=3)
    trainer.fit(MyModule(), train_loader, val_loader)

``import distengine as pl`` runs most Lightning code unchanged (``pl.LightningModule``,
``pl.Trainer``, ``pl.seed_everything``, ``pl.callbacks``, ``pl.loggers``, ``pl.profilers``).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Module": "distengine.module",
    "LightningModule": "distengine.module",
    "Trainer": "distengine.trainer",
    "DataModule": "distengine.datamodule",
    "LightningDataModule": "distengine.datamodule",
    "seed_everything": "distengine.seed",
    "Tuner": "distengine.tuner",
    "Callback": "distengine.callbacks.base",
    "callbacks": None,
    "cli": None,
    "loggers": None,
    "profilers": None,
    "profiler": None,
    "utilities": None,
    "plugins": None,
}

__all__ = ["Callback", "DataModule", "LightningDataModule", "LightningModule", "Module", "Trainer", "Tuner",
           "__version__", "callbacks", "cli", "loggers", "plugins", "profilers", "seed_everything", "utilities"]


def __getattr__(name: str) -> Any:
    # Import on first use: `import distengine` stays cheap, and heavy optional parts
    # (tensorboard, matplotlib, NVML) load only when a run needs them.
    if name not in _LAZY:
        raise AttributeError(f"module 'distengine' has no attribute {name!r}")
    target = _LAZY[name]
    value = importlib.import_module(f"distengine.{name}") if target is None \
        else getattr(importlib.import_module(target), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
