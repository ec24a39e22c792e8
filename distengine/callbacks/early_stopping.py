"""Stop training when a monitored metric stops improving.

The callback only *requests* a stop (``trainer.should_stop = True``) on the rank where its
criterion fires. It runs no collective itself: the Trainer all-reduces ``should_stop`` at a
fixed point (step and epoch boundaries), so every rank stops at the same step even when only
one rank's view of the metric triggered the criterion. ``min_epochs`` / ``min_steps`` on the
Trainer delay the stop.

Example::

    from distengine.callbacks import EarlyStopping

    stopper = EarlyStopping(monitor="val_loss", patience=3, min_delta=1e-3)
    trainer = de.Trainer(max_epochs=100, callbacks=[stopper])
    trainer.fit(model, train_loader, val_loader)
    print(stopper.stopped_epoch, stopper.stopping_reason, stopper.stopping_reason_message)
"""
from __future__ import annotations

import math
import sys
from enum import Enum
from typing import Any

import torch

from distengine.callbacks.base import Callback
from distengine.utilities.exceptions import ConfigError

__all__ = ["EarlyStopping", "EarlyStoppingReason"]


class EarlyStoppingReason(Enum):
    """Why :class:`EarlyStopping` stopped a fit (``early_stopping.stopping_reason``), as in Lightning.

    Example: ``if stopper.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED: ...``
    """

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


#: the short codes checkpoints of earlier distengine versions hold (restored as the enum)
STOP_REASONS = {"not_finite": EarlyStoppingReason.NON_FINITE_METRIC,
                "stopping_threshold": EarlyStoppingReason.STOPPING_THRESHOLD,
                "divergence_threshold": EarlyStoppingReason.DIVERGENCE_THRESHOLD,
                "patience_exhausted": EarlyStoppingReason.PATIENCE_EXHAUSTED}


def _reason(saved: Any) -> EarlyStoppingReason:
    """A saved ``stopping_reason``: Lightning's int, an older distengine's code, or nothing."""
    if saved is None:
        return EarlyStoppingReason.NOT_STOPPED
    if isinstance(saved, EarlyStoppingReason):
        return saved
    return STOP_REASONS[saved] if isinstance(saved, str) else EarlyStoppingReason(int(saved))


