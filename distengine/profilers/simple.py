"""``SimpleProfiler``: wall time per action, as a table (``Trainer(profiler="simple")``)."""
from __future__ import annotations

import os
import time
from typing import Any

from distengine.profilers.base import Profiler


class SimpleProfiler(Profiler):
    """Records the wall time of every action and reports, per action, the mean duration,
    the number of calls, the total time and its share of the run.

    The run's actions: the loop phases (``train_dataloader_next``, ``training_step``,
    ``backward``, ``optimizer_step``, ``log_step_metrics``, ``run_validation``,
    ``save_checkpoint``, ...), each overridden hook (``[Callback]Name.hook``,
    ``[LightningModule]Name.hook``) and the user's own ``profiler.profile(name)`` blocks.
    Only a count and a sum are kept per action, so memory does not grow with the run.

    Args:
        dirpath, filename: where the report goes (see :class:`Profiler`).
        extended: also show the number of calls and the percentage of the run (default True).

    Example::

        trainer = de.Trainer(profiler=SimpleProfiler(filename="perf"))  # log_dir/fit-perf.txt
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = bool(extended)
        self._reset()

    def _reset(self) -> None:
        self.current_actions: dict[str, list[float]] = {}
        self._stats: dict[str, list[float]] = {}  # name -> [calls, total seconds]
        self.start_time = time.perf_counter()

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        self._reset()  # each run reports its own numbers

    def start(self, action_name: str) -> None:
        self.current_actions.setdefault(action_name, []).append(time.perf_counter())

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        started = self.current_actions.get(action_name)
        if not started:
            raise ValueError(f"profiler: stop({action_name!r}) without a matching start({action_name!r})")
        elapsed = end - started.pop()
        if not started:
            del self.current_actions[action_name]
        stat = self._stats.get(action_name)
        if stat is None:
            self._stats[action_name] = [1, elapsed]
        else:
            stat[0] += 1
            stat[1] += elapsed

    @property
    def stats(self) -> dict[str, tuple[int, float]]:
        """``{action: (calls, total seconds)}`` recorded so far in this run."""
        return {k: (int(v[0]), v[1]) for k, v in self._stats.items()}

    def summary(self) -> str:
        if not self._stats:
            return ""
        total = time.perf_counter() - self.start_time
        rows: list[tuple[Any, ...]] = []
        for name, (calls, spent) in self._stats.items():
            rows.append((name, spent / calls, int(calls), spent, 100.0 * spent / total if total > 0 else 0.0))
        if self.extended:
            rows.sort(key=lambda r: r[3], reverse=True)
            header = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            body = [("Total", "-", str(sum(r[2] for r in rows)), f"{total:.5g}", "100 %")]
            body += [(r[0], f"{r[1]:.5g}", str(r[2]), f"{r[3]:.5g}", f"{r[4]:.5g}") for r in rows]
        else:
            rows.sort(key=lambda r: r[1], reverse=True)
            header = ("Action", "Mean duration (s)", "Total time (s)")
            body = [(r[0], f"{r[1]:.5g}", f"{r[3]:.5g}") for r in rows]
        return self._report_header() + "\n" + _table(header, body, total_first=self.extended)


def _table(header: tuple[str, ...], body: list[tuple[str, ...]], total_first: bool) -> str:
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"

    rule = "-" * len(line(header))
    out = [rule, line(header), rule]
    for i, row in enumerate(body):
        out.append(line(row))
        if i == 0 and total_first:
            out.append(rule)
    out.append(rule)
    return "\n".join(out) + "\n"
