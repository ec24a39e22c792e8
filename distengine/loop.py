"""The fit and evaluation loops, as plain functions over the Trainer's explicit state.

``fit_loop(t)``::

    sanity validation (fresh runs only)
    while epochs remain and nobody asked to stop:
        train_epoch: for each batch from the resumed position:
            on_train_batch_start -> forward (autocast; DDP no_sync on all but the last
            micro-batch) -> loss / accumulate_grad_batches -> backward
            on the last micro-batch: unscale -> clip -> optimizer step -> zero_grad ->
            step-interval schedulers -> write step metrics every log_every_n_steps
            on_train_batch_end; vote on stopping (all ranks act on the same step)
            validation every val_check_interval batches
        epoch end: epoch schedulers -> validation -> plateau schedulers ->
            training_epoch_end / on_train_epoch_end -> epoch metrics -> stop vote

Evaluation runs on the unwrapped module under ``inference_mode``, so ranks with different
numbers of batches never meet in a collective until the epoch-end reduce.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any

import torch

from distengine import metric_writer
from distengine.compat import _detach, _log_returned
from distengine.data import LookAhead, move_to_device
from distengine.dist import collectives
from distengine.nonfinite import (  # noqa: F401 - re-exported: tests and callers import them from here
    NonFiniteWatch,
    _check_nonfinite,
    _nonfinite_error,
    nonfinite_grads,
    step_unless_nonfinite,
)
from distengine.profilers import wiring as profiling


def takes_batch_idx(step: Any) -> bool:
    """Lightning 2.x lets ``*_step`` omit ``batch_idx``; decided once per loop, not per batch."""
    try:
        params = list(inspect.signature(step).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return True
    return len(params) >= 2


def _extract_loss(t, out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        loss = out
    elif isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(f"training_step returned a dict without a 'loss' key (keys: {sorted(out)})")
        loss = out["loss"]
        if "log" in out or "progress_bar" in out:
            _log_returned(t, out, epoch_level=False)
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


def _step_schedulers(t, interval: str, plateau: bool | None) -> None:
    """Step the schedulers of ``interval`` (``plateau=None``: plain and plateau ones alike).
    Under manual optimization the user steps them, as in Lightning: stepping here too would
    step them twice."""
    if not t._module.automatic_optimization:
        return
    for cfg in t.lr_scheduler_configs:
        if cfg.interval != interval or (plateau is not None and cfg.reduce_on_plateau != plateau):
            continue
        count = t.progress.global_step if interval == "step" else t.progress.epoch + 1
        if count % cfg.frequency:
            continue
        if cfg.reduce_on_plateau:
            metrics = t.callback_metrics
            if cfg.monitor not in metrics:
                if cfg.strict:
                    raise RuntimeError(f"ReduceLROnPlateau monitors {cfg.monitor!r}, which was not logged; "
                                       f"logged: {sorted(metrics)}")
                continue
            cfg.scheduler.step(float(metrics[cfg.monitor]))
        else:
            cfg.scheduler.step()


def _optimizer_step(t, optimizer: torch.optim.Optimizer) -> None:
    prec = t._precision
    hooks = t._hooks
    clip = t.gradient_clip_val
    if clip:
        prec.unscale(optimizer)
    for fn in hooks["on_before_optimizer_step"]:
        fn(optimizer)
    if clip:
        t.strategy.clip_gradients(optimizer, clip, t.gradient_clip_algorithm)
    if t.on_nonfinite_loss == "skip" and prec.scaler is None:
        # an int, or a device tensor for fused optimizers: read only where metrics are written
        t._skipped_nonfinite = t._skipped_nonfinite + step_unless_nonfinite(optimizer, lambda: prec.step(optimizer))
    else:
        prec.step(optimizer)
    for fn in hooks["on_before_zero_grad"]:
        fn(optimizer)
    optimizer.zero_grad(set_to_none=True)


def train_epoch(t) -> None:
    """Run the training batches of ``t.progress.epoch`` from the resumed position."""
    p, hooks, strategy = t.progress, t._hooks, t.strategy
    module, model, prec, res = t._module, strategy.model, t._precision, t._results
    # the strategy's parts: DDP's forward (routed to training_step) or training_step itself,
    # and the no-sync context of the micro-batches that do not end an accumulation window
    device, no_sync, step_fn = strategy.root_device, strategy.no_sync, strategy.step_fn
    h_start, h_end = hooks["on_train_batch_start"], hooks["on_train_batch_end"]
    h_before_bw, h_after_bw = hooks["on_before_backward"], hooks["on_after_backward"]
    accum, optimizer, num_batches = t.accumulate_grad_batches, t.optimizers[0], t.num_training_batches
    on_cpu = device.type == "cpu"
    collect, outputs = t._collect_train_outputs, ([] if t._collect_train_outputs else None)
    watch = _nonfinite_check(t, prec, device)
    log_every, val_every = t.log_every_n_steps, t._val_every_batches
    one_x = t._one_x  # 1.x automatic optimization over several optimizers (compat.py), or None
    args_of = (lambda b, i: (b, i)) if takes_batch_idx(module.training_step) else (lambda b, i: (b,))
    autocast, manual = (prec.autocast if prec.is_mixed else None), not module.automatic_optimization
    convert = prec.convert_input if prec._true_dtype is not None else None

    batch_idx = p.batches_done
    iterator, ahead = _epoch_iterator(t, batch_idx, num_batches)
    parts = (iterator, step_fn, prec.backward, _optimizer_step)  # timed when profiling, chosen once per epoch
    iterator, step_fn, backward, opt_step = profiling.train_parts(t, *parts) if t._profiling else parts
    res.stage, res.in_step = "train", True
    skip_rest, steps_before, first_batch, returned_none = False, p.global_step, batch_idx, 0

    for batch in iterator if batch_idx < num_batches else ():
        if not on_cpu:
            batch = move_to_device(batch, device)
        if convert is not None:
            batch = convert(batch)
        res.set_batch(batch)
        skip_rest = False
        for fn in h_start:
            if fn(batch, batch_idx) == -1:
                skip_rest = True
        if skip_rest:  # Lightning: -1 skips the rest of THIS epoch; the next one runs as usual
            break
        is_last = batch_idx + 1 >= num_batches or (ahead is not None and ahead.last)
        last_micro = (batch_idx + 1) % accum == 0 or is_last
        loss = None
        if one_x is not None:  # steps its optimizers (and counts them) itself
            out = one_x.run_batch(t, args_of(batch, batch_idx), batch_idx, last_micro)
        else:
            with no_sync(model, last_micro):
                if autocast is not None:
                    with autocast():
                        out = step_fn(*args_of(batch, batch_idx))
                else:
                    out = step_fn(*args_of(batch, batch_idx))
                if not manual:
                    loss = _extract_loss(t, out)
                    if t._step_hook is not None:
                        out = t._step_hook(out)
                        loss = _extract_loss(t, out)
                    returned_none += loss is None
                if loss is not None:
                    _backward(t, loss, watch, accum, backward, h_before_bw, h_after_bw)
        p.total_batches += 1
        if last_micro:
            _end_step_window(t, p, optimizer, opt_step, loss is not None, log_every)
        batch_idx += 1
        p.batches_done = batch_idx
        if (h_end or collect) and isinstance(out, torch.Tensor):  # they get {"loss": ...}, as in Lightning
            out = {"loss": out.detach()}
        if collect:
            outputs.append(_detach(out))
        for fn in h_end:
            fn(out, batch, batch_idx - 1)
        if t._vote_step() or (val_every and batch_idx % val_every == 0 and not is_last
                              and _validate_in_epoch(t, res)):
            return
        if 0 <= t.max_steps <= p.global_step or batch_idx >= num_batches:
            break
    # a loader without a length (an iterable dataset) ends its epoch when it is exhausted
    p.epoch_done = batch_idx >= num_batches or skip_rest or (ahead is not None and ahead.exhausted)
    if p.epoch_done and not manual and p.global_step == steps_before and batch_idx > first_batch:
        _warn_no_step(p.epoch, batch_idx - first_batch, returned_none)
    if collect:
        t._train_outputs = outputs


def _nonfinite_check(t, prec: Any, device: torch.device) -> Any:
    """How this epoch checks that the loss is finite (see ``_backward``)."""
    if t.on_nonfinite_loss != "error" or prec.scaler is not None:
        return False
    if device.type == "cpu":
        return True
    if t._nonfinite_watch is None:
        t._nonfinite_watch = NonFiniteWatch(device)
    return t._nonfinite_watch


def _validate_in_epoch(t, res: Any) -> bool:
    """Validation every ``val_check_interval`` batches; True when the ranks then voted to stop."""
    if not t._should_validate():
        return False
    run_eval(t, "validate", t._val_loaders, t._limit("val"))
    res.stage, res.in_step = "train", True
    return t._vote_step()


def _epoch_iterator(t, batch_idx: int, num_batches: int | float) -> tuple[Any, LookAhead | None]:
    """The epoch's batch iterator from the resumed position (and the look-ahead that tells a
    loader without a length when it reaches its last batch)."""
    p, resume = t.progress, t._resume
    resume.epoch_start_batch = batch_idx
    # Creating the iterator draws worker seeds from the global RNG. A checkpoint taken after
    # that draw (mid-epoch) is restored after iter(); one taken before it (at an epoch end or
    # epoch start) before iter(), so the resumed run draws exactly what the original did.
    if resume.pending_rng is not None and not resume.rng_after_iter:
        _restore_pending_rng(resume)
    iterator = iter(t._train_loader)
    p.iter_started = True
    if t._train_sampler is None and batch_idx:  # not resumable by position: skip what was done
        for _ in range(batch_idx):
            next(iterator)
    ahead = LookAhead(iterator) if math.isinf(num_batches) else None
    if resume.pending_rng is not None:
        _restore_pending_rng(resume)
    return (iterator if ahead is None else ahead), ahead


def _backward(t, loss: torch.Tensor, watch: Any, accum: int, backward: Any, before: tuple, after: tuple) -> None:
    """Check the loss (the first one; not finite: ``watch`` is False, True on the CPU (a host
    read now), or a NonFiniteWatch that reads it later), then backward through the precision."""
    if not t._loss_checked:
        t._check_first_loss(loss)
    if watch is True:
        _check_nonfinite(t, loss)
    elif watch:
        watch.update(loss, t.progress.global_step)
    t._last_loss = loss
    if accum > 1:
        loss = loss / accum
    for fn in before:
        fn(loss)
    backward(loss)
    for fn in after:
        fn()


def _end_step_window(t, p, optimizer: torch.optim.Optimizer, opt_step: Any, stepped: bool, log_every: int) -> None:
    """The last micro-batch of an accumulation window: step (when a loss was returned; manual
    optimization counts the user's own steps), step-interval schedulers, the logging clock."""
    if stepped:
        opt_step(t, optimizer)
        p.global_step += 1
        if t._has_step_schedulers:  # a step-interval ReduceLROnPlateau reads the step's metrics
            _step_schedulers(t, "step", plateau=None)
    # Lightning's logging clock: one tick per batch that closes a step window, however many
    # optimizers stepped in it (manual and 1.x modes) and even when none did
    p.batches_stepped += 1
    if log_every and p.batches_stepped % log_every == 0:  # 0: no step values, as in Lightning
        t._write_step_metrics()


def _warn_no_step(epoch: int, batches: int, returned_none: int) -> None:
    """Lightning lets ``training_step`` return None to skip a batch; an epoch in which every
    batch was skipped trains nothing, which is almost always a forgotten ``return loss``."""
    from distengine.dist.rank_zero import rank_zero_warn

    why = (f"training_step returned None for all {batches} batches" if returned_none == batches else
           f"training_step returned None for {returned_none} of its {batches} batches")
    rank_zero_warn(f"epoch {epoch} took no optimizer step ({why}), so it trained nothing; return the loss "
                   "from training_step (None skips a batch, which is meant for a few batches, not all)")


def _restore_pending_rng(resume) -> None:
    from distengine.checkpoint.rng import restore_rng_state

    restore_rng_state(resume.pending_rng)
    resume.pending_rng = None


def fit_loop(t) -> None:
    p = t.progress
    hooks = t._hooks
    if t._run_sanity_check:
        t._status.sanity_checking = True
        for fn in hooks["on_sanity_check_start"]:
            fn()
        try:
            run_eval(t, "validate", t._val_loaders, t._sanity_steps, sanity=True)
        finally:
            t._status.sanity_checking = False
        for fn in hooks["on_sanity_check_end"]:
            fn()
    for fn in hooks["on_train_start"]:
        fn()
    stopped_in_epoch = False
    while not t._fit_done():
        every = t.reload_dataloaders_every_n_epochs  # Lightning: at epochs n, 2n, ... (not on resume mid-epoch)
        if every and p.epoch and p.epoch % every == 0 and not p.batches_done:
            t._reload_dataloaders()
        if t._train_sampler is not None:
            t._train_sampler.set_epoch(p.epoch)
        t._module.train()
        for fn in hooks["on_train_epoch_start"]:
            fn()
        t.strategy.refresh_wrapping()  # (finetuning callbacks unfreeze layers at an epoch start: DDP is rebuilt)
        with t.profiler.profile("run_training_epoch"):
            train_epoch(t)
        if t._stop_now and t._status.stop_signal is not None:
            break  # every rank agreed to stop on a signal: save the exact position and exit
        # An epoch cut short (max_steps, or a should_stop request, mid-epoch) still ends as in
        # Lightning: epoch-end hooks, schedulers, metrics and checkpoints; validation only after
        # a stop request. The position stays mid-epoch, so a resume goes on from there.
        cut_short = not p.epoch_done
        # (no stop vote then: the fit ends anyway, and the last vote stays the one close() settles)
        _end_of_epoch(t, validate=not cut_short or t._stop_now, vote=not cut_short)
        if t._stop_now or cut_short:
            stopped_in_epoch = True
            break
        p.epoch += 1
        p.batches_done = 0
        p.samples_done = 0
        t._resume.epoch_start_sample = 0  # a resumed epoch started mid-way; the next one starts at 0
        p.epoch_done = p.iter_started = False
        if t._train_sampler is not None:
            t._train_sampler.set_start(0)
    # Stopped inside an epoch's training or at its end (not by a signal, whose checkpoint is
    # named by the exact position): Trainer.current_epoch now counts that epoch as finished.
    t._stopped_in_epoch = stopped_in_epoch and t._status.stop_signal is None
    metric_writer.flush_train_step(t)  # stopped mid-epoch (max_steps, a stop request)
    # The loop has stopped on every rank at the same step: finish the stop vote still in
    # flight (see StopVote.close). Not on an exception: a failed peer might never answer it.
    t._stop_vote.close()
    if t._training_end is not None:  # the 0.x argument-less training_end (compat.py)
        t._training_end()
    for fn in hooks["on_train_end"]:
        fn()


def _end_of_epoch(t, validate: bool = True, vote: bool = True) -> None:
    p = t.progress
    res = t._results
    t._raise_if_nonfinite()
    metric_writer.flush_train_step(t)  # the epoch's last step values, if not written yet
    _step_schedulers(t, "epoch", plateau=False)
    if validate and t._should_validate() and (p.epoch + 1) % t.check_val_every_n_epoch == 0:
        run_eval(t, "validate", t._val_loaders, t._limit("val"))
    _step_schedulers(t, "epoch", plateau=True)
    res.stage, res.in_step = "train", False
    module = t._module
    if t._collect_train_outputs:
        ret = module.training_epoch_end(t._train_outputs)
        t._train_outputs = None
        _log_returned(t, ret, epoch_level=True)
    for fn in t._module_hooks["on_train_epoch_end"]:
        fn()
    log, _ = res.collect_epoch("train")
    if log:
        t._log_to_loggers(log)
    for fn in t._callback_hooks["on_train_epoch_end"]:
        fn()
    res.reset_metric_objects("train")
    res.in_step = True
    if vote:
        t._vote_epoch()


_EVAL_NAMES = {"validate": "validation", "test": "test", "predict": "predict"}


def run_eval(t, stage: str, loaders: list[Any], limit: list[int], sanity: bool = False) -> list[dict]:
    """Run validation/test/predict over ``loaders``; return per-loader metrics (or predictions)."""
    with t.profiler.profile("run_sanity_check" if sanity else f"run_{_EVAL_NAMES[stage]}"):
        return _run_eval(t, stage, loaders, limit, sanity)


@torch.no_grad()
def _run_eval(t, stage: str, loaders: list[Any], limit: list[int], sanity: bool) -> list[dict]:
    module, hooks, res, prec = t._module, t._hooks, t._results, t._precision
    name = _EVAL_NAMES[stage]
    step = getattr(module, f"{name}_step")
    takes_idx = takes_batch_idx(step)
    if t._profiling:  # timed step and batch fetches, chosen once per run
        step, loaders = profiling.eval_parts(t, name, step, loaders)
    was_training = module.training
    module.eval()
    prev_stage, prev_in_step = res.stage, res.in_step
    res.stage, res.in_step = stage, True
    res.reset_stage(stage)
    collect = t._adapted.collect_eval_outputs[stage]  # 1.x *_epoch_end(outputs)
    device, convert = t.strategy.root_device, (prec.convert_input if prec._true_dtype is not None else None)
    many = len(loaders) > 1
    write_steps = not sanity and stage != "predict"  # on_step values, after every batch (Lightning)
    for fn in hooks[f"on_{name}_start"]:
        fn()
    for fn in hooks[f"on_{name}_epoch_start"]:
        fn()
    all_outputs: list[list[Any]] = []
    ctx = torch.inference_mode() if t.inference_mode else contextlib.nullcontext()
    with t.strategy.evaluation_context(module), ctx:  # gathered outside inference mode: reused in training
        for dl_idx, loader in enumerate(loaders):
            res.dataloader_suffix = f"/dataloader_idx_{dl_idx}" if many else ""
            outputs: list[Any] = []
            extra = (dl_idx,) if many else ()
            # range first: zip stops at the limit without fetching one more batch from the loader
            n = limit[dl_idx]  # inf: a loader without a length, read until it is exhausted
            for batch_idx, batch in enumerate(loader) if math.isinf(n) else zip(range(n), loader):
                batch = move_to_device(batch, device)
                if convert is not None:
                    batch = convert(batch)
                res.set_batch(batch)
                for fn in hooks[f"on_{name}_batch_start"]:
                    fn(batch, batch_idx, *extra)
                with prec.autocast():
                    out = step(batch, batch_idx, *extra) if takes_idx else step(batch, *extra)
                for fn in hooks[f"on_{name}_batch_end"]:
                    fn(out, batch, batch_idx, *extra)
                if write_steps:
                    metric_writer.write_eval_step(t, stage, dl_idx)
                if collect:
                    outputs.append(_detach(out) if stage != "predict" else out)
            all_outputs.append(outputs)
    res.dataloader_suffix = ""
    result: list[Any]
    if stage == "predict":
        result = [_gather_in_order(o) for o in all_outputs]
        for fn in hooks["on_predict_epoch_end"]:
            fn()
    else:
        res.in_step = False
        end_hook = getattr(module, f"{name}_epoch_end", None)
        if collect and end_hook is not None and t._module_overrides(f"{name}_epoch_end"):
            ret = end_hook(all_outputs[0] if not many else all_outputs)
            _log_returned(t, ret, epoch_level=True)
        elif collect and t._module_overrides("validation_end") and stage == "validate":
            _log_returned(t, module.validation_end(all_outputs[0]), epoch_level=True)
        for fn in t._module_hooks[f"on_{name}_epoch_end"]:
            fn()
        log, values = res.collect_epoch(stage)
        if log and not sanity:
            t._log_to_loggers(log)
        for fn in t._callback_hooks[f"on_{name}_epoch_end"]:
            fn()
        result = _split_by_loader(values, len(loaders))
    for fn in hooks[f"on_{name}_end"]:
        fn()
    res.reset_metric_objects(stage)
    res.stage, res.in_step = prev_stage, prev_in_step
    if was_training:
        module.train()
    return result


def _gather_in_order(outputs: list[Any]) -> list[Any]:
    """Concatenate every rank's predictions in rank order: shards are contiguous, so this is
    dataset order."""
    per_rank = collectives.all_gather_object(outputs)
    return [item for rank_out in per_rank for item in rank_out]


def _split_by_loader(values: dict[str, float], n: int) -> list[dict[str, float]]:
    if n <= 1:
        return [values]
    out: list[dict[str, float]] = [{} for _ in range(n)]
    for k, v in values.items():
        base, sep, idx = k.rpartition("/dataloader_idx_")
        if sep and idx.isdigit() and int(idx) < n:
            out[int(idx)][k] = v
        else:
            for d in out:
                d[k] = v
    return out
