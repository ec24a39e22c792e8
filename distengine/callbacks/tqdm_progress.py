"""The tqdm progress bar; when to draw and the plain lines come from ``progress_bar._BarCore``."""
from __future__ import annotations

import sys
from typing import Any, TextIO

from distengine.callbacks.progress_bar import _BarCore, _fmt, _is_terminal


class TQDMProgressBar(_BarCore):
    """A tqdm progress bar on rank zero, or plain lines when the output is not a terminal.

    Args:
        refresh_rate: look at the clock every this many batches (0 disables the bar).
        leave: keep each finished epoch's bar on screen (otherwise one bar is reused).
        refresh_interval: in a terminal, redraw at most once per this many seconds.
        plain: ``True`` forces plain lines, ``False`` forces the tqdm bar, ``None`` (the
            default) decides from ``file.isatty()``.
        plain_interval: in plain mode, at most one progress line per this many seconds
            during an epoch (epoch-end lines are always printed).
        file: where to write; default ``sys.stdout`` at the time the run starts.

    Example::

        trainer = de.Trainer(callbacks=[TQDMProgressBar(refresh_rate=10)])
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, *,
                 refresh_interval: float = 0.25, plain: bool | None = None,
                 plain_interval: float = 30.0, file: TextIO | None = None) -> None:
        self._file_arg = file
        super().__init__(refresh_rate, leave, refresh_interval=refresh_interval, plain=plain,
                         plain_interval=plain_interval)

    def _reset_state(self) -> None:
        super()._reset_state()
        self.train_progress_bar: Any = None
        self.eval_progress_bar: Any = None

    def _open_output(self) -> tuple[TextIO, bool]:
        file = self._file_arg if self._file_arg is not None else sys.stdout
        return file, _is_terminal(file)

    def _new_bar(self, desc: str, total: int | None, leave: bool, position: int) -> Any:
        from tqdm.auto import tqdm  # here: tqdm is needed only by a drawing rank

        # mininterval=0: this class decides when to draw; tqdm must not second-guess it.
        # smoothing=0: the rate shown is the average since the bar (re)started.
        return tqdm(desc=desc, total=total, leave=leave, position=position, file=self._file,
                    dynamic_ncols=True, mininterval=0, smoothing=0)

    def _term_train_epoch(self, desc: str, total: int | None) -> None:
        bar = self.train_progress_bar
        if bar is not None and not self.leave:
            bar.set_description(desc, refresh=False)
            bar.initial = 0
            bar.reset(total=total)
            bar.total = total  # reset() keeps the old total when given None
        else:
            if bar is not None:
                bar.close()
            self.train_progress_bar = self._new_bar(desc, total, True, 0)

    def _term_train_resume(self, batch_idx: int) -> None:
        if self.train_progress_bar is not None:
            self.train_progress_bar.initial = batch_idx  # tqdm's rate is (n - initial) / elapsed

    def _term_train_draw(self, n: int, metrics: dict[str, Any]) -> None:
        bar = self.train_progress_bar
        if bar is not None:
            bar.n = n
            bar.set_postfix({k: _fmt(v) for k, v in metrics.items()}, refresh=False)
            bar.refresh()

    def _term_eval_start(self, desc: str, total: int | None) -> None:
        if self.eval_progress_bar is not None:
            self.eval_progress_bar.close()
        self.eval_progress_bar = self._new_bar(
            desc, total, False, 1 if self.train_progress_bar is not None else 0)

    def _term_eval_total(self, total: int | None) -> None:
        if self.eval_progress_bar is not None:
            self.eval_progress_bar.reset(total=total)
            self.eval_progress_bar.total = total

    def _term_eval_draw(self, n: int) -> None:
        bar = self.eval_progress_bar
        if bar is not None:
            bar.n = n
            bar.refresh()

    def _term_eval_end(self, train_n: int | None, metrics: dict[str, Any]) -> None:
        if self.eval_progress_bar is not None:
            self.eval_progress_bar.close()
            self.eval_progress_bar = None
        bar = self.train_progress_bar
        if bar is not None:  # show the new validation metrics at once
            if train_n is not None:
                bar.n = train_n
            bar.set_postfix({k: _fmt(v) for k, v in metrics.items()})

    def _close_bars(self) -> None:
        for attr in ("eval_progress_bar", "train_progress_bar"):
            bar = getattr(self, attr)
            if bar is not None:
                bar.close()
                setattr(self, attr, None)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(train_progress_bar=None, eval_progress_bar=None,
                     _file_arg=None if self._file_arg in (sys.stdout, sys.stderr) else self._file_arg)
        return state
