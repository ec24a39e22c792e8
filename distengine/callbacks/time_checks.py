"""When ``ModelCheckpoint(train_time_interval=...)`` saves, without a collective every batch.

Clocks differ between ranks, so rank zero's clock decides and its answer is broadcast (every
rank must call the save together). Asking after every batch would be a host sync per step;
instead rank zero also sends how many batches to wait before the next check: half the batches
it expects until the interval is up (from the time per batch it measured since the previous
check), at least 1 and at most :attr:`TimeChecks.MAX_BATCHES`. The checks get closer as the
end of the interval nears, so with steady batches the save fires on the same batch as a check
after every batch would, for about ``log2(batches per interval)`` collectives per interval
(a 10 s interval of 1 s batches: checks after batches 1, 5, 7, 8, 9, 10). When batches slow
down between two checks (a validation run, a slower phase) the save may come up to that many
batches late. The wait is counted in batches, so every rank knows when the next check is
without asking.
"""
from __future__ import annotations

import datetime
import time
from typing import Any


class TimeChecks:
    MAX_BATCHES = 100  # most batches between two checks

    def __init__(self) -> None:
        self.start()

    def __eq__(self, other: object) -> bool:  # by value: a pickled ModelCheckpoint equals its original
        return type(other) is type(self) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def start(self) -> None:
        """The interval starts now (the training start)."""
        self.last_save = time.monotonic()
        self._reset(1)

    def saved(self) -> None:
        """A save just finished: the next interval starts now (the save's time is no batch's)."""
        self.last_save = self._checked_at = time.monotonic()

    def _reset(self, wait: int) -> None:
        self._check_in = wait         # batches until the next check (the same on every rank)
        self._span = wait             # batches between the previous check and the next
        self._checked_at = time.monotonic()  # rank zero: when the previous check was made

    def due(self, trainer: Any, interval: datetime.timedelta) -> bool:
        """Called after every training batch, on every rank: save now? A collective (rank
        zero's answer and the next wait) only when the countdown reaches the next check."""
        self._check_in -= 1
        if self._check_in > 0:
            return False
        decision = None
        if trainer.is_global_zero:
            now, seconds = time.monotonic(), interval.total_seconds()
            due = now - self.last_save >= seconds
            per_batch = (now - self._checked_at) / max(1, self._span)
            remaining = seconds if due else seconds - (now - self.last_save)
            wait = int(remaining / per_batch / 2) if per_batch > 0 else 1
            decision = (due, max(1, min(wait, self.MAX_BATCHES)))
        due, wait = trainer.strategy.broadcast(decision, src=0)
        self._reset(wait)
        return bool(due)
