"""The optimisation hooks a module may override, called with Lightning's names and arguments.

- ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)``: at the last micro-batch of
  each accumulation window; the closure runs that batch's ``training_step`` and backward.
  Default: ``optimizer.step(closure=optimizer_closure)``.
- ``optimizer_zero_grad(epoch, batch_idx, optimizer)``: as in Lightning, at the first micro-batch
  of each window, after ``training_step`` and before ``on_before_backward``. Default:
  ``optimizer.zero_grad()`` (a module that keeps it zeroes right after each step instead: the
  same gradients, held for less time).
- ``configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)``: before
  each optimizer step, after ``on_before_optimizer_step``, with the Trainer's values (called even
  without ``gradient_clip_val``). Default: ``self.clip_gradients(...)``.
- ``lr_scheduler_step(scheduler, metric)``: wherever the loop steps a scheduler (``metric`` is
  None except for ReduceLROnPlateau). Default: ``scheduler.step()`` / ``scheduler.step(metric)``.

The 1.x signatures (an ``optimizer_idx`` argument; ``on_tpu``, ``using_native_amp``,
``using_lbfgs``) are recognised from the override's parameters. Under manual optimisation
none of these is called (the user steps, zeroes, clips and schedules), as in Lightning. In the
1.x mode with several optimizers (optimization/one_x.py) an overridden ``optimizer_zero_grad`` is called
right after each optimizer's step.

Which hooks a module overrides is decided once per fit (:meth:`OptimHooks.of`); a module that
overrides none keeps the loop's direct path, with no per-step cost.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from distengine.module import Module, module_overrides

_NAMES = ("optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping", "lr_scheduler_step")


@dataclass(frozen=True, slots=True)
class OptimHooks:
    """The module's overrides (None where it keeps the default)."""
    step: Callable | None = None
    zero_grad: Callable | None = None
    clip: Callable | None = None
    scheduler: Callable | None = None

    @classmethod
    def of(cls, module: Module) -> OptimHooks:
        found = [getattr(module, n) if module_overrides(module, n) else None for n in _NAMES]
        return cls(*found)

    @property
    def any_step_hook(self) -> bool:
        return self.step is not None or self.zero_grad is not None or self.clip is not None


def _takes(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _one_x(fn: Callable) -> bool:
    """A 1.x hook signature: it names ``optimizer_idx``. An override taking ``(*args, **kwargs)``
    passes them on to the 2.x base method (``super()``), so it gets the 2.x arguments."""
    try:
        return "optimizer_idx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def clip(ctx: Any, optimizer: torch.optim.Optimizer) -> None:
    """The Trainer's clipping: ``configure_gradient_clipping`` when overridden (called every
    step, with the Trainer's values, as in Lightning; mixed-precision gradients unscaled first),
    else the strategy's clipping when ``gradient_clip_val`` is set."""
    flags, hook = ctx.flags, ctx.opt_hooks.clip
    if hook is not None:
        ctx.precision.unscale_once(optimizer)
        args = (optimizer, 0) if _one_x(hook) else (optimizer,)
        algorithm = flags.gradient_clip_algorithm if flags.gradient_clip_val is not None else None  # as Lightning
        hook(*args, gradient_clip_val=flags.gradient_clip_val, gradient_clip_algorithm=algorithm)
    elif flags.gradient_clip_val:
        ctx.strategy.clip_gradients(optimizer, flags.gradient_clip_val, flags.gradient_clip_algorithm)


def zero_grad(ctx: Any, optimizer: torch.optim.Optimizer, batch_idx: int) -> None:
    hook = ctx.opt_hooks.zero_grad
    if hook is None:
        optimizer.zero_grad(set_to_none=True)
    elif _one_x(hook):
        hook(ctx.progress.epoch, batch_idx, optimizer, 0)
    else:
        hook(ctx.progress.epoch, batch_idx, optimizer)


def scheduler_step(hook: Callable, scheduler: Any, metric: Any) -> None:
    """The module's ``lr_scheduler_step`` (2.x ``(scheduler, metric)``, 1.x ``(scheduler,
    optimizer_idx, metric)``)."""
    if _one_x(hook):
        hook(scheduler, 0, metric)
    else:
        hook(scheduler, metric)
