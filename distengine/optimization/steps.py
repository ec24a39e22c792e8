"""The pieces every optimisation mode is made of, over the fit's
:class:`~distengine.loop_context.LoopContext`: the loss a ``training_step`` returned and its
checks, backward with its hooks, one optimizer step (unscale, ``on_before_optimizer_step``,
clip, step through the precision, zero_grad), and the schedulers."""
from __future__ import annotations

from typing import Any

import torch

from distengine import optim_hooks
from distengine.loop_context import LoopContext
from distengine.nonfinite import NonFiniteWatch, _check_nonfinite, step_unless_nonfinite
from distengine.step_outputs import log_returned


# ------------------------------------------------------------------ the loss
def extract_loss(ctx: LoopContext, out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        loss = out
    elif isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(f"training_step returned a dict without a 'loss' key (keys: {sorted(out)})")
        loss = out["loss"]
        if "log" in out or "progress_bar" in out:
            log_returned(ctx.results, out, epoch_level=False)
    elif out is None:
        return None
    else:
        raise ValueError(f"training_step must return a scalar loss tensor, a dict with 'loss', or None; "
                         f"got {type(out).__name__}")
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"the loss returned by training_step must be a scalar tensor, got {shape}; "
                         "reduce it, for example with .mean()")
    return loss


def check_first_loss(ctx: LoopContext, loss: torch.Tensor) -> None:
    if not loss.requires_grad and ctx.module.automatic_optimization:
        raise ValueError("the loss returned by training_step does not require grad: it was computed "
                         "without the model's parameters or under torch.no_grad()")
    ctx.state.loss_checked = True


def nonfinite_check(ctx: LoopContext, prec: Any, device: torch.device) -> Any:
    """How this epoch checks that the loss is finite (see :func:`backward`)."""
    if ctx.flags.on_nonfinite_loss != "error" or prec.scaler is not None:
        return False
    if device.type == "cpu":
        return True
    state = ctx.state
    if state.nonfinite_watch is None:
        state.nonfinite_watch = NonFiniteWatch(device)
    return state.nonfinite_watch


def backward(ctx: LoopContext, loss: torch.Tensor, watch: Any, accum: int, run_backward: Any, before: tuple,
             after: tuple) -> None:
    """Check the loss (the first one; not finite: ``watch`` is False, True on the CPU (a host
    read now), or a NonFiniteWatch that reads it later), then backward through the precision."""
    state = ctx.state
    if not state.loss_checked:
        check_first_loss(ctx, loss)
    if watch is True:
        _check_nonfinite(ctx, loss)
    elif watch:
        watch.update(loss, ctx.progress.global_step)
    state.last_loss = loss
    if accum > 1:
        loss = loss / accum
    for fn in before:
        fn(loss)
    run_backward(loss)
    for fn in after:
        fn()


# ------------------------------------------------------------------ one optimizer step
def step_optimizer(ctx: LoopContext, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> None:
    """Unscale, ``on_before_optimizer_step``, clip, step through the precision, and (``zero_grad``)
    zero the gradients; the module's ``configure_gradient_clipping`` / ``optimizer_zero_grad``
    where it overrides them (optim_hooks.py)."""
    prec, flags = ctx.precision, ctx.flags
    before_step(ctx, optimizer)
    if flags.on_nonfinite_loss == "skip" and prec.scaler is None:
        # an int, or a device tensor for fused optimizers: read only where metrics are written
        state = ctx.state
        state.skipped_nonfinite = state.skipped_nonfinite + step_unless_nonfinite(
            optimizer, lambda: prec.step(optimizer))
    else:
        prec.step(optimizer)
    if zero_grad:
        zero_grad_now(ctx, optimizer)


def before_step(ctx: LoopContext, optimizer: torch.optim.Optimizer) -> None:
    """What comes between backward and the step: unscale (when clipping), ``on_before_optimizer_step``,
    clipping (the module's ``configure_gradient_clipping`` where it overrides it)."""
    clip = ctx.flags.gradient_clip_val or ctx.opt_hooks.clip is not None
    if clip:
        ctx.precision.unscale(optimizer)
    for fn in ctx.hooks["on_before_optimizer_step"]:
        fn(optimizer)
    if clip:
        optim_hooks.clip(ctx, optimizer)


def zero_grad_now(ctx: LoopContext, optimizer: torch.optim.Optimizer) -> None:
    """``on_before_zero_grad``, then the module's ``optimizer_zero_grad`` or ``zero_grad(set_to_none=True)``."""
    for fn in ctx.hooks["on_before_zero_grad"]:
        fn(optimizer)
    if ctx.opt_hooks.zero_grad is None:
        optimizer.zero_grad(set_to_none=True)
    else:
        optim_hooks.zero_grad(ctx, optimizer, ctx.progress.batches_done)


def step_skipped_by_scaler(ctx: LoopContext, optimizer: torch.optim.Optimizer) -> None:
    """Lightning's mixed-precision step after a skipped backward: ``on_before_optimizer_step``,
    clip, zero the gradients; no unscale, ``scaler.step`` or ``update``."""
    for fn in ctx.hooks["on_before_optimizer_step"]:
        fn(optimizer)
    if ctx.flags.gradient_clip_val or ctx.opt_hooks.clip is not None:
        optim_hooks.clip(ctx, optimizer)
    if ctx.opt_hooks.zero_grad is None:
        zero_grad_now(ctx, optimizer)


# ------------------------------------------------------------------ schedulers
def step_schedulers(ctx: LoopContext, interval: str, plateau: bool | None) -> None:
    """Step the schedulers of ``interval`` (``plateau=None``: plain and plateau ones alike).
    Under manual optimization the user steps them, as in Lightning: stepping here too would
    step them twice."""
    if not ctx.module.automatic_optimization:
        return
    p = ctx.progress
    for cfg in ctx.schedulers:
        if cfg.interval != interval or (plateau is not None and cfg.reduce_on_plateau != plateau):
            continue
        count = p.global_step if interval == "step" else p.epoch + 1
        if count % cfg.frequency:
            continue
        if cfg.reduce_on_plateau:
            metrics = ctx.results.callback_metrics()
            if cfg.monitor not in metrics:
                if cfg.strict:
                    raise RuntimeError(f"ReduceLROnPlateau monitors {cfg.monitor!r}, which was not logged; "
                                       f"logged: {sorted(metrics)}")
                continue
            metric = float(metrics[cfg.monitor])
        else:
            metric = None
        if ctx.opt_hooks.scheduler is not None:  # the module's lr_scheduler_step override
            optim_hooks.scheduler_step(ctx.opt_hooks.scheduler, cfg.scheduler, metric)
        elif metric is None:
            cfg.scheduler.step()
        else:
            cfg.scheduler.step(metric)
