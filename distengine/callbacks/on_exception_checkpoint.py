"""``OnExceptionCheckpoint``: when a run fails with an exception, save a checkpoint to resume from.

Example::

    trainer = Trainer(callbacks=[OnExceptionCheckpoint("checkpoints")])
    trainer.fit(model)       # raises; checkpoints/on_exception.ckpt holds the state at that point
    trainer.fit(model, ckpt_path="checkpoints/on_exception.ckpt")
"""
from __future__ import annotations

import os
from typing import Any

from distengine.callbacks.checkpoint import Checkpoint

__all__ = ["OnExceptionCheckpoint"]


class OnExceptionCheckpoint(Checkpoint):
    """Save ``dirpath/filename.ckpt`` with ``trainer.save_checkpoint`` when the run raises (every
    rank calls it, as every rank's run fails together; rank 0 writes). As in Lightning, a run
    that ends without an exception removes that file, so one left behind is always from a failure."""

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        super().__init__()
        if not filename:
            raise ValueError("The filename cannot be empty")
        self.dirpath = dirpath
        self.filename = filename
        self._failed = False

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: Any, *_: Any, **__: Any) -> None:
        self._failed = True
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: Any, *_: Any, **__: Any) -> None:
        failed, self._failed = self._failed, False
        if failed:
            return  # distengine tears down after a failure too; the checkpoint is the point
        if trainer.is_global_zero and os.path.isfile(self.ckpt_path):
            os.remove(self.ckpt_path)
