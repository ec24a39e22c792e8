"""``AdvancedProfiler``: ``cProfile`` per action (``Trainer(profiler="advanced")``)."""
from __future__ import annotations

import cProfile
import io
import os
import pstats

from distengine.profilers.base import Profiler


class AdvancedProfiler(Profiler):
    """Runs Python's ``cProfile`` during each action and reports, per action, the functions
    that took the most cumulative time (``pstats`` text), to ``fit-<filename>[-<rank>].txt``.

    Nested actions: while an inner action runs (a hook inside the training epoch, say), the
    outer action's profile is paused, so each function call is counted in the innermost
    action only. cProfile sees the Python code of the process's main thread; CUDA kernels
    and DataLoader worker processes are outside it (use ``PyTorchProfiler`` for those).

    Args:
        dirpath, filename: where the report goes (see :class:`Profiler`).
        line_count_restriction: functions listed per action: an int (the top N, default 20)
            or a float in (0, 1] (that fraction of them; Lightning's default is 1.0, all).
        dump_stats: also write each action's raw profile as ``<report name>-<action>.prof``
            (``python -m pstats`` or snakeviz read it).

    The report is not printed at the end of the run (it is long): the path is.
    """

    print_summary = False

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 line_count_restriction: float = 20, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        n = line_count_restriction
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n <= 0 or (isinstance(n, float) and n > 1):
            raise ValueError(f"AdvancedProfiler(line_count_restriction={n!r}): use a whole number of lines "
                             "(> 0) or a fraction in (0, 1]")
        self.line_count_restriction = n
        self.dump_stats = bool(dump_stats)
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        self._stack: list[cProfile.Profile] = []  # the running action is the last

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        self.profiled_actions, self._stack = {}, []

    def start(self, action_name: str) -> None:
        if self._stack:
            self._stack[-1].disable()
        pr = self.profiled_actions.get(action_name)
        if pr is None:
            pr = self.profiled_actions[action_name] = cProfile.Profile()
        self._stack.append(pr)
        pr.enable()

    def stop(self, action_name: str) -> None:
        pr = self.profiled_actions.get(action_name)
        if pr is None or pr not in self._stack:
            raise ValueError(f"profiler: stop({action_name!r}) without a matching start({action_name!r})")
        pr.disable()
        # the last occurrence: an action nested in itself resumes its outer call
        del self._stack[len(self._stack) - 1 - self._stack[::-1].index(pr)]
        if self._stack:
            self._stack[-1].enable()

    def summary(self) -> str:
        if not self.profiled_actions:
            return ""
        parts = [self._report_header()]
        for name, pr in self.profiled_actions.items():
            if self.dump_stats:
                path = self.output_path(action_name=name, extension=".prof")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                pr.dump_stats(path)
            buf = io.StringIO()
            try:
                stats = pstats.Stats(pr, stream=buf)
            except TypeError:  # an action that never ran any Python code has no stats
                continue
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            parts.append(f"Profile stats for: {name}")
            parts.append(buf.getvalue())
        return "\n".join(parts)

    def teardown(self, stage: str | None) -> None:
        for pr in self._stack:
            pr.disable()
        self._stack = []
