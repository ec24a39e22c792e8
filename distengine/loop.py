"""The fit loop, as plain functions over a :class:`~distengine.loop_context.LoopContext`: the
parts of the Trainer it uses, each named (``ctx.strategy``, ``ctx.precision``, ``ctx.hooks``,
``ctx.data``, ``ctx.state``...); the Trainer builds it once per ``fit``.

``fit_loop(ctx)``::

    sanity validation (fresh runs only)
    while epochs remain and nobody asked to stop (loop_parts.fit_done):
        reload the dataloaders every n epochs (ctx.reload_dataloaders); sampler.set_epoch
        train_epoch: for each batch of ctx.data.train_loader from the resumed position:
            on_train_batch_start -> forward (ctx.strategy.step_fn; autocast; no_sync on all
            but the last micro-batch) -> loss / accumulate_grad_batches -> backward
            (ctx.precision) -> on the last micro-batch (_end_step_window): unscale -> clip ->
            optimizer step -> zero_grad -> step-interval schedulers -> write step metrics
            every log_every_n_steps (ctx.writer); the epoch's last batch: epoch schedulers
            on_train_batch_end; vote on stopping (ctx.stop_vote: all ranks act on the same step)
            validation every val_check_interval batches (loop_eval.run_eval)
        epoch end: validation -> training_epoch_end -> epoch metrics -> on_train_epoch_end
            (callbacks, module, then checkpoint / early stopping) -> plateau schedulers -> stop vote
    the stop vote closed; training_end (0.x), on_train_end

1.x modules with several optimizers run each batch through ``ctx.one_x`` (compat.py). The
loss checks, schedulers, epoch iterator and stop vote are in :mod:`distengine.loop_parts`;
evaluation (validate/test/predict, and validation inside fit) in :mod:`distengine.loop_eval`.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch

from distengine import optim_hooks
from distengine.checkpoint.rng import capture_rng_state, restore_rng_state
from distengine.compat import _detach, _log_returned
from distengine.loop_context import LoopContext
from distengine.loop_eval import batch_mover, run_eval, takes_batch_idx
from distengine.loop_parts import (  # (compat.py calls _extract_loss, _check_first_loss through this module)
    _check_first_loss,
    _epoch_iterator,
    _extract_loss,
    _nonfinite_check,
    _step_schedulers,
    _warn_no_step,
    fit_done,
    vote_epoch,
    vote_step,
)
from distengine.nonfinite import (  # noqa: F401 - re-exported: tests and callers import them from here
    NonFiniteWatch,
    _check_nonfinite,
    _nonfinite_error,
    nonfinite_grads,
    step_unless_nonfinite,
)
from distengine.profilers import wiring as profiling


def _optimizer_step(ctx: LoopContext, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> None:
    """Unscale, ``on_before_optimizer_step``, clip, step through the precision, zero the
    gradients; the module's ``configure_gradient_clipping`` / ``optimizer_zero_grad`` where it
    overrides them (optim_hooks.py)."""
    prec, hooks, flags, overrides = ctx.precision, ctx.hooks, ctx.flags, ctx.opt_hooks
    clip = flags.gradient_clip_val or overrides.clip is not None
    if clip:
        prec.unscale(optimizer)
    for fn in hooks["on_before_optimizer_step"]:
        fn(optimizer)
    if clip:
        optim_hooks.clip(ctx, optimizer)
    if flags.on_nonfinite_loss == "skip" and prec.scaler is None:
        # an int, or a device tensor for fused optimizers: read only where metrics are written
        state = ctx.state
        state.skipped_nonfinite = state.skipped_nonfinite + step_unless_nonfinite(
            optimizer, lambda: prec.step(optimizer))
    else:
        prec.step(optimizer)
    if zero_grad and (overrides.zero_grad is None or ctx.one_x is not None):  # else: at the next window's start
        _zero_grad(ctx, optimizer)


step_optimizer = _optimizer_step  # (optim_hooks.HookedOptimizer.step: without zero_grad)


def _zero_grad(ctx: LoopContext, optimizer: torch.optim.Optimizer) -> None:
    for fn in ctx.hooks["on_before_zero_grad"]:
        fn(optimizer)
    if ctx.opt_hooks.zero_grad is None:
        optimizer.zero_grad(set_to_none=True)
    else:
        optim_hooks.zero_grad(ctx, optimizer, ctx.progress.batches_done)


def _zero_grad_step(ctx: LoopContext, optimizer: torch.optim.Optimizer) -> None:
    """The end of a window whose step the module's ``optimizer_step`` already took."""
    if ctx.opt_hooks.zero_grad is None:
        _zero_grad(ctx, optimizer)


