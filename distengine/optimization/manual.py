"""Manual optimization (``self.automatic_optimization = False``): ``training_step`` steps,
zeroes, clips and schedules itself (``self.optimizers()``, ``self.manual_backward(loss)``);
the loop only runs it, inside DDP's forward and ``no_sync`` as Lightning does. ``global_step``
counts the user's ``optimizer.step()`` calls (the step hooks the stage run registers)."""
from __future__ import annotations

from typing import Any

from distengine.loop_context import EpochParts, LoopContext


class ManualOptimization:
    """The :class:`~distengine.loop_context.BatchOptimization` of a module that steps itself."""

    def __init__(self) -> None:
        self._epoch: tuple = ()

    def start_epoch(self, ctx: LoopContext, parts: EpochParts) -> None:
        self._epoch = (parts.step_fn, parts.autocast, ctx.strategy.no_sync, ctx.strategy.model)

    def run_batch(self, ctx: LoopContext, args: tuple, batch_idx: int, last_micro: bool) -> tuple[Any, bool]:
        step_fn, autocast, no_sync, model = self._epoch
        with no_sync(model, last_micro):
            if autocast is not None:
                with autocast():
                    return step_fn(*args), False
            return step_fn(*args), False

    def end_window(self, ctx: LoopContext) -> None:
        """Nothing: the module took (and the step hooks counted) its own steps."""
