"""``BasePredictionWriter``: write predictions from a callback, each rank its own.

Subclass it and override ``write_on_batch_end`` and/or ``write_on_epoch_end``; with several
ranks each rank writes what it predicted together with the dataset indices of its samples
(``batch_indices``), so the files can be merged back into dataset order afterwards. Pass
``trainer.predict(..., return_predictions=False)`` so nothing is gathered over the ranks.

Example::

    class Writer(BasePredictionWriter):
        def write_on_epoch_end(self, trainer, module, predictions, batch_indices):
            torch.save({"pred": predictions, "idx": batch_indices}, f"pred_{trainer.global_rank}.pt")

    trainer = Trainer(callbacks=[Writer(write_interval="epoch")])
    trainer.predict(model, loader, return_predictions=False)
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from distengine.callbacks.base import Callback

__all__ = ["BasePredictionWriter"]

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class _Interval(str):
    @property
    def on_batch(self) -> bool:
        return self in ("batch", "batch_and_epoch")

    @property
    def on_epoch(self) -> bool:
        return self in ("epoch", "batch_and_epoch")


class BasePredictionWriter(Callback):
    """Calls ``write_on_batch_end`` after each predict batch (``write_interval`` "batch" or
    "batch_and_epoch") and ``write_on_epoch_end`` once at the end of each ``predict``
    ("epoch" or "batch_and_epoch").

    ``batch_indices`` are the dataset indices of this rank's samples: a list per batch for
    ``write_on_batch_end``; for ``write_on_epoch_end`` a list per dataloader of those lists,
    next to ``predictions`` (this rank's, on the CPU; a list over batches, or one per dataloader
    when there are several). Over all ranks the indices cover the dataset once (evaluation
    shards are not padded). They are empty lists where unknown (an iterable dataset).
    """

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise ValueError(f"`write_interval` should be one of {list(_INTERVALS)}, got {write_interval!r}")
        self.interval = _Interval(write_interval)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        try:
            params = inspect.signature(pl_module.predict_step).parameters
        except (TypeError, ValueError):
            return
        if "dataloader_iter" in params:
            raise NotImplementedError("The `PredictionWriterCallback` does not support using `dataloader_iter`.")

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        """Override: write the prediction of one batch."""
        raise NotImplementedError()

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        """Override: write every prediction of this rank."""
        raise NotImplementedError()

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.interval.on_batch:
            self.write_on_batch_end(trainer, pl_module, outputs, trainer.predict_loop.current_batch_indices,
                                    batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.interval.on_epoch:
            loop = trainer.predict_loop
            self.write_on_epoch_end(trainer, pl_module, loop.predictions, loop.epoch_batch_indices)