def _backward_hooks(ctx: LoopContext, optimizer: torch.optim.Optimizer, accum: int, manual: bool) -> tuple:
    """``on_before_backward`` and ``on_after_backward``; with an overridden ``optimizer_zero_grad``
    (automatic optimization, one optimizer) the gradients are zeroed as in Lightning: at the first
    micro-batch of each window, after ``training_step`` and before ``on_before_backward``."""
    before, after = ctx.hooks["on_before_backward"], ctx.hooks["on_after_backward"]
    if ctx.opt_hooks.zero_grad is not None and not manual and ctx.one_x is None:
        p = ctx.progress

        def zero_grad_at_window_start(loss: torch.Tensor) -> None:
            if p.batches_done % accum == 0:
                _zero_grad(ctx, optimizer)

        before = (zero_grad_at_window_start, *before)
    return before, after


def train_epoch(ctx: LoopContext) -> None:
    """Run the training batches of ``ctx.progress.epoch`` from the resumed position."""
    p, hooks, strategy, data, flags = ctx.progress, ctx.hooks, ctx.strategy, ctx.data, ctx.flags
    module, model, prec, res = ctx.module, strategy.model, ctx.precision, ctx.results
    # the strategy's: DDP's forward (to training_step) or training_step; no-sync for micro-batches
    device, no_sync, step_fn = strategy.root_device, strategy.no_sync, strategy.step_fn
    h_start, h_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
    accum, optimizer, num_batches = flags.accumulate_grad_batches, ctx.optimizers[0], data.num_train_batches
    h_before_bw, h_after_bw = _backward_hooks(ctx, optimizer, accum, not module.automatic_optimization)
    move = batch_mover(module, device)  # None on the CPU without transfer hooks
    collect, step_end = ctx.adapted.collect_train_outputs, ctx.adapted.step_end  # the 1.x style (compat.py)
    watch = _nonfinite_check(ctx, prec, device)
    # one_x: 1.x automatic optimization over several optimizers (compat.py), or None
    log_every, sched, one_x = flags.log_every_n_steps, data.val_schedule, ctx.one_x  # (val_schedule.py)
    args_of = (lambda b, i: (b, i)) if takes_batch_idx(module.training_step) else (lambda b, i: (b,))
    autocast, manual = (prec.autocast if prec.is_mixed else None), not module.automatic_optimization
    convert = prec.convert_input if prec._true_dtype is not None else None

    batch_idx, outputs = p.batches_done, ([] if collect else None)
    iterator, ahead = _epoch_iterator(ctx, batch_idx, num_batches)
    parts = (iterator, step_fn, partial(prec.backward, module=module), _optimizer_step)  # via module.backward
    iterator, step_fn, backward, opt_step = profiling.train_parts(ctx, *parts) if ctx.profiling else parts
    res.stage, res.in_step, ctx.state.is_last_batch = "train", True, False
    skip_rest, first_batch, returned_none, automatic = False, batch_idx, 0, not manual and one_x is None
    hooked = (step_fn, autocast, step_end, watch, accum, backward, h_before_bw, h_after_bw) \
        if ctx.opt_hooks.step is not None and automatic else None

    for batch in iterator if batch_idx < num_batches else ():
        if move is not None:
            batch = move(batch, 0)
        if convert is not None:
            batch = convert(batch)
        res.set_batch(batch)
        skip_rest = any([fn(batch, batch_idx) == -1 for fn in h_start]) if h_start else False
        if skip_rest:  # Lightning: -1 skips the rest of THIS epoch; the next one runs as usual
            break
        is_last = ctx.state.is_last_batch = batch_idx + 1 >= num_batches or (ahead is not None and ahead.last)
        last_micro = (batch_idx + 1) % accum == 0 or is_last
        loss = None
        if one_x is not None:  # steps its optimizers (and counts them) itself
            out = one_x.run_batch(ctx, args_of(batch, batch_idx), batch_idx, last_micro)
        elif hooked is not None and last_micro:  # the module's optimizer_step runs the batch in its closure
            out, loss = _hooked_window(ctx, optimizer, batch_idx, args_of(batch, batch_idx), hooked)
            returned_none += loss is None
        else:
            with no_sync(model, last_micro):
                if autocast is not None:
                    with autocast():
                        out = step_fn(*args_of(batch, batch_idx))
                else:
                    out = step_fn(*args_of(batch, batch_idx))
                if not manual:
                    loss = _extract_loss(ctx, out)
                    if step_end is not None:
                        out = step_end(out)
                        loss = _extract_loss(ctx, out)
                    returned_none += loss is None
                if loss is not None:
                    _backward(ctx, loss, watch, accum, backward, h_before_bw, h_after_bw)
        p.total_batches += 1
        if last_micro:  # (Lightning steps even when training_step returned None: backward alone is skipped)
            _end_step_window(ctx, p, optimizer, opt_step if hooked is None else _zero_grad_step, automatic,
                             log_every, loss is None and hooked is None, is_last)
        batch_idx += 1
        p.batches_done = batch_idx
        out = {"loss": out.detach()} if (h_end or collect) and isinstance(out, torch.Tensor) else out  # as in Lightning
        if collect:
            outputs.append(_detach(out))
        for fn in h_end:
            fn(out, batch, batch_idx - 1)
        if vote_step(ctx) or (not is_last and sched.in_epoch and sched.due_in_epoch(p.epoch, batch_idx, p.total_batches)
                              and _validate_in_epoch(ctx)):
            return
        if 0 <= flags.max_steps <= p.global_step or batch_idx >= num_batches:
            break
    # a loader without a length (an iterable dataset) ends its epoch when it is exhausted
    p.epoch_done = batch_idx >= num_batches or skip_rest or (ahead is not None and ahead.exhausted)
    if p.epoch_done and returned_none and returned_none == batch_idx - first_batch:
        _warn_no_step(p.epoch, returned_none)
    ctx.state.train_outputs = outputs  # (None unless collected for training_epoch_end)


