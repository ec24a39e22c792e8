"""The fit's batch iterator for one epoch, from the resumed position: created at the point of
the RNG stream the checkpoint was taken at, positioned by the sampler (or by skipping the
batches done), and looking one batch ahead for a loader without a length."""
from __future__ import annotations

import math
from typing import Any

from distengine.data import LookAhead
from distengine.loop_context import LoopContext
from distengine.utilities.combined_loader import CombinedLoader


def epoch_iterator(ctx: LoopContext, batch_idx: int, num_batches: int | float) -> tuple[Any, LookAhead | None]:
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


def _restore_pending_rng(resume: Any) -> None:
    from distengine.checkpoint.rng import restore_rng_state

    restore_rng_state(resume.pending_rng)
    resume.pending_rng = None
