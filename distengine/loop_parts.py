"""The fit loop's smaller pieces, over its :class:`~distengine.loop_context.LoopContext`: the
epoch's batch iterator from the resumed position, and the stop vote (every rank stops at the
same step)."""
from __future__ import annotations

import math
from typing import Any

from distengine.data import LookAhead
from distengine.loop_context import LoopContext
from distengine.utilities.combined_loader import CombinedLoader


def _warn_no_step(epoch: int, batches: int) -> None:
    """Lightning lets ``training_step`` return None to skip a batch (the optimizer step is still
    taken and counted, without gradients); an epoch in which every batch was skipped trains
    nothing, which is almost always a forgotten ``return loss``."""
    from distengine.distributed.rank_zero import rank_zero_warn

    rank_zero_warn(f"epoch {epoch} trained nothing (training_step returned None for all {batches} batches); "
                   "return the loss from training_step (None skips a batch, which is meant for a few batches, "
                   "not all)")


# ------------------------------------------------------------------ data
def _epoch_iterator(ctx: LoopContext, batch_idx: int, num_batches: int | float) -> tuple[Any, LookAhead | None]:
    """The epoch's batch iterator from the resumed position (and the look-ahead that tells a
    loader without a length when it reaches its last batch)."""
    p, resume, data = ctx.progress, ctx.resume, ctx.data
    resume.epoch_start_batch = batch_idx
    # Creating the iterator draws worker seeds from the global RNG. A checkpoint taken after
    # that draw (mid-epoch) is restored after iter(); one taken before it (at an epoch end or
    # epoch start) before iter(), so the resumed run draws exactly what the original did.
    if resume.pending_rng is not None and not resume.rng_after_iter:
        _restore_pending_rng(resume)
    loader = data.train_loader
    if isinstance(loader, CombinedLoader):  # yields (batch, batch_idx, dataloader_idx); iter() now
        iterator = (batch for batch, _, _ in iter(loader))
    else:
        iterator = iter(loader)
    p.iter_started = True
    positioned = data.train_sampler is not None and getattr(data.train_sampler, "resumable", True)
    if not positioned and batch_idx:  # not resumable by position: skip what was done
        for _ in range(batch_idx):
            next(iterator)
    ahead = LookAhead(iterator) if math.isinf(num_batches) else None
    if resume.pending_rng is not None:
        _restore_pending_rng(resume)
    return (iterator if ahead is None else ahead), ahead


def _restore_pending_rng(resume) -> None:
    from distengine.checkpoint.rng import restore_rng_state

    restore_rng_state(resume.pending_rng)
    resume.pending_rng = None


# ------------------------------------------------------------------ stopping
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
        return False  # min_epochs / min_steps delay a requested stop
    ctx.state.should_stop = True
    ctx.state.stop_now = True
    return True


def fit_done(ctx: LoopContext) -> bool:
    p, flags = ctx.progress, ctx.flags
    if ctx.state.stop_now:
        return True
    if 0 <= flags.max_steps <= p.global_step:
        return True
    return 0 <= flags.max_epochs <= p.epoch
