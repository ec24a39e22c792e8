"""Progress bars: a tqdm (or rich) bar in a terminal, plain lines in log files.

``_BarCore`` here holds everything the bars share: when to draw, the rank-zero and terminal
checks, and the plain lines; ``TQDMProgressBar`` (``tqdm_progress.py``) and
``RichProgressBar`` (``rich_progress.py``) only draw in a terminal.

Only global rank zero draws. The per-batch hooks are built to cost about a microsecond
when nothing is due: one integer comparison per batch, and a ``monotonic()`` call
every ``refresh_rate`` batches; metrics are read (and a loss tensor turned into a float)
only when something is actually drawn, at most a few times per second.

When the output is not a terminal (a log file, SLURM's ``slurm-<id>.out``, a pipe), a
carriage-return bar would fill the file with partial lines, so the bar prints plain lines
instead: one at every epoch end, one at the end of validation/test/predict, and during a
long epoch at most one every ``plain_interval`` seconds::

    Epoch 0: 120/500 (24%) [3.0s, 40.1 it/s] loss=0.4321, val_acc=0.8
    Epoch 0 done: 500/500 [12.4s, 40.3 it/s] loss=0.1234, val_acc=0.9
"""
from __future__ import annotations

import inspect
import math
import os
import sys
from time import monotonic
from typing import Any, TextIO

from distengine.callbacks.base import Callback

_NEVER = sys.maxsize  # a batch index no run reaches: the hooks of an inactive bar return at once


def _count(value: Any) -> int | None:
    """A batch count as an int, ``None`` when unknown or infinite (iterable datasets)."""
    if isinstance(value, (list, tuple)):
        parts = [_count(v) for v in value]
        return None if not parts or any(p is None for p in parts) else sum(parts)  # type: ignore[misc]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    return int(value)


def _is_terminal(file: Any) -> bool:
    """A terminal tqdm can draw in: a tty with a width (a pty of size 0x0, as some container
    runtimes give, would make tqdm print nothing at all)."""
    try:
        if not file.isatty():
            return False
        return os.get_terminal_size(file.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


def _loss_of(outputs: Any) -> float | None:
    """The loss in what ``training_step`` returned (a tensor or ``{"loss": tensor}``)."""
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    if isinstance(outputs, (int, float)) and not isinstance(outputs, bool):
        return float(outputs)
    if hasattr(outputs, "numel") and outputs.numel() == 1:
        return float(outputs.detach().item())  # one device sync, only when drawing
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())


