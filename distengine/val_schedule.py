"""When ``fit`` validates: Lightning 2.6's rules for ``val_check_interval`` and
``check_val_every_n_epoch``, decided in one place for the training loop.

- Only in epochs that ``check_val_every_n_epoch`` selects (``None``: every epoch, and the batch
  count below runs on across epochs: ``val_check_interval=1000, check_val_every_n_epoch=None``
  validates every 1000 training batches of the whole run, however long an epoch is).
- A batch count (an int, or a fraction of the epoch turned into one): after every that many
  training batches of the epoch, so an epoch of 10 batches with ``val_check_interval=4``
  validates after batches 4 and 8, and not again at its end (as in Lightning).
- ``1.0``/``None``: at the end of the epoch. A loader without a length: also when it ends.
- A duration (``"DD:HH:MM:SS"``, a ``timedelta``, a dict such as ``{"minutes": 30}``): after
  the first batch that ends at least that long after the training started or the previous
  validation ended (``time.monotonic``).

Example::

    Trainer(val_check_interval="00:00:30:00")   # validate every 30 minutes of training
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from distengine.utilities.exceptions import ConfigError


def interval_seconds(value: Any) -> float | None:
    """The seconds of a time-based ``val_check_interval``; None for a batch count or a fraction."""
    if not isinstance(value, (str, dict, timedelta)):
        return None
    from distengine.callbacks.timer import parse_duration

    try:
        return parse_duration(value).total_seconds()
    except (ConfigError, TypeError, ValueError, OverflowError):
        raise ConfigError(f"Trainer(val_check_interval={value!r}): a time-based interval must be a positive "
                          "duration ('DD:HH:MM:SS', a datetime.timedelta or a dict of timedelta fields); for "
                          "example val_check_interval='00:00:30:00'") from None


@dataclass(slots=True)
class ValSchedule:
    every_batches: int = 0              # 0: at the end of the epoch (a fraction 1.0, or None)
    every_n_epochs: int | None = 1      # None: no epoch gate, batches counted over the whole run
    seconds: float | None = None        # a time-based interval
    infinite: bool = False              # the training loader has no length
    last_time: float = 0.0              # when training started or the last validation ended

    @property
    def in_epoch(self) -> bool:
        """Whether it can validate before an epoch's end (a batch count or a duration)."""
        return bool(self.every_batches) or self.seconds is not None

    def epoch_validates(self, epoch: int) -> bool:
        return self.every_n_epochs is None or (epoch + 1) % self.every_n_epochs == 0

    def start(self) -> None:
        if self.seconds is not None:
            self.last_time = time.monotonic()

    def validated(self) -> None:
        if self.seconds is not None:
            self.last_time = time.monotonic()

    def _due(self, batches_done: int, total_done: int) -> bool:
        if self.seconds is not None:
            return time.monotonic() - self.last_time >= self.seconds
        if not self.every_batches:
            return False
        return (total_done if self.every_n_epochs is None else batches_done) % self.every_batches == 0

    def due_in_epoch(self, epoch: int, batches_done: int, total_done: int) -> bool:
        """After a training batch that is not the epoch's last."""
        return self.epoch_validates(epoch) and self._due(batches_done, total_done)

    def due_at_epoch_end(self, epoch: int, batches_done: int, total_done: int) -> bool:
        """After the epoch's last batch (the loader ended, or the batch limit was reached)."""
        if not self.epoch_validates(epoch):
            return False
        if self.infinite or (not self.every_batches and self.seconds is None):
            return True
        return self._due(batches_done, total_done)


def build_schedule(val_check_interval: Any, every_n_epochs: int | None, num_batches: int | float,
                   val_enabled: bool = True) -> ValSchedule:
    """The schedule of one fit; raises ConfigError for an interval longer than the epoch."""
    seconds = interval_seconds(val_check_interval)
    sched = ValSchedule(every_n_epochs=every_n_epochs, seconds=seconds, infinite=math.isinf(num_batches))
    if seconds is not None:
        return sched
    vci = val_check_interval
    if vci is None or (isinstance(vci, float) and vci == 1.0):
        return sched
    if isinstance(vci, float):
        if math.isinf(num_batches):  # Lightning refuses it too: a fraction of an unknown length
            raise ConfigError(f"val_check_interval={vci} is a fraction of the epoch but the training "
                              "dataloader has no length (an IterableDataset); use 1.0 or a whole number "
                              "of batches, for example val_check_interval=100")
        sched.every_batches = max(1, int(num_batches * vci))
        return sched
    if vci > num_batches and every_n_epochs is not None and val_enabled:
        raise ConfigError(f"Trainer(val_check_interval={vci}) must be less than or equal to the number of the "
                          f"training batches per epoch ({num_batches}); lower it, or pass "
                          "check_val_every_n_epoch=None to count batches across epochs")
    sched.every_batches = int(vci)  # an int 1 validates after every batch, as in Lightning
    return sched