class EarlyStopping(Callback):
    """Request a stop when ``monitor`` has not improved for ``patience`` checks.

    Args:
        monitor: key in ``trainer.callback_metrics`` to watch (for example ``"val_loss"``).
        min_delta: the smallest change that counts as an improvement (absolute, >= 0).
        patience: how many checks without improvement are tolerated before stopping. A check
            happens once per validation run (or per training epoch, see below).
        verbose: print a line when the metric improves and when a stop is requested.
        mode: ``"min"`` (lower is better) or ``"max"``.
        strict: raise when ``monitor`` is missing from the metrics; otherwise skip the check
            with a warning printed once.
        check_finite: stop as soon as the metric is NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this value.
        divergence_threshold: stop as soon as the metric is worse than this value.
        check_on_train_epoch_end: ``True`` checks at the end of every training epoch;
            ``False`` at the end of every validation run; ``None`` (default) checks after
            validation, or at training epoch end when the fit has no validation.
        log_rank_zero_only: with ``verbose``, print only on global rank zero (otherwise each
            rank prints its own decision, prefixed with its rank).

    After a stop, :attr:`stopped_epoch` holds the epoch, :attr:`stopping_reason` an
    :class:`EarlyStoppingReason` (``NOT_STOPPED`` until then) and :attr:`stopping_reason_message`
    a readable sentence (None until then).
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"EarlyStopping(monitor={monitor!r}): monitor must be a metric name such "
                              "as 'val_loss'")
        if mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping(mode={mode!r}): mode must be 'min' or 'max'")
        if not isinstance(patience, int) or patience < 0:
            raise ConfigError(f"EarlyStopping(patience={patience!r}): patience must be an integer >= 0")
        if min_delta < 0:
            raise ConfigError(f"EarlyStopping(min_delta={min_delta!r}): min_delta must be >= 0; the "
                              "direction comes from mode")
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.log_rank_zero_only = log_rank_zero_only

        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf, dtype=torch.float64)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        self._fitting = False
        self._validation_ran = False
        self._warned_missing = False

    # ------------------------------------------------------------------ identity / state
    @property
    def state_key(self) -> str:
        # two EarlyStopping callbacks on different metrics must not share a checkpoint slot; a
        # subclass has its own class name in it, as in Lightning
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def _legacy_state_keys(self) -> tuple[str, ...]:  # a subclass's key before 2026-12
        return (f"EarlyStopping{{'monitor': {self.monitor!r}, 'mode': {self.mode!r}}}",)

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score.clone(),
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,  # Lightning's form: the enum's int
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        self.best_score = torch.as_tensor(state_dict["best_score"], dtype=torch.float64).clone()
        self.patience = int(state_dict.get("patience", self.patience))
        self.stopping_reason = _reason(state_dict.get("stopping_reason"))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self._fitting = True
        self._validation_ran = False

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        self._fitting = False

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        # a stand-alone trainer.validate() and the sanity check must not count as a check
        if not self._fitting or getattr(trainer, "sanity_checking", False):
            return
        self._validation_ran = True
        if self.check_on_train_epoch_end:
            return
        self._run_early_stopping_check(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if not self._fitting or getattr(trainer, "sanity_checking", False):
            return
        if self.check_on_train_epoch_end is False:
            return
        if self.check_on_train_epoch_end is None and _has_validation(trainer, module, self._validation_ran):
            return
        self._run_early_stopping_check(trainer)

    # ------------------------------------------------------------------ the decision
    def _run_early_stopping_check(self, trainer: Any) -> None:  # Lightning's name: subclasses override it
        if getattr(trainer, "fast_dev_run", 0):  # Lightning: no early stopping in a fast_dev_run
            return
        metrics = getattr(trainer, "callback_metrics", {}) or {}
        if self.monitor not in metrics:
            available = ", ".join(sorted(metrics)) or "none"
            msg = (f"EarlyStopping could not find the monitored metric {self.monitor!r} in "
                   f"trainer.callback_metrics (available: {available}). Log it with "
                   f"self.log({self.monitor!r}, ...) or pass strict=False to skip the check.")
            if self.strict:
                raise RuntimeError(msg)
            if not self._warned_missing and getattr(trainer, "is_global_zero", True):
                print(f"[distengine] warning: {msg}", file=sys.stderr, flush=True)
            self._warned_missing = True
            return
        value = torch.as_tensor(metrics[self.monitor]).detach()
        if value.numel() != 1:
            raise ValueError(f"EarlyStopping: metric {self.monitor!r} has shape {tuple(value.shape)}; "
                             "it must be a single number")
        current = value.reshape(()).to(device="cpu", dtype=torch.float64)
        should_stop, reason, message = self.evaluate(current)
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = int(getattr(trainer, "current_epoch", 0))
            self.stopping_reason = reason
            self.stopping_reason_message = message
        if message and self.verbose:
            self._say(trainer, message)

    def evaluate(self, current: torch.Tensor | float) -> tuple[bool, EarlyStoppingReason | None, str | None]:
        """Update the counters with one new value; return ``(stop, reason, message)``.

        Pure bookkeeping, no trainer involved, so it is easy to test and to reuse.
        """
        current = torch.as_tensor(current, dtype=torch.float64).reshape(())
        cur = float(current)
        best = float(self.best_score)
        better = (lambda a, b: a < b) if self.mode == "min" else (lambda a, b: a > b)
        if self.check_finite and not math.isfinite(cur):
            return True, EarlyStoppingReason.NON_FINITE_METRIC, (
                f"Monitored metric {self.monitor} = {cur} is not finite; the best value was "
                f"{best:.6g}. Requesting a stop.")
        if self.stopping_threshold is not None and better(cur, self.stopping_threshold):
            return True, EarlyStoppingReason.STOPPING_THRESHOLD, (
                f"Stopping threshold reached: {self.monitor} = {cur:.6g} is "
                f"{'below' if self.mode == 'min' else 'above'} {self.stopping_threshold}. "
                "Requesting a stop.")
        if self.divergence_threshold is not None and better(self.divergence_threshold, cur):
            return True, EarlyStoppingReason.DIVERGENCE_THRESHOLD, (
                f"Divergence threshold reached: {self.monitor} = {cur:.6g} is "
                f"{'above' if self.mode == 'min' else 'below'} {self.divergence_threshold}. "
                "Requesting a stop.")
        # an improvement must beat the best by more than min_delta in the mode's direction
        shifted = cur + self.min_delta if self.mode == "min" else cur - self.min_delta
        if math.isfinite(cur) and better(shifted, best):
            if math.isfinite(best):
                msg = (f"Metric {self.monitor} improved by {abs(best - cur):.6g} to {cur:.6g}.")
            else:
                msg = f"Metric {self.monitor} improved to {cur:.6g}."
            self.best_score = current.clone()
            self.wait_count = 0
            return False, None, msg
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, EarlyStoppingReason.PATIENCE_EXHAUSTED, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} "
                f"checks; the best value was {best:.6g}. Requesting a stop.")
        return False, None, None

    def _say(self, trainer: Any, message: str) -> None:
        world = int(getattr(trainer, "world_size", 1) or 1)
        if self.log_rank_zero_only:
            if getattr(trainer, "is_global_zero", True):
                print(message, file=sys.stderr, flush=True)
            return
        prefix = f"[rank: {getattr(trainer, 'global_rank', 0)}] " if world > 1 else ""
        print(prefix + message, file=sys.stderr, flush=True)


def _has_validation(trainer: Any, module: Any, validation_ran: bool) -> bool:
    """Whether this fit validates, so the default check belongs after validation."""
    if validation_ran:
        return True
    step = getattr(type(module), "validation_step", None) if module is not None else None
    if step is not None:
        from distengine.module import Module

        if isinstance(module, Module) and step is Module.validation_step:
            return False  # validation data but nothing to run on it
    n = getattr(trainer, "num_val_batches", None)
    if isinstance(n, (list, tuple)):
        n = sum(int(x) for x in n if x is not None and math.isfinite(x))
    try:
        return bool(n) and float(n) > 0
    except (TypeError, ValueError):
        return False
