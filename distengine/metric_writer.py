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

import torch


class MetricWriter:
    """Writes logged values to the loggers (on global rank zero) at Lightning's step indices.

    Owned by the Trainer (``trainer.logged_metrics`` is its ``logged_metrics``); the loops
    call it through their context. ``begin_stage`` resets its counters at each ``fit``,
    ``validate``, ``test`` or ``predict`` call; ``precision`` is the stage's Precision.
    """

    def __init__(self, loggers: list[Any], profiler: Any, results: Any, progress: Any, status: Any,
                 state: Any, flags: Any, env: Any) -> None:
        self.loggers, self.profiler, self.results = loggers, profiler, results
        self.progress, self.status, self.state, self.flags, self.env = progress, status, state, flags, env
        self.precision: Any = None
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.eval_log_steps: dict[tuple[str, int], int] = {}
        self.step_writes = 0  # regular writes (every log_every_n_steps); flushes are not counted
        self.last_step_written = 0

    def begin_stage(self) -> None:
        self.logged_metrics, self.eval_log_steps, self.step_writes = {}, {}, 0
        self.last_step_written = self.progress.batches_stepped

    @property
    def global_rank(self) -> int:  # (with ``progress``: what a non-finite error names)
        return self.env.rank

    def raise_if_nonfinite(self) -> None:
        """Read the device-side non-finite watch (see nonfinite.py): one sync, where values are written."""
        watch = self.state.nonfinite_watch
        if watch is not None:
            watch.check(self)

    def logger_step(self) -> int:
        """The step index Lightning gives a write made now."""
        if self.status.stage == "fit":
            return max(self.progress.batches_stepped - 1, 0)
        return self.progress.batches_stepped

    def log_to_loggers(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Write ``metrics`` on global rank zero; with no ``step``, at :meth:`logger_step` and with
        the ``epoch`` scalar added (Lightning adds it only to writes without an explicit step)."""
        # tensors, as Lightning keeps them (the loggers get floats); only as often as values are written
        self.logged_metrics.update({k: torch.tensor(v, dtype=torch.float32) for k, v in metrics.items()})
        if step is None:
            metrics = dict(metrics)
            metrics["epoch"] = float(self.progress.epoch + self.state.stopped_in_epoch)  # current_epoch
            step = self.logger_step()
        if self.env.rank == 0:
            for lg in self.loggers:
                lg.log_metrics(metrics=metrics, step=step)  # by keyword, as Lightning calls it

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """Write the epoch-end values (timed as ``log_epoch_metrics`` when profiling)."""
        with self.profiler.profile("log_epoch_metrics"):
            self.log_to_loggers(metrics)

    def write_train_step(self) -> None:
        """Write the fresh training step values (every ``log_every_n_steps`` optimizer steps)."""
        self.step_writes += 1
        self._write_step()

    def _write_step(self) -> None:
        with self.profiler.profile("log_step_metrics"):  # not per batch: a shared no-op without a profiler
            self.raise_if_nonfinite()
            log, _ = self.results.collect_step()
            self.last_step_written = self.progress.batches_stepped
            prec = self.precision
            if prec.scaler is not None or self.flags.on_nonfinite_loss == "skip":
                log["skipped_steps"] = float(prec.skipped_steps + self.state.skipped_nonfinite)
            if log:
                self.log_to_loggers(log)

    def flush_train_step(self) -> None:
        """At a training epoch end (or the end of a fit): write the last step's values while this
        fit has made no regular write yet (each epoch end of a run shorter than
        ``log_every_n_steps`` gets its point). Not counted as a regular write, so the next epoch
        end flushes again. Decided from step counts alone, so every rank takes the same branch
        (the write may hold a collective)."""
        every, step = self.flags.log_every_n_steps, self.progress.batches_stepped
        if every and step % every and step > self.last_step_written and self.step_writes == 0:
            self._write_step()

    def write_eval_step(self, stage: str, dataloader_idx: int) -> None:
        """Write the ``on_step`` values one evaluation batch logged (no collective: local values)."""
        log = self.results.collect_eval_step(stage)
        counters = self.eval_log_steps
        key = (stage, dataloader_idx)
        step = counters.get(key, 0)
        counters[key] = step + 1
        if log:
            self.log_to_loggers(log, step=step)


def forked_name(name: str, suffix: str) -> str:
    """``val_loss/dataloader_idx_0`` + ``_epoch`` -> ``val_loss_epoch/dataloader_idx_0``, as
    Lightning names the forked metrics of several dataloaders."""
    base, sep, idx = name.rpartition("/dataloader_idx_")
    if sep and idx.isdigit():
        return f"{base}{suffix}{sep}{idx}"
    return name + suffix
