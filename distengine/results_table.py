"""The results table ``Trainer.validate``/``Trainer.test`` print with ``verbose=True`` (global
rank zero only): one row per metric, one column per dataloader, the values the call returns::

    ----------------------------------------------------
      Test metric           DataLoader 0
    ----------------------------------------------------
      test_acc              0.5
      test_loss             0.14603343605995178
    ----------------------------------------------------

With several dataloaders a metric's ``/dataloader_idx_N`` suffix is dropped from its row name
and the value goes to column N; a metric one dataloader did not log leaves its cell empty.
Drawn with ``rich`` when it is installed, else as the plain ASCII text above (safe in a log file
whatever its encoding). Nothing is printed when no metric was logged.
"""
from __future__ import annotations

import sys
from typing import Any

_SUFFIX = "/dataloader_idx_"


def _rows(results: list[dict[str, float]]) -> dict[str, list[str]]:
    """metric name -> one cell per dataloader ("" where that dataloader has no such metric)."""
    rows: dict[str, list[str]] = {}
    for idx, metrics in enumerate(results):
        for name, value in metrics.items():
            base, sep, tail = name.rpartition(_SUFFIX)
            if not (sep and tail.isdigit() and int(tail) == idx):
                base = name  # a value shared by every dataloader, or one dataloader's run
            rows.setdefault(base, [""] * len(results))[idx] = str(value)
    return dict(sorted(rows.items()))


def _plain(header: list[str], rows: dict[str, list[str]], out: Any) -> None:
    table = [header] + [[name, *cells] for name, cells in rows.items()]
    widths = [max(len(r[c]) for r in table) + 4 for c in range(len(header))]
    rule = "-" * sum(widths)

    def line(cells: list[str]) -> str:
        return "  " + "".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()

    text = [rule, line(header), rule, *(line(r) for r in table[1:]), rule]
    print("\n".join(text), file=out, flush=True)


def _rich(header: list[str], rows: dict[str, list[str]], out: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column(header[0], justify="center", style="cyan")
    for col in header[1:]:
        table.add_column(col, justify="center", style="magenta")
    for name, cells in rows.items():
        table.add_row(name, *cells)
    Console(file=out).print(table)


def print_results(results: list[dict[str, float]], stage: str, out: Any = None) -> None:
    """Print ``results`` (what ``validate``/``test`` return) as one table; ``stage`` is
    ``"validate"`` or ``"test"``."""
    rows = _rows(results)
    if not rows:
        return
    header = [f"{stage.capitalize()} metric", *(f"DataLoader {i}" for i in range(len(results)))]
    out = sys.stdout if out is None else out
    try:
        import rich  # noqa: F401 - optional (pip install 'distengine[rich]')
    except ImportError:
        _plain(header, rows, out)
        return
    _rich(header, rows, out)