def _hooked_window(ctx: LoopContext, optimizer: torch.optim.Optimizer, batch_idx: int, args: tuple,
                   parts: tuple) -> list[Any]:
    """The last micro-batch of a window when the module overrides ``optimizer_step``: its
    closure runs ``training_step`` and backward (again, with the gradients zeroed first, when an
    optimizer such as LBFGS calls it several times). Returns [step output, loss]."""
    step_fn, autocast, step_end, watch, accum, backward, before, after = parts
    result: list[Any] = []

    def closure() -> Any:
        if result:
            optimizer.zero_grad(set_to_none=True)
        if autocast is not None:
            with autocast():
                out = step_fn(*args)
        else:
            out = step_fn(*args)
        loss = _extract_loss(ctx, out)
        if step_end is not None:
            out = step_end(out)
            loss = _extract_loss(ctx, out)
        if loss is not None:
            _backward(ctx, loss, watch, accum, backward, before, after)
        result[:] = [out, loss]
        return loss

    optim_hooks.call_optimizer_step(ctx, optimizer, batch_idx, closure)
    return result


def _validate_in_epoch(ctx: LoopContext) -> bool:
    """Validation every ``val_check_interval`` batches; True when the ranks then voted to stop."""
    data = _val_data(ctx)
    if not data.should_validate():
        return False
    if ctx.progress.batches_done % ctx.flags.accumulate_grad_batches == 0:  # Lightning: not mid-window
        ctx.module.on_validation_model_zero_grad()
    run_eval(ctx, "validate", data.val_loaders, data.val_limits())
    data.val_schedule.validated()
    ctx.results.stage, ctx.results.in_step = "train", True
    return vote_step(ctx)


