"""A progress bar drawn with ``rich`` (``pip install 'distengine[rich]'``).

When to draw and the plain lines printed where the output is not a terminal are those of
:class:`~distengine.callbacks.TQDMProgressBar` (both come from ``progress_bar._BarCore``): only
the drawing in a terminal differs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TextIO

from distengine.callbacks.progress_bar import _BarCore


@dataclasses.dataclass
class RichProgressBarTheme:
    """Styles of the bar's parts, as Lightning's (any ``rich`` style string: ``"bold red"``,
    ``"#6206E0"``, ``"dim underline"``).

    ``description`` the "Epoch 3"/"Validation" text; ``progress_bar``,
    ``progress_bar_finished`` and ``progress_bar_pulse`` the bar while running, when done, and
    when the total is unknown; ``batch_progress`` the ``12/50`` count; ``time`` elapsed and
    remaining time; ``processing_speed`` the ``it/s`` rate; ``metrics`` the metrics text, whose
    entries are joined by ``metrics_text_delimiter`` and whose numbers are formatted with
    ``metrics_format``.
    """

    description: str = ""
    progress_bar: str = "#6206E0"
    progress_bar_finished: str = "#6206E0"
    progress_bar_pulse: str = "#6206E0"
    batch_progress: str = ""
    time: str = "dim"
    processing_speed: str = "dim underline"
    metrics: str = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


def _columns(theme: RichProgressBarTheme) -> list[Any]:
    import datetime

    from rich.progress import BarColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class _Column(ProgressColumn):
        def __init__(self, render: Any, style: str) -> None:
            super().__init__()
            self._render, self._style = render, style

        def render(self, task: Any) -> Text:
            return Text(self._render(task), style=self._style)

    def counts(task: Any) -> str:
        return f"{int(task.completed)}/{int(task.total) if task.total is not None else '--'}"

    def times(task: Any) -> str:
        def clock(seconds: float | None) -> str:
            return "-:--:--" if seconds is None else str(datetime.timedelta(seconds=int(seconds)))
        elapsed = task.finished_time if task.finished else task.elapsed
        return f"{clock(elapsed)} • {clock(task.time_remaining)}"

    return [
        TextColumn("{task.description}", style=theme.description),
        BarColumn(complete_style=theme.progress_bar, finished_style=theme.progress_bar_finished,
                  pulse_style=theme.progress_bar_pulse),
        _Column(counts, theme.batch_progress),
        _Column(times, theme.time),
        _Column(lambda task: f"{task.speed or 0.0:.2f}it/s", theme.processing_speed),
        _Column(lambda task: task.fields.get("metrics", ""), theme.metrics),
    ]


class RichProgressBar(_BarCore):
    """A ``rich`` progress bar on rank zero, or plain lines when the output is not a terminal.

    Shows the epoch, a bar, ``batch/total``, elapsed and remaining time, the rate and the
    metrics (the loss and everything logged with ``prog_bar=True``) under training, plus a bar
    per validation, test and predict loop, removed when the loop ends.

    Args:
        refresh_rate: look at the clock every this many batches (0 disables the bar).
        leave: keep each finished epoch's bar on screen (otherwise one bar is reused).
        theme: a :class:`RichProgressBarTheme` (styles of the bar's parts).
        console_kwargs: arguments of the ``rich.console.Console`` the bar draws on (for
            example ``{"file": f, "force_terminal": True, "width": 120}``). The bar builds its
            own console; it does not reconfigure rich's global one (Lightning does).
        refresh_interval, plain, plain_interval: as in
            :class:`~distengine.callbacks.TQDMProgressBar`; "a terminal" is
            ``console.is_terminal``.

    Example::

        from distengine.callbacks import RichProgressBar, RichProgressBarTheme
        bar = RichProgressBar(leave=True, theme=RichProgressBarTheme(metrics="bold green"))
        trainer = de.Trainer(callbacks=[bar])
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False,
                 theme: RichProgressBarTheme | None = None,
                 console_kwargs: dict[str, Any] | None = None, *,
                 refresh_interval: float = 0.25, plain: bool | None = None,
                 plain_interval: float = 30.0) -> None:
        from distengine.loggers.artifacts import require

        require("rich", "RichProgressBar", "rich")
        if theme is not None and not isinstance(theme, RichProgressBarTheme):
            raise TypeError(f"RichProgressBar(theme=...) takes a RichProgressBarTheme, got {type(theme).__name__}")
        self.theme = theme or RichProgressBarTheme()
        self._console_kwargs = dict(console_kwargs or {})
        self.console: Any = None  # the rich Console, built at the first run and kept
        super().__init__(refresh_rate, leave, refresh_interval=refresh_interval, plain=plain,
                         plain_interval=plain_interval)

    def _reset_state(self) -> None:
        super()._reset_state()
        self.progress: Any = None  # the rich Progress, while bars are on screen
        self._train_task: Any = None
        self._eval_task: Any = None

    def _open_output(self) -> tuple[TextIO, bool]:
        if self.console is None:
            from rich.console import Console

            self.console = Console(**self._console_kwargs)
        return self.console.file, self.console.is_terminal

    # ------------------------------------------------------------------ drawing
    def _bars(self) -> Any:
        if self.progress is None:
            from rich.progress import Progress

            # auto_refresh=False: no refresh thread; the bar redraws when _BarCore says so
            self.progress = Progress(*_columns(self.theme), console=self.console, auto_refresh=False)
            self.progress.start()
        return self.progress

    def _set_total(self, task_id: Any, total: int | None) -> None:
        for task in self.progress.tasks:  # update()/reset() read total=None as "unchanged"
            if task.id == task_id:
                task.total = total

    def _metrics_text(self, metrics: dict[str, Any]) -> str:
        fmt, parts = self.theme.metrics_format, []
        for name, value in metrics.items():
            try:
                text = value if isinstance(value, str) else f"{value:{fmt}}"
            except (TypeError, ValueError):
                text = str(value)
            parts.append(f"{name}: {text}")
        return self.theme.metrics_text_delimiter.join(parts)

    def _term_train_epoch(self, desc: str, total: int | None) -> None:
        bars = self._bars()
        if self._train_task is not None and not self.leave:
            bars.reset(self._train_task, description=desc, completed=0, metrics="")
            self._set_total(self._train_task, total)
        else:
            self._train_task = bars.add_task(desc, total=total, metrics="")
        bars.refresh()

    def _term_train_resume(self, batch_idx: int) -> None:
        if self._train_task is not None:  # restart the clock: the rate counts from here
            self.progress.reset(self._train_task, completed=batch_idx)

    def _term_train_draw(self, n: int, metrics: dict[str, Any]) -> None:
        if self._train_task is not None:
            self.progress.update(self._train_task, completed=n, metrics=self._metrics_text(metrics))
            self.progress.refresh()

    def _term_eval_start(self, desc: str, total: int | None) -> None:
        bars = self._bars()
        if self._eval_task is not None:
            bars.remove_task(self._eval_task)
        self._eval_task = bars.add_task(desc, total=total)
        bars.refresh()

    def _term_eval_total(self, total: int | None) -> None:
        if self._eval_task is not None:
            self.progress.reset(self._eval_task, completed=0)
            self._set_total(self._eval_task, total)

    def _term_eval_draw(self, n: int) -> None:
        if self._eval_task is not None:
            self.progress.update(self._eval_task, completed=n)
            self.progress.refresh()

    def _term_eval_end(self, train_n: int | None, metrics: dict[str, Any]) -> None:
        if self.progress is None:
            return
        if self._eval_task is not None:
            self.progress.remove_task(self._eval_task)
            self._eval_task = None
        if self._train_task is not None:  # show the new validation metrics at once
            extra = {} if train_n is None else {"completed": train_n}
            self.progress.update(self._train_task, metrics=self._metrics_text(metrics), **extra)
        self.progress.refresh()

    def _close_bars(self) -> None:
        if self.progress is not None:
            self.progress.stop()  # the last frame stays on screen
            self.progress = None
        self._train_task = self._eval_task = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(console=None, progress=None, _train_task=None, _eval_task=None)
        return state
