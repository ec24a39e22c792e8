"""How the fit loop optimises one training batch: three objects with one interface
(:class:`~distengine.loop_context.BatchOptimization`: ``start_epoch``, ``run_batch``,
``end_window``), chosen once per fit by :func:`plan_optimization`:

* :class:`AutomaticOptimization` (automatic.py): one optimizer, stepped by the Trainer at the
  end of each accumulation window (Lightning 2.x), the module's ``optimizer_step`` & co called
  where it overrides them;
* :class:`ManualOptimization` (manual.py): the module steps itself;
* :class:`OneXOptimization` (one_x.py): several optimizers in automatic mode, the Lightning 1.x
  way (``training_step(batch, batch_idx, optimizer_idx)``).

The pieces they share (the loss checks, backward, one optimizer step, the schedulers) are in
:mod:`distengine.optimization.steps`. The loop imports these; they import the loop's context
only (loop_context.py), never the loop.
"""
from __future__ import annotations

from typing import Any

from distengine.optimization.automatic import AutomaticOptimization
from distengine.optimization.manual import ManualOptimization
from distengine.optimization.one_x import OneXOptimization, one_x_mode, optimizer_frequencies, takes_optimizer_idx

__all__ = ["AutomaticOptimization", "ManualOptimization", "OneXOptimization", "one_x_mode", "plan_optimization"]


def plan_optimization(module: Any, optimizers: list[Any], schedulers: list[Any], returned: Any,
                      precision: str, accumulate_grad_batches: int) -> Any:
    """Choose how ``optimizers`` are driven (``returned``: what ``configure_optimizers`` gave,
    for the 1.x frequencies)."""
    n = len(optimizers)
    idx = takes_optimizer_idx(module.training_step)
    if not module.automatic_optimization:
        if idx and n > 1:  # pytorch-lightning 1.9.5 refuses this too
            raise ValueError("training_step takes optimizer_idx, but under manual optimization you step the "
                             "optimizers yourself: remove optimizer_idx or set self.automatic_optimization = True")
        return ManualOptimization()
    if n == 1 and not idx:
        return AutomaticOptimization()
    if not idx:
        raise ValueError(f"configure_optimizers returned {n} optimizers but training_step does not take "
                         "optimizer_idx: set self.automatic_optimization = False and step them in training_step "
                         "with opt1, opt2 = self.optimizers() (Lightning 2.x), or add the 1.x optimizer_idx argument")
    return OneXOptimization(module, optimizers, schedulers, optimizer_frequencies(returned, n), precision,
                            accumulate_grad_batches)