def _val_data(ctx: LoopContext) -> Any:
    """``ctx.data`` with the validation loaders Lightning has when a validation runs: loaded
    at the first one that needs them, reloaded every ``reload_dataloaders_every_n_epochs``
    epochs after the last load (counted at validation runs, not epoch starts)."""
    data, every, epoch = ctx.data, ctx.flags.reload_dataloaders_every_n_epochs, ctx.progress.epoch
    if data.val_pending or (every and epoch - data.val_loaded_epoch >= every):
        ctx.reload_dataloaders("val")
        data.val_loaded_epoch = epoch
    return data


def _backward(ctx: LoopContext, loss: torch.Tensor, watch: Any, accum: int, backward: Any, before: tuple,
              after: tuple) -> None:
    """Check the loss (the first one; not finite: ``watch`` is False, True on the CPU (a host
    read now), or a NonFiniteWatch that reads it later), then backward through the precision."""
    state = ctx.state
    if not state.loss_checked:
        _check_first_loss(ctx, loss)
    if watch is True:
        _check_nonfinite(ctx, loss)
    elif watch:
        watch.update(loss, ctx.progress.global_step)
    state.last_loss = loss
    if accum > 1:
        loss = loss / accum
    for fn in before:
        fn(loss)
    backward(loss)
    for fn in after:
        fn()


def _end_step_window(ctx: LoopContext, p: Any, optimizer: torch.optim.Optimizer, opt_step: Any, stepped: bool,
                     log_every: int, no_loss: bool = False, epoch_end: bool = False) -> None:
    """The last micro-batch of an accumulation window: step (automatic optimization; manual
    optimization counts the user's own steps), step-interval schedulers, the logging clock.

    As in Lightning, a window whose last ``training_step`` returned None (``no_loss``) still
    steps, with the gradients earlier micro-batches left (none: the parameters stay as they
    are), and counts in ``global_step`` and the schedulers; under a GradScaler Lightning skips
    that step (and the scale update) but still counts it."""
    if stepped:
        if no_loss and ctx.precision.scaler is not None:
            _step_skipped_by_scaler(ctx, optimizer)
        else:
            opt_step(ctx, optimizer)
        p.global_step += 1
        if ctx.has_step_schedulers:  # a step-interval ReduceLROnPlateau reads the step's metrics
            _step_schedulers(ctx, "step", plateau=None)
    # Lightning's logging clock: one tick per batch that closes a step window, however many
    # optimizers stepped in it (manual and 1.x modes) and even when none did
    p.batches_stepped += 1
    if log_every and p.batches_stepped % log_every == 0:  # 0: no step values, as in Lightning
        ctx.writer.write_train_step()
    if epoch_end:  # as Lightning: the epoch's schedulers step before the last batch's on_train_batch_end
        _step_schedulers(ctx, "epoch", plateau=False)


def _step_skipped_by_scaler(ctx: LoopContext, optimizer: torch.optim.Optimizer) -> None:
    """Lightning's mixed-precision step after a skipped backward: ``on_before_optimizer_step``,
    clip, zero the gradients; no unscale, ``scaler.step`` or ``update``."""
    for fn in ctx.hooks["on_before_optimizer_step"]:
        fn(optimizer)
    if ctx.flags.gradient_clip_val or ctx.opt_hooks.clip is not None:
        optim_hooks.clip(ctx, optimizer)
    if ctx.opt_hooks.zero_grad is None:
        _zero_grad(ctx, optimizer)


