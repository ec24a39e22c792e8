"""``RichModelSummary``: the :class:`ModelSummary` table drawn with ``rich`` (needs ``rich``).

Example::

    trainer = de.Trainer(callbacks=[RichModelSummary(max_depth=2)])
"""
from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from distengine.callbacks.model_summary import ModelSummary, _human, _rows, count_parameters

__all__ = ["RichModelSummary"]


class RichModelSummary(ModelSummary):
    """Print the layer table and totals of the module at fit start (global rank zero) as a
    ``rich`` table. ``max_depth`` as for :class:`ModelSummary`; ``header_style`` (a rich
    style, "bold magenta" by default) is the one keyword ``summarize_kwargs`` uses."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if importlib.util.find_spec("rich") is None:
            raise ModuleNotFoundError(
                "`RichModelSummary` requires `rich` to be installed. Install it by running `pip install -U rich`.")
        super().__init__(max_depth)
        self._summarize_kwargs = summarize_kwargs

    def _show(self, module: nn.Module) -> None:
        from rich import get_console
        from rich.table import Table

        console = get_console()
        if self.max_depth != 0:
            table = Table(header_style=self._summarize_kwargs.get("header_style", "bold magenta"))
            table.add_column(" ", style="dim")
            table.add_column("Name", justify="left", no_wrap=True)
            table.add_column("Type")
            table.add_column("Params", justify="right")
            table.add_column("Mode")
            for i, (name, typ, n) in enumerate(_rows(module, self.max_depth)):
                mode = "train" if module.get_submodule(name).training else "eval"
                table.add_row(str(i), name, typ, _human(n), mode)
            console.print(table)
        totals = count_parameters(module)
        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in (("Trainable params", _human(totals.trainable)),
                             ("Non-trainable params", _human(totals.non_trainable)),
                             ("Total params", _human(totals.total)),
                             ("Total estimated model params size (MB)", f"{totals.size_mb:.3f}")):
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)
