"""When the fit loop stops: every stop reason (``trainer.should_stop``, a signal) goes through
the stop vote (stop_vote.py), so all ranks stop after the same step; ``min_epochs``/``min_steps``
delay a requested stop; ``max_steps``/``max_epochs`` end the fit."""
from __future__ import annotations

import logging

from distengine.distributed.rank_zero import rank_zero_only
from distengine.loop_context import LoopContext


def vote_step(ctx: LoopContext) -> bool:
    """Called after each training batch. Returns True when all ranks agreed to stop now."""
    state, status = ctx.state, ctx.status
    local = state.should_stop or status.stop_signal is not None
    stop, signum = ctx.stop_vote.step(local, status.stop_signal or 0)
    return _apply_vote(ctx, stop, signum, epochs_done=ctx.progress.epoch)


def vote_epoch(ctx: LoopContext) -> bool:
    state, status = ctx.state, ctx.status
    local = state.should_stop or status.stop_signal is not None
    stop, signum = ctx.stop_vote.sync(local, status.stop_signal or 0)
    return _apply_vote(ctx, stop, signum, epochs_done=ctx.progress.epoch + 1)


def _apply_vote(ctx: LoopContext, stop: bool, signum: int, epochs_done: int) -> bool:
    if not stop:
        return False
    if signum:
        ctx.status.stop_signal = signum
    elif epochs_done < ctx.flags.min_epochs or ctx.progress.global_step < ctx.flags.min_steps:
        _tell_min_delay(ctx)
        return False  # min_epochs / min_steps delay a requested stop
    ctx.state.should_stop = True
    ctx.state.stop_now = True
    return True


def _tell_min_delay(ctx: LoopContext) -> None:
    """Log (INFO on the ``distengine`` logger, rank zero, once per fit) that a requested stop
    waits for min_epochs/min_steps."""
    if ctx.state.min_delay_told:
        return
    ctx.state.min_delay_told = True
    if rank_zero_only.rank != 0:
        return
    logging.getLogger("distengine").info("A stop was requested, but training goes on until min_epochs=%d and "
                                         "min_steps=%d are both reached", ctx.flags.min_epochs, ctx.flags.min_steps)


def fit_done(ctx: LoopContext) -> bool:
    p, flags = ctx.progress, ctx.flags
    if ctx.state.stop_now:
        return True
    if 0 <= flags.max_steps <= p.global_step:
        return True
    return 0 <= flags.max_epochs <= p.epoch
