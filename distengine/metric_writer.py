"""Where logged values are written to the loggers, and at which step index.

The step indices are Lightning 2.x's (measured against pytorch-lightning 2.6.6), so curves from
both line up in TensorBoard:

* inside ``fit`` every write goes to ``batches_stepped - 1`` (Lightning's ``_batches_that_stepped``
  before it is counted up; the number of batches that closed a step window, which is
  ``global_step`` with one optimizer in automatic optimization, but counts one per batch with
  several optimizers or in manual optimization): with ``log_every_n_steps=5`` the step values
  of steps 5, 10, 15 land at 4, 9, 14; the epoch-end values (train, and the validation run at the epoch end or
  mid-epoch) at the index of the last step before them. Each such write adds an ``epoch``
  scalar.
* ``validate``/``test`` outside ``fit`` write their epoch values at ``batches_stepped``.
* values logged with ``on_step=True`` in ``validation_step``/``test_step`` are written after
  every batch as ``<name>_step`` at a per-dataloader batch counter that starts at 0 at each
  ``fit``/``validate``/``test`` call and runs on across the validation runs of one fit; no
  ``epoch`` scalar goes with them (as in Lightning). The sanity check writes nothing.

One difference, on purpose: while a fit has written no step values yet (its epochs, or its
``max_steps``, are shorter than ``log_every_n_steps``), the values of the last step of each
training epoch, and of the last step of the fit, are written at that step's index, so a short
run still shows its training curve (Lightning writes nothing there and only warns). Once
anything was written, the writes fall exactly where Lightning's do.
"""
from __future__ import annotations

from typing import Any


def logger_step(t: Any) -> int:
    """The step index Lightning gives a write made now."""
    if t._status.stage == "fit":
        return max(t.progress.batches_stepped - 1, 0)
    return t.progress.batches_stepped


def log_to_loggers(t: Any, metrics: dict[str, float], step: int | None = None) -> None:
    """Write ``metrics`` on global rank zero; with no ``step``, at :func:`logger_step` and with
    the ``epoch`` scalar added (Lightning adds it only to writes without an explicit step)."""
    t.logged_metrics.update(metrics)
    if step is None:
        metrics = dict(metrics)
        metrics["epoch"] = float(t.current_epoch)
        step = logger_step(t)
    if t.is_global_zero:
        for lg in t._loggers:
            lg.log_metrics(metrics, step=step)


def write_train_step(t: Any) -> None:
    """Write the fresh training step values (every ``log_every_n_steps`` optimizer steps)."""
    with t.profiler.profile("log_step_metrics"):  # not per batch: a shared no-op without a profiler
        t._raise_if_nonfinite()
        log, _ = t._results.collect_step()
        t._last_step_written = t.progress.batches_stepped
        t._step_writes += 1
        if t._precision.scaler is not None or t.on_nonfinite_loss == "skip":
            log["skipped_steps"] = float(t._precision.skipped_steps + t._skipped_nonfinite)
        if log:
            log_to_loggers(t, log)


def flush_train_step(t: Any) -> None:
    """At a training epoch end (or the end of a fit): write the last step's values if this fit
    has written none yet. Decided from step counts alone, so every rank takes the same branch
    (the write may hold a collective)."""
    every, step = t.log_every_n_steps, t.progress.batches_stepped
    if every and step % every and step > t._last_step_written and t._step_writes == 0:
        write_train_step(t)


def write_eval_step(t: Any, stage: str, dataloader_idx: int) -> None:
    """Write the ``on_step`` values one evaluation batch logged (no collective: local values)."""
    log = t._results.collect_eval_step(stage)
    counters = t._eval_log_steps
    key = (stage, dataloader_idx)
    step = counters.get(key, 0)
    counters[key] = step + 1
    if log:
        log_to_loggers(t, log, step=step)


def forked_name(name: str, suffix: str) -> str:
    """``val_loss/dataloader_idx_0`` + ``_epoch`` -> ``val_loss_epoch/dataloader_idx_0``, as
    Lightning names the forked metrics of several dataloaders."""
    base, sep, idx = name.rpartition("/dataloader_idx_")
    if sep and idx.isdigit():
        return f"{base}{suffix}{sep}{idx}"
    return name + suffix
