"""The fit loop, as plain functions over a :class:`~distengine.loop_context.LoopContext`: the
parts of the Trainer it uses, each named (``ctx.strategy``, ``ctx.precision``, ``ctx.hooks``,
``ctx.data``, ``ctx.state``...); the Trainer builds it once per ``fit``.

``fit_loop(ctx)``::

    sanity validation (fresh runs only); then the training loader is loaded (ctx.load_train)
    while epochs remain and nobody asked to stop (loop_stopping.fit_done):
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

Each batch is optimised by ``ctx.optimization`` (:mod:`distengine.optimization`: automatic,
manual, or the 1.x several-optimizer mode). The epoch iterator and stop vote are in
:mod:`distengine.epoch_iterator` and :mod:`distengine.loop_stopping`;
evaluation (validate/test/predict, and validation inside fit) in :mod:`distengine.loop_eval`.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch

from distengine.checkpoint.rng import capture_rng_state, restore_rng_state
from distengine.epoch_iterator import epoch_iterator
from distengine.loop_context import EpochParts, LoopContext
from distengine.loop_eval import batch_mover, run_eval, takes_batch_idx
from distengine.loop_stopping import fit_done, vote_epoch, vote_step
from distengine.nonfinite import (  # noqa: F401 - re-exported: tests and callers import them from here
    NonFiniteWatch,
    _check_nonfinite,
    _nonfinite_error,
    nonfinite_grads,
    step_unless_nonfinite,
)
from distengine.optimization.steps import nonfinite_check, step_optimizer, step_schedulers
from distengine.profilers import wiring as profiling
from distengine.run_warnings import warn_no_step
from distengine.step_outputs import detach, log_returned


def train_epoch(ctx: LoopContext) -> None:
    """Run the training batches of ``ctx.progress.epoch`` from the resumed position; each batch
    is optimised by ``ctx.optimization`` (automatic, manual or the 1.x several-optimizer mode,
    distengine/optimization/)."""
    p, hooks, strategy, data, flags = ctx.progress, ctx.hooks, ctx.strategy, ctx.data, ctx.flags
    module, prec, res, opt = ctx.module, ctx.precision, ctx.results, ctx.optimization
    h_start, h_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
    accum, num_batches = flags.accumulate_grad_batches, data.num_train_batches
    move = batch_mover(module, strategy.root_device)  # None on the CPU without transfer hooks
    collect = ctx.adapted.collect_train_outputs  # training_epoch_end(outputs) (the 1.x style, compat.py)
    watch = nonfinite_check(ctx, prec, strategy.root_device)
    log_every, sched = flags.log_every_n_steps, data.val_schedule  # (val_schedule.py)
    args_of = (lambda b, i: (b, i)) if takes_batch_idx(module.training_step) else (lambda b, i: (b,))
    convert = prec.convert_input if prec._true_dtype is not None else None

    batch_idx, outputs = p.batches_done, ([] if collect else None)
    iterator, ahead = epoch_iterator(ctx, batch_idx, num_batches)
    # the strategy's step: DDP's forward (to training_step) or training_step; backward via module.backward
    parts = (iterator, strategy.step_fn, partial(prec.backward, module=module), step_optimizer)
    iterator, step_fn, backward, opt_step = profiling.train_parts(ctx, *parts) if ctx.profiling else parts
    opt.start_epoch(ctx, EpochParts(step_fn, backward, opt_step, watch, prec.autocast if prec.is_mixed else None))
    res.stage, res.in_step, ctx.state.is_last_batch = "train", True, False
    skip_rest, first_batch, returned_none = False, batch_idx, 0

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
        out, skipped = opt.run_batch(ctx, args_of(batch, batch_idx), batch_idx, last_micro)
        returned_none += skipped
        p.total_batches += 1
        if last_micro:  # (Lightning steps even when training_step returned None: backward alone is skipped)
            opt.end_window(ctx)
            _window_clock(ctx, p, log_every, is_last)
        batch_idx += 1
        p.batches_done = batch_idx
        out = {"loss": out.detach()} if (h_end or collect) and isinstance(out, torch.Tensor) else out  # as in Lightning
        if collect:
            outputs.append(detach(out))
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
        warn_no_step(p.epoch, returned_none)
    ctx.state.train_outputs = outputs  # (None unless collected for training_epoch_end)


def _window_clock(ctx: LoopContext, p: Any, log_every: int, epoch_end: bool) -> None:
    """After the last micro-batch of an accumulation window (and ``ctx.optimization``'s step):
    Lightning's logging clock, one tick per batch that closes a step window, however many
    optimizers stepped in it (manual and 1.x modes) and even when none did."""
    p.batches_stepped += 1
    if log_every and p.batches_stepped % log_every == 0:  # 0: no step values, as in Lightning
        ctx.writer.write_train_step()
    if epoch_end:  # as Lightning: the epoch's schedulers step before the last batch's on_train_batch_end
        step_schedulers(ctx, "epoch", plateau=False)


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
    ctx.load_train()  # Lightning loads the training data here, after the sanity check
    # a later fit of a finished Trainer, or limit_train_batches=0: Lightning skips the training loop
    if fit_done(ctx) or not data.num_train_batches:
        ctx.stop_vote.close()
        return
    ctx.data.train_loaded_epoch = p.epoch  # (Lightning loads the training data after the sanity check)
    if ctx.sanity_steps is None and not ctx.data.val_pending:
        ctx.data.val_loaded_epoch = p.epoch  # loaded at the start of training, no sanity check
    if data.val_pending and data.val_schedule.epoch_validates(p.epoch):
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
        log_returned(res, ret, epoch_level=True)
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
    step_schedulers(ctx, "epoch", plateau=True)
    res.reset_metric_objects("train")
    res.in_step = True
    if vote:
        vote_epoch(ctx)