def _sanity_check(ctx: LoopContext) -> None:
    """A few validation batches before training, as in Lightning: inside an isolated RNG state
    (the random numbers its loaders, dropout or hooks draw are given back, so training draws
    exactly what it would without the check), and its logged values are forgotten afterwards
    (``callback_metrics``, the progress bar and a monitoring ModelCheckpoint see training's own)."""
    rng = capture_rng_state()
    if ctx.data.val_schedule.epoch_validates(ctx.progress.epoch):
        ctx.data.val_loaded_epoch = ctx.progress.epoch  # Lightning: a load for that epoch's validation
    try:
        ctx.status.sanity_checking = True
        for fn in ctx.hooks["on_sanity_check_start"]:
            fn()
        try:
            if ctx.data.val_pending:  # Lightning loads val_dataloader() here (fills ctx.sanity_steps)
                ctx.reload_dataloaders("val")
            if ctx.data.should_validate():
                run_eval(ctx, "validate", ctx.data.val_loaders, ctx.sanity_steps, sanity=True)
        finally:
            ctx.status.sanity_checking = False
        for fn in ctx.hooks["on_sanity_check_end"]:
            fn()
    finally:
        restore_rng_state(rng)
    ctx.results.reset_all()


def fit_loop(ctx: LoopContext) -> None:
    p, hooks, state, status, data = ctx.progress, ctx.hooks, ctx.state, ctx.status, ctx.data
    if ctx.sanity_steps is not None:
        _sanity_check(ctx)
    # a later fit of a finished Trainer, or limit_train_batches=0: Lightning skips the training loop
    if fit_done(ctx) or not data.num_train_batches:
        ctx.stop_vote.close()
        return
    ctx.data.train_loaded_epoch = p.epoch  # (Lightning loads the training data after the sanity check)
    if ctx.sanity_steps is None and not ctx.data.val_pending:
        ctx.data.val_loaded_epoch = p.epoch  # loaded at the start of training, no sanity check
    if ctx.data.val_pending and data.val_schedule.epoch_validates(p.epoch):
        _val_data(ctx)  # Lightning: at the start of training when its first epoch validates
    _warn_modules_in_eval_mode(ctx.module)  # (Lightning 2.x leaves each submodule's mode to the user)
    data.val_schedule.start()  # a time-based val_check_interval counts from here
    for fn in hooks["on_train_start"]:
        fn()
    stopped_in_epoch = False
    while not fit_done(ctx):
        every = ctx.flags.reload_dataloaders_every_n_epochs  # Lightning: n epochs after the last load
        if every and p.epoch - data.train_loaded_epoch >= every and not p.batches_done:
            ctx.reload_dataloaders("train")  # refills ctx.data in place
            data.train_loaded_epoch = p.epoch
        if data.train_sampler is not None:
            data.train_sampler.set_epoch(p.epoch)
        for fn in hooks["on_train_epoch_start"]:
            fn()
        ctx.strategy.refresh_wrapping()  # (finetuning callbacks unfreeze layers at an epoch start: DDP is rebuilt)
        with ctx.profiler.profile("run_training_epoch"):
            train_epoch(ctx)
        ctx.strategy.check_wrapping(p.epoch)
        if state.stop_now and status.stop_signal is not None:
            break  # every rank agreed to stop on a signal: save the exact position and exit
        # An epoch cut short (max_steps, or a should_stop request, mid-epoch) still ends as in
        # Lightning: epoch-end hooks, schedulers, metrics and checkpoints; validation only after
        # a stop request. The position stays mid-epoch, so a resume goes on from there.
        cut_short = not p.epoch_done
        # (no stop vote then: the fit ends anyway, and the last vote stays the one close() settles)
        val = not cut_short and data.val_schedule.due_at_epoch_end(p.epoch, p.batches_done, p.total_batches)
        _end_of_epoch(ctx, validate=val or state.stop_now, vote=not cut_short)
        if state.stop_now or cut_short:
            stopped_in_epoch = True
            break
        p.epoch += 1
        p.batches_done = 0
        p.samples_done = 0
        ctx.resume.epoch_start_sample = 0  # a resumed epoch started mid-way; the next one starts at 0
        p.epoch_done = p.iter_started = False
        if data.train_sampler is not None:
            data.train_sampler.set_start(0)
    # Stopped inside an epoch's training or at its end (not by a signal, whose checkpoint is
    # named by the exact position): Trainer.current_epoch now counts that epoch as finished.
    state.stopped_in_epoch = stopped_in_epoch and status.stop_signal is None
    ctx.writer.flush_train_step()  # stopped mid-epoch (max_steps, a stop request)
    # The loop has stopped on every rank at the same step: finish the stop vote still in
    # flight (see StopVote.close). Not on an exception: a failed peer might never answer it.
    ctx.stop_vote.close()
    if ctx.adapted.training_end is not None:  # the 0.x argument-less training_end (compat.py)
        ctx.adapted.training_end()
    for fn in hooks["on_train_end"]:
        fn()


