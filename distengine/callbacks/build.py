"""The Trainer's default loggers and callbacks, built from its flags."""
from __future__ import annotations

import os
from typing import Any

from distengine.callbacks.base import Callback


def build_loggers(logger: Any, default_root_dir: str) -> list[Any]:
    """``logger=True``: TensorBoard (CSV when tensorboard is missing); False/None: none."""
    if logger is True:
        try:
            from distengine.loggers.tensorboard import TensorBoardLogger

            return [TensorBoardLogger(default_root_dir)]
        except ImportError:
            from distengine.loggers.csv_logger import CSVLogger

            return [CSVLogger(default_root_dir)]
    if logger in (False, None):
        return []
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]


def build_callbacks(callbacks: Any, max_time: Any, checkpointing: bool, progress: bool,
                    summary: bool) -> list[Callback]:
    """The user's callbacks plus the defaults the flags ask for; checkpoints last."""
    cbs = list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
    for cb in cbs:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be distengine.callbacks.Callback instances, got {type(cb).__name__}")
    if max_time is not None:
        from distengine.callbacks.timer import Timer

        cbs.append(Timer(duration=max_time, interval="step"))
    if summary:
        from distengine.callbacks.model_summary import ModelSummary

        if not any(isinstance(c, ModelSummary) for c in cbs):
            cbs.append(ModelSummary())
    from distengine.callbacks.progress_bar import user_progress_bar

    if not user_progress_bar(cbs, progress) and progress and os.environ.get("DISTENGINE_NO_PROGRESS") != "1":
        from distengine.callbacks.tqdm_progress import TQDMProgressBar

        cbs.append(TQDMProgressBar())
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in cbs):
        cbs.append(ModelCheckpoint())
    from distengine.callbacks.checkpoint import Checkpoint

    # checkpoints (every Checkpoint subclass) go last so that they capture the state other
    # callbacks just updated
    return [c for c in cbs if not isinstance(c, Checkpoint)] + [c for c in cbs if isinstance(c, Checkpoint)]
