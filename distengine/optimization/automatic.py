"""Automatic optimization with one optimizer (Lightning 2.x): the loop runs ``training_step``
and backward for each batch and steps at the last micro-batch of each accumulation window::

    run_batch:   (DDP no_sync unless the window ends) autocast -> training_step
                 [-> training_step_end] -> the loss, checked -> on_before_backward ->
                 backward(loss / accumulate_grad_batches) -> on_after_backward
    end_window:  unscale -> on_before_optimizer_step -> clip -> step -> zero_grad;
                 global_step += 1; step-interval schedulers

A module overriding ``optimizer_step`` gets the last micro-batch of each window in its closure
(:func:`call_optimizer_step`, with a :class:`HookedOptimizer`); one overriding
``optimizer_zero_grad`` has it called at the first micro-batch of each window, as in Lightning.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from distengine.loop_context import EpochParts, LoopContext
from distengine.optim import LightningOptimizer
from distengine.optim_hooks import _one_x, _takes
from distengine.optimization import steps


class AutomaticOptimization:
    """One optimizer, stepped by the Trainer (the :class:`~distengine.loop_context.BatchOptimization` interface)."""

    def __init__(self) -> None:
        self._epoch: tuple = ()
        self._no_loss = False  # the window's last training_step returned None

    def start_epoch(self, ctx: LoopContext, parts: EpochParts) -> None:
        accum, optimizer = ctx.flags.accumulate_grad_batches, ctx.optimizers[0]
        before, after = _backward_hooks(ctx, optimizer, accum)
        strategy = ctx.strategy
        # the module's optimizer_step, or LBFGS (its step needs the closure): the batch runs in a closure
        self.optimizer = optimizer
        self._hooked = ctx.opt_hooks.step is not None or isinstance(optimizer, torch.optim.LBFGS)
        self._epoch = (parts, ctx.adapted.step_end, accum, before, after, strategy.no_sync, strategy.model)

    def run_batch(self, ctx: LoopContext, args: tuple, batch_idx: int, last_micro: bool) -> tuple[Any, bool]:
        no_sync, model = self._epoch[5:]
        if self._hooked and last_micro:  # the module's optimizer_step runs the batch in its closure
            out, loss = self._hooked_window(ctx, batch_idx, args)
            self._no_loss = False  # (the module's optimizer_step decided whether to step)
            return out, loss is None
        with no_sync(model, last_micro):
            out, loss = self._step_and_backward(ctx, args)
        self._no_loss = loss is None
        return out, loss is None

    def _step_and_backward(self, ctx: LoopContext, args: tuple) -> tuple[Any, Any]:
        """``training_step`` (under autocast), the 1.x ``training_step_end``, the loss, backward."""
        parts, step_end, accum, before, after, _, _ = self._epoch
        if parts.autocast is not None:
            with parts.autocast():
                out = parts.step_fn(*args)
        else:
            out = parts.step_fn(*args)
        loss = steps.extract_loss(ctx, out)
        if step_end is not None:
            out = step_end(out)
            loss = steps.extract_loss(ctx, out)
        if loss is not None:
            steps.backward(ctx, loss, parts.watch, accum, parts.backward, before, after)
        return out, loss

    def end_window(self, ctx: LoopContext) -> None:
        """As in Lightning, a window whose last ``training_step`` returned None still steps, with
        the gradients earlier micro-batches left (none: the parameters stay as they are), and
        counts in ``global_step`` and the schedulers; under a GradScaler Lightning skips that
        step (and the scale update) but still counts it."""
        optimizer = self.optimizer
        if self._hooked:  # the module's optimizer_step took the step
            if ctx.opt_hooks.zero_grad is None:
                steps.zero_grad_now(ctx, optimizer)
        elif self._no_loss and ctx.precision.scaler is not None:
            steps.step_skipped_by_scaler(ctx, optimizer)
        else:  # with an overridden optimizer_zero_grad the gradients are zeroed at the next window's start
            self._epoch[0].optimizer_step(ctx, optimizer, ctx.opt_hooks.zero_grad is None)
        ctx.progress.global_step += 1
        if ctx.has_step_schedulers:  # a step-interval ReduceLROnPlateau reads the step's metrics
            steps.step_schedulers(ctx, "step", plateau=None)

    def _hooked_window(self, ctx: LoopContext, batch_idx: int, args: tuple) -> list[Any]:
        """The last micro-batch of a window when the module overrides ``optimizer_step``: its
        closure runs ``training_step`` and backward (again, with the gradients zeroed first, when an
        optimizer such as LBFGS calls it several times). Returns [step output, loss]."""
        optimizer = self.optimizer
        result: list[Any] = []

        def closure() -> Any:
            if result:
                optimizer.zero_grad(set_to_none=True)
            result[:] = self._step_and_backward(ctx, args)
            return result[1]

        call_optimizer_step(ctx, optimizer, batch_idx, closure)
        return result


def _backward_hooks(ctx: LoopContext, optimizer: torch.optim.Optimizer, accum: int) -> tuple:
    """``on_before_backward`` and ``on_after_backward``; with an overridden ``optimizer_zero_grad``
    the gradients are zeroed as in Lightning: at the first micro-batch of each window, after
    ``training_step`` and before ``on_before_backward``."""
    before, after = ctx.hooks["on_before_backward"], ctx.hooks["on_after_backward"]
    if ctx.opt_hooks.zero_grad is not None:
        p = ctx.progress

        def zero_grad_at_window_start(loss: torch.Tensor) -> None:
            if p.batches_done % accum == 0:
                steps.zero_grad_now(ctx, optimizer)

        before = (zero_grad_at_window_start, *before)
    return before, after


def call_optimizer_step(ctx: LoopContext, optimizer: torch.optim.Optimizer, batch_idx: int,
                        closure: Callable[[], Any], optimizer_idx: int = 0) -> None:
    """Call the module's ``optimizer_step`` with an optimizer whose ``step(closure)`` runs the
    closure, then the Trainer's clipping and the precision's step; fail with one line when the
    override never ran the closure (the batch would not have been trained)."""
    hook = ctx.module.optimizer_step
    ran: list[Any] = []

    def optimizer_closure() -> Any:
        ran.append(True)
        return closure()

    wrapped = HookedOptimizer(ctx, optimizer)
    if _one_x(hook):  # 1.x: (epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure, ...)
        extra = {k: v for k, v in (("on_tpu", False), ("using_native_amp", ctx.precision.scaler is not None),
                                   ("using_lbfgs", isinstance(optimizer, torch.optim.LBFGS))) if _takes(hook, k)}
        hook(ctx.progress.epoch, batch_idx, wrapped, optimizer_idx, optimizer_closure, **extra)
    else:
        hook(ctx.progress.epoch, batch_idx, wrapped, optimizer_closure)
    if not ran:
        raise RuntimeError(f"{type(ctx.module).__name__}.optimizer_step did not run optimizer_closure, so "
                           "training_step and backward never ran for this batch; call "
                           "optimizer.step(closure=optimizer_closure) (or optimizer_closure()) in it")


class HookedOptimizer(LightningOptimizer):
    """What an overridden ``optimizer_step`` receives: a :class:`LightningOptimizer` (the
    optimizer's attributes, ``param_groups``, ``state``...) whose ``step(closure)`` runs the
    closure, ``on_before_optimizer_step``, clipping and the step through the precision (the
    GradScaler, a skipped non-finite step)."""

    def __init__(self, ctx: LoopContext, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(optimizer)
        self._ctx = ctx

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        if closure is not None and isinstance(self.optimizer, torch.optim.LBFGS):
            return self._step_with_closure(closure)
        loss = closure() if closure is not None else None
        if closure is not None and loss is None:  # training_step returned None: no step, as in Lightning
            return None
        steps.step_optimizer(self._ctx, self.optimizer, zero_grad=False)
        return loss

    def _step_with_closure(self, closure: Callable[[], Any]) -> Any:
        """LBFGS re-evaluates the loss: each call of the closure runs ``training_step``, backward,
        ``on_before_optimizer_step`` and clipping, as Lightning's closure does."""
        ctx, optimizer = self._ctx, self.optimizer
        if ctx.precision.scaler is not None:
            from distengine.utilities.exceptions import ConfigError

            raise ConfigError(f"{type(optimizer).__name__} calls its closure several times, which a GradScaler "
                              "(precision='16-mixed') cannot scale; use precision '32-true' or 'bf16-mixed'")

        def step_closure() -> Any:
            loss = closure()
            steps.before_step(ctx, optimizer)
            return loss

        return optimizer.step(closure=step_closure)
