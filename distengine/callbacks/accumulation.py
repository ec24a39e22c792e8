"""``GradientAccumulationScheduler``: the number of batches accumulated per optimizer step,
by epoch.

Example::

    # 1 batch per step in epochs 0-3, 4 from epoch 4, 8 from epoch 10 (epochs count from 0)
    Trainer(callbacks=[GradientAccumulationScheduler({4: 4, 10: 8})])

The factor is a function of the epoch alone, so an exact resume needs no saved state: the
resumed epoch sets the factor again when it starts.
"""
from __future__ import annotations

from typing import Any

from distengine.callbacks.base import Callback
from distengine.utilities.exceptions import ConfigError


class GradientAccumulationScheduler(Callback):
    """``scheduling`` maps a 0-based epoch to the accumulation factor used from that epoch on;
    epochs before the first key accumulate 1 batch (Lightning's rule)."""

    def __init__(self, scheduling: dict[int, int]) -> None:
        if not isinstance(scheduling, dict) or not scheduling:
            raise ConfigError(f"GradientAccumulationScheduler(scheduling={scheduling!r}): pass a non-empty dict "
                              "{epoch: batches}, for example {0: 1, 4: 4}")
        bad_keys = [k for k in scheduling if not isinstance(k, int) or isinstance(k, bool) or k < 0]
        if bad_keys:
            raise ConfigError(f"GradientAccumulationScheduler: epochs must be integers >= 0 (epochs count from 0), "
                              f"got {bad_keys}")
        bad_values = [v for v in scheduling.values() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if bad_values:
            raise ConfigError(f"GradientAccumulationScheduler: accumulation factors must be integers >= 1, "
                              f"got {bad_values}")
        self.scheduling = {0: 1, **scheduling} if 0 not in scheduling else dict(scheduling)
        self.epochs = sorted(self.scheduling)
        self._last_set: int | None = None  # the factor this callback last wrote into the Trainer

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        factor = 1
        for start in self.epochs:
            if epoch >= start:
                factor = self.scheduling[start]
        return factor

    def going_to_accumulate_grad_batches(self) -> bool:
        return any(v > 1 for v in self.scheduling.values())

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # checked here, before any work, rather than at on_train_start as Lightning does
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ConfigError("GradientAccumulationScheduler needs automatic optimization; under manual "
                              "optimization accumulate in training_step, or remove the callback")
        if trainer.accumulate_grad_batches not in (1, self._last_set):
            raise ConfigError(f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) and "
                              "GradientAccumulationScheduler both set the accumulation; remove one of them")

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self._last_set = trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