class ProgressBar(Callback):
    """Base class for progress bars. The Trainer adds a :class:`TQDMProgressBar` when
    ``enable_progress_bar=True`` and no instance of this class is among the callbacks.

    Override :meth:`get_metrics` to change what is shown.
    """

    _trainer: Any = None

    def __init__(self) -> None:
        self._enabled = True

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer

    @property
    def trainer(self) -> Any:
        """The Trainer running this bar (set in ``setup``)."""
        if self._trainer is None:
            raise TypeError(f"{type(self).__name__}.trainer: the bar is not attached to a Trainer yet (set in setup)")
        return self._trainer

    @property
    def total_train_batches(self) -> int | float:
        """Training batches of this epoch (``inf`` for a loader without a length); with
        ``max_epochs=-1`` and ``max_steps``, no more than the steps left."""
        t = self.trainer
        batches = t.num_training_batches
        if t.max_epochs == -1 and t.max_steps is not None and t.max_steps > 0:
            return min(batches, t.max_steps - t.global_step)
        return batches

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches of this epoch over all val loaders: 0 in an epoch that
        ``check_val_every_n_epoch`` skips, or when the fit does not validate."""
        t = self.trainer
        every = t.check_val_every_n_epoch
        if not t.enable_validation or (every is not None and (t.current_epoch + 1) % every):
            return 0
        return sum(t.num_val_batches)

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def get_metrics(self, trainer: Any, module: Any, loss: float | None = None) -> dict[str, Any]:
        """What the bar shows after the counters: ``loss`` then the ``prog_bar`` metrics.

        Called only when the bar is redrawn. ``trainer.progress_bar_metrics`` already
        holds floats, so nothing is converted here; a ``loss`` the Trainer put there
        takes precedence over the one read from the step's output. The step's loss is left
        out when the same step logged it with ``prog_bar=True`` under another name
        (``self.log("train_loss", loss, prog_bar=True)``: a value of
        ``trainer.progress_bar_step_metrics`` equal to it), so one value is not shown twice.
        Lightning 2.x shows no implicit ``loss`` at all, only the ``prog_bar`` metrics and ``v_num``.
        """
        logged = getattr(trainer, "progress_bar_metrics", None) or {}
        steps = getattr(trainer, "progress_bar_step_metrics", None) or {}
        shown: dict[str, Any] = {}
        if loss is not None and not any(v == loss for v in steps.values()):
            shown["loss"] = loss
        shown.update(logged)
        return shown


def user_progress_bar(callbacks: list[Any], enabled: bool) -> bool:
    """Whether the user passed a progress bar; Lightning's errors for two bars, or for one
    with ``enable_progress_bar=False`` (raised when the Trainer is built)."""
    bars = [type(c).__name__ for c in callbacks if isinstance(c, ProgressBar)]
    if len(bars) > 1:
        raise ValueError(f"Trainer(callbacks=...) holds {len(bars)} progress bars ({', '.join(bars)}); "
                         "keep one")
    if bars and not enabled:
        raise ValueError(f"Trainer(enable_progress_bar=False) but callbacks holds a {bars[0]}; remove "
                         "it, or drop enable_progress_bar=False")
    return bool(bars)


class _BarCore(ProgressBar):
    """The logic of a bar that draws in a terminal and prints plain lines elsewhere.

    It decides when to draw (every ``refresh_rate`` batches it reads the clock; at most once
    per ``refresh_interval`` seconds in a terminal, ``plain_interval`` in plain mode), prints
    the plain lines itself, and leaves terminal drawing to the ``_term_*`` methods of a
    subclass, which are called only in terminal mode and only on global rank zero.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, *,
                 refresh_interval: float = 0.25, plain: bool | None = None,
                 plain_interval: float = 30.0) -> None:
        super().__init__()
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"refresh_rate must be an int >= 0 (0 disables the bar), got {refresh_rate!r}")
        if not refresh_interval >= 0:
            raise ValueError(f"refresh_interval must be >= 0 seconds, got {refresh_interval!r}")
        if not plain_interval > 0:
            raise ValueError(f"plain_interval must be > 0 seconds, got {plain_interval!r}")
        self.refresh_rate = refresh_rate
        self.leave = bool(leave)
        self.refresh_interval = float(refresh_interval)
        self.plain_interval = float(plain_interval)
        self._plain_arg = plain
        if refresh_rate == 0:
            self._enabled = False
        self._reset_state()

    def _shown_metrics(self, trainer: Any, module: Any) -> dict[str, Any]:
        """``get_metrics`` with the step's loss, or without it for an override with Lightning's
        ``get_metrics(trainer, pl_module)`` signature."""
        params = inspect.signature(self.get_metrics).parameters.values()
        if sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3 or any(
                p.kind is p.VAR_POSITIONAL for p in params):
            return self.get_metrics(trainer, module, self._loss)
        return self.get_metrics(trainer, module)

    # ----------------------------------------------------------------- terminal drawing
    def _open_output(self) -> tuple[TextIO, bool]:
        """Where plain lines go, and whether it is a terminal the bar can draw in."""
        raise NotImplementedError

    def _term_train_epoch(self, desc: str, total: int | None) -> None:
        """A training epoch starts: show a bar (a new one with ``leave``, else reuse one)."""

    def _term_train_resume(self, batch_idx: int) -> None:
        """The epoch resumes mid-way at ``batch_idx``: rates count from there."""

    def _term_train_draw(self, n: int, metrics: dict[str, Any]) -> None:
        """Show ``n`` batches done and ``metrics``."""

    def _term_eval_start(self, desc: str, total: int | None) -> None:
        """A validation/test/predict loop starts."""

    def _term_eval_total(self, total: int | None) -> None:
        """The loop moved on to the next dataloader, of ``total`` batches."""

    def _term_eval_draw(self, n: int) -> None:
        """Show ``n`` evaluation batches done."""

    def _term_eval_end(self, train_n: int | None, metrics: dict[str, Any]) -> None:
        """The loop ended: drop its bar; show ``metrics`` on the training bar (and ``train_n``
        batches done when the loop ran inside an epoch)."""

    def _close_bars(self) -> None:
        """Close whatever is on screen (end of the run, or an error)."""

    def _reset_state(self) -> None:
        self._file: TextIO | None = None
        self._plain = False
        self._interval = 0.0
        # training epoch
        self._next_idx = _NEVER
        self._deadline = 0.0
        self._last_idx = self._first_idx = -1
        self._total: int | None = None
        self._final_idx = _NEVER  # index of the epoch's last batch, when known
        self._t0 = 0.0
        self._loss: float | None = None
        self._last_outputs: Any = None
        # validation / test / predict
        self._eval_next_idx = _NEVER
        self._eval_deadline = 0.0
        self._eval_last_idx = -1
        self._eval_dl = 0
        self._eval_total: int | None = None
        self._eval_t0 = 0.0
        self._eval_desc = ""

    # ----------------------------------------------------------------- activation
    def _active(self, trainer: Any) -> bool:
        """Resolve the output once per run; true on global rank zero when enabled."""
        if not self._enabled or not getattr(trainer, "is_global_zero", True):
            return False
        if self._file is None:
            self._file, terminal = self._open_output()
            self._plain = not terminal if self._plain_arg is None else bool(self._plain_arg)
            self._interval = self.plain_interval if self._plain else self.refresh_interval
        return True

    def _line(self, text: str) -> None:
        print(text, file=self._file, flush=True)

    @staticmethod
    def _rate(n: int, t0: float) -> str:
        elapsed = max(monotonic() - t0, 1e-9)
        return f"{elapsed:.1f}s, {n / elapsed:.2f} it/s"

    @staticmethod
    def _done_counts(n: int, total: int | None) -> str:
        return f"{n}/{total}" if total else f"{n} batches"

    @staticmethod
    def _progress(n: int, total: int | None) -> str:
        if total:
            return f"{n}/{total} ({100 * n // total}%)"
        return f"{n}/?"

    # ----------------------------------------------------------------- training
    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._active(trainer)

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if not self._active(trainer):
            self._next_idx = _NEVER
            return
        self._total = _count(getattr(trainer, "num_training_batches", None))
        if self._total and getattr(getattr(trainer, "progress", None), "batches_done", 0) >= self._total:
            # resumed from a checkpoint written at this epoch's last step: no batch runs, only the
            # epoch end; no line ("Epoch 0 stopped: 0/8"), the next epoch's bar follows
            self._next_idx = _NEVER
            return
        self._final_idx = self._total - 1 if self._total else _NEVER
        self._last_idx = self._first_idx = -1
        self._loss = None
        self._t0 = monotonic()
        self._next_idx = 0
        # a terminal bar appears at once; a plain line only after plain_interval
        self._deadline = self._t0 + self._interval if self._plain else 0.0
        if not self._plain:
            self._term_train_epoch(f"Epoch {trainer.current_epoch}", self._total)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # The hot path: two stores and a comparison unless a check is due; then one clock read.
        self._last_idx = batch_idx
        self._last_outputs = outputs  # read (one sync) only if the epoch-end line needs it
        if batch_idx < self._next_idx:
            return
        if self._first_idx < 0:  # a resumed epoch starts mid-way: rates count from here
            self._start_at(batch_idx)
        nxt = batch_idx + self.refresh_rate
        final = self._final_idx
        # Always look at the epoch's last batch: the epoch-end line needs its loss.
        self._next_idx = final if batch_idx < final < nxt else nxt
        if monotonic() < self._deadline and batch_idx != final:
            return
        self._train_due(trainer, module, outputs, batch_idx)

    def _start_at(self, batch_idx: int) -> None:
        self._first_idx = batch_idx
        if not self._plain:
            self._term_train_resume(batch_idx)

    def _train_due(self, trainer: Any, module: Any, outputs: Any, batch_idx: int) -> None:
        self._deadline = monotonic() + self._interval
        self._loss = _loss_of(outputs)
        if self._plain and batch_idx == self._final_idx:
            return  # on_train_epoch_end prints this epoch's line
        self._draw_train(trainer, module, batch_idx + 1, done=False)

    def _draw_train(self, trainer: Any, module: Any, n: int, done: bool) -> None:
        metrics = self._shown_metrics(trainer, module)
        if self._plain:
            finished = done and (self._total is None or n >= self._total)
            word = (" done" if finished else " stopped") if done else ""
            head = f"Epoch {trainer.current_epoch}{word}: "
            counts = self._done_counts(n, self._total) if finished else self._progress(n, self._total)
            tail = f" {_fmt_metrics(metrics)}" if metrics else ""
            self._line(f"{head}{counts} [{self._rate(n - max(self._first_idx, 0), self._t0)}]{tail}")
            return
        self._term_train_draw(n, metrics)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._next_idx == _NEVER or not self._active(trainer):
            return
        self._next_idx = _NEVER
        if self._total is None:  # no length: the last batch was not known in advance
            self._loss = _loss_of(self._last_outputs)
        self._draw_train(trainer, module, self._last_idx + 1, done=True)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        if self._next_idx != _NEVER and self._last_idx >= 0:
            # the run stopped inside an epoch (max_steps, a stop request): no epoch-end hook
            # came, so this is the last chance to show where it stopped
            self.on_train_epoch_end(trainer, module)
        self._next_idx = _NEVER
        self._close_bars()

    # ----------------------------------------------------------------- evaluation
    def _eval_start(self, trainer: Any, desc: str, total_attr: str) -> None:
        if not self._active(trainer):
            self._eval_next_idx = _NEVER
            return
        self._eval_desc = desc
        self._eval_total = _count(getattr(trainer, total_attr, None))
        totals = getattr(trainer, total_attr, None)
        if isinstance(totals, (list, tuple)) and totals:  # one bar per dataloader, in turn
            self._eval_total = _count(totals[0])
        self._eval_dl = 0
        self._eval_last_idx = -1
        self._eval_t0 = monotonic()
        self._eval_next_idx = 0
        self._eval_deadline = self._eval_t0 + self._interval if self._plain else 0.0
        if not self._plain:
            self._term_eval_start(desc, self._eval_total)

    def _eval_batch_end(self, trainer: Any, module: Any, batch_idx: int, dataloader_idx: int,
                        total_attr: str) -> None:
        self._eval_last_idx = batch_idx
        if batch_idx < self._eval_next_idx and dataloader_idx == self._eval_dl:
            return
        if dataloader_idx != self._eval_dl:
            if self._eval_next_idx == _NEVER:
                return
            self._eval_dl = dataloader_idx
            totals = getattr(trainer, total_attr, None)
            self._eval_total = (_count(totals[dataloader_idx])
                                if isinstance(totals, (list, tuple)) and dataloader_idx < len(totals)
                                else None)
            if not self._plain:
                self._term_eval_total(self._eval_total)
        self._eval_next_idx = batch_idx + self.refresh_rate
        now = monotonic()
        if now < self._eval_deadline:
            return
        self._eval_deadline = now + self._interval
        if self._plain and self._eval_total is not None and batch_idx + 1 >= self._eval_total:
            return  # the end-of-loop line follows at once
        self._draw_eval(trainer, module, batch_idx + 1, done=False)

    def _draw_eval(self, trainer: Any, module: Any, n: int, done: bool) -> None:
        if self._plain:
            counts = self._done_counts(n, self._eval_total) if done else self._progress(n, self._eval_total)
            # predictions have no metrics; what progress_bar_metrics holds is from earlier stages
            metrics = self.get_metrics(trainer, module) if done and self._eval_desc != "Predicting" else {}
            tail = f" {_fmt_metrics(metrics)}" if metrics else ""
            word = " done" if done else ""
            self._line(f"{self._eval_desc}{word}: {counts} [{self._rate(n, self._eval_t0)}]{tail}")
            return
        self._term_eval_draw(n)

    def _eval_end(self, trainer: Any, module: Any, print_line: bool = True) -> None:
        if self._eval_next_idx == _NEVER:
            return
        self._eval_next_idx = _NEVER
        if self._plain:
            if print_line:
                self._draw_eval(trainer, module, self._eval_last_idx + 1, done=True)
            return
        # validation inside an epoch: the training bar also catches up its count
        train_n = self._last_idx + 1 if self._next_idx != _NEVER else None
        self._term_eval_end(train_n, self._shown_metrics(trainer, module))

    def on_sanity_check_start(self, trainer: Any, module: Any) -> None:
        self._eval_start(trainer, "Sanity Checking", "num_sanity_val_batches")

    def on_sanity_check_end(self, trainer: Any, module: Any) -> None:
        self._eval_end(trainer, module, print_line=False)

    def on_validation_start(self, trainer: Any, module: Any) -> None:
        if getattr(trainer, "sanity_checking", False):
            if self._eval_next_idx == _NEVER:  # a Trainer that calls only this hook
                self._eval_start(trainer, "Sanity Checking", "num_sanity_val_batches")
            return
        self._eval_start(trainer, "Validation", "num_val_batches")

    def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, module, batch_idx, dataloader_idx, "num_val_batches")

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        self._eval_end(trainer, module, print_line=not getattr(trainer, "sanity_checking", False))

    def on_test_start(self, trainer: Any, module: Any) -> None:
        self._eval_start(trainer, "Testing", "num_test_batches")

    def on_test_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, module, batch_idx, dataloader_idx, "num_test_batches")

    def on_test_end(self, trainer: Any, module: Any) -> None:
        self._eval_end(trainer, module)

    def on_predict_start(self, trainer: Any, module: Any) -> None:
        self._eval_start(trainer, "Predicting", "num_predict_batches")

    def on_predict_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end(trainer, module, batch_idx, dataloader_idx, "num_predict_batches")

    def on_predict_end(self, trainer: Any, module: Any) -> None:
        self._eval_end(trainer, module)

    # ----------------------------------------------------------------- cleanup
    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        self._next_idx = self._eval_next_idx = _NEVER
        self._close_bars()

    def teardown(self, trainer: Any, module: Any, stage: str) -> None:
        self._close_bars()
        self._reset_state()  # the next run decides again where and how to print

    def __getstate__(self) -> dict[str, Any]:
        # open streams and bars do not pickle (deepcopy of callbacks, spawn)
        state = self.__dict__.copy()
        state.update(_file=None, _next_idx=_NEVER, _eval_next_idx=_NEVER, _trainer=None)
        return state