def _warn_modules_in_eval_mode(module: torch.nn.Module) -> None:
    n = sum(not m.training for m in module.modules())
    if n:
        from distengine.distributed.rank_zero import rank_zero_warn
        from distengine.utilities.warnings import PossibleUserWarning

        rank_zero_warn(f"Found {n} module(s) in eval mode at the start of training. This may lead to unexpected "
                       "behavior during training. If this is intentional, you can ignore this warning.",
                       category=PossibleUserWarning)


def _monitors(fn: Any) -> bool:
    """Whether the callback behind hook ``fn`` is a checkpoint or early-stopping callback."""
    from distengine.callbacks.checkpoint import Checkpoint
    from distengine.callbacks.early_stopping import EarlyStopping

    return isinstance(getattr(getattr(fn, "func", fn), "__self__", None), (Checkpoint, EarlyStopping))


def _end_of_epoch(ctx: LoopContext, validate: bool = True, vote: bool = True) -> None:
    p, res, data, state = ctx.progress, ctx.results, ctx.data, ctx.state
    ctx.writer.raise_if_nonfinite()
    ctx.writer.flush_train_step()  # the epoch's last step values, if not written yet
    # (the epoch-interval schedulers stepped before the last batch's on_train_batch_end: _end_step_window)
    if validate and data.val_schedule.epoch_validates(p.epoch) and _val_data(ctx).should_validate():
        ctx.module.on_validation_model_zero_grad()  # (release the gradients first, as Lightning)
        run_eval(ctx, "validate", data.val_loaders, data.val_limits())
        data.val_schedule.validated()
    res.stage, res.in_step = "train", False
    if ctx.adapted.collect_train_outputs:
        ret = ctx.module.training_epoch_end(state.train_outputs)
        state.train_outputs = None
        _log_returned(res, ret, epoch_level=True)
    # As in Lightning: the steps' epoch values first (the hooks read them in callback_metrics), then
    # the callbacks' hook, the module's, and last the monitoring callbacks' (a ModelCheckpoint or
    # EarlyStopping sees what the module logged there); one logger write before those
    log, _ = res.collect_epoch("train")
    callbacks = ctx.callback_hooks["on_train_epoch_end"]
    monitoring = tuple(fn for fn in callbacks if _monitors(fn))
    hooks = tuple(fn for fn in callbacks if fn not in monitoring) + ctx.module_hooks["on_train_epoch_end"]
    for fn in hooks:
        fn()
    for group, more in ((hooks, monitoring), (monitoring, ())):
        if group:  # what those hooks logged
            log.update(res.collect_late("train")[0])
        if log:
            ctx.writer.log_epoch(log)
        log = {}
        for fn in more:
            fn()
    # as in Lightning, after the epoch's hooks: a plateau scheduler may monitor a train epoch metric
    _step_schedulers(ctx, "epoch", plateau=True)
    res.reset_metric_objects("train")
    res.in_step = True
    if vote:
        vote_epoch(ctx)
