"""The profiler interface, the do-nothing profiler, and ``Trainer(profiler=...)`` resolution.

A profiler records named *actions*. The Trainer starts and stops one around each loop phase
and each hook that a callback or the module overrides, and calls :meth:`Profiler.step`
after each training batch; user code adds its own actions::

    def training_step(self, batch, batch_idx):
        with self.trainer.profiler.profile("augment"):
            batch = augment(batch)
        ...

At the end of each ``fit``/``validate``/``test``/``predict`` the Trainer calls
:meth:`Profiler.describe`, which writes :meth:`Profiler.summary` to a file per rank under
``dirpath`` (the Trainer's ``log_dir`` unless given) and prints it on global rank zero.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any

#: the names ``Trainer(profiler=...)`` accepts, and the class each one builds
PROFILER_NAMES = {"simple": "SimpleProfiler", "advanced": "AdvancedProfiler", "pytorch": "PyTorchProfiler"}


class _Action:
    """``with profiler.profile(name):`` -- a small object, cheaper than a generator."""

    __slots__ = ("profiler", "name")

    def __init__(self, profiler: Profiler, name: str) -> None:
        self.profiler, self.name = profiler, name

    def __enter__(self) -> str:
        self.profiler.start(self.name)
        return self.name

    def __exit__(self, *exc: Any) -> None:
        self.profiler.stop(self.name)


class Profiler:
    """Base class of the profilers (Lightning's ``Profiler``). A subclass implements
    :meth:`start` and :meth:`stop` (and usually :meth:`summary`).

    Args:
        dirpath: folder of the report files; default: the Trainer's ``log_dir``.
        filename: the report is ``<stage>-<filename>.txt`` (``fit-<filename>.txt``), with
            ``-<rank>`` before ``.txt`` when several processes train; default ``"profiler"``.
    """

    #: print the summary on rank zero at the end of a run (AdvancedProfiler's is too long)
    print_summary = True

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None) -> None:
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"{type(self).__name__}(filename=...) must be a str, got {type(filename).__name__}")
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None
        self._log_dir: str | None = None
        self._device_type = "cpu"
        self.report_path: str | None = None  # the file the last describe() wrote

    # ------------------------------------------------------------------ recording
    def start(self, action_name: str) -> None:
        """Start recording ``action_name``."""
        raise NotImplementedError(f"{type(self).__name__} must implement start(action_name)")

    def stop(self, action_name: str) -> None:
        """Stop recording ``action_name``."""
        raise NotImplementedError(f"{type(self).__name__} must implement stop(action_name)")

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        """``with profiler.profile("name"):`` records the block as the action ``name``."""
        return _Action(self, action_name)

    def step(self) -> None:
        """Called after each training batch (and each evaluation batch of validate/test/predict)."""

    def summary(self) -> str:
        """The report of this run, as text."""
        return ""

    # ------------------------------------------------------------------ run lifecycle
    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer when a run starts. ``local_rank`` is the rank that names this
        process's file (the global rank; None in a one-process run)."""
        self._stage, self._local_rank, self._log_dir = stage, local_rank, log_dir

    def teardown(self, stage: str | None) -> None:
        """Called after :meth:`describe` at the end of a run."""

    def describe(self) -> None:
        """Write :meth:`summary` to this rank's file and print it on rank zero."""
        text = self.summary()
        try:
            if not text:
                return
            path = self.output_path()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:  # appended, as Lightning: a later run adds its report
                f.write(text if text.endswith("\n") else text + "\n")
            self.report_path = path
            if self._local_rank in (None, 0):
                shown = text if self.print_summary else ""
                print(f"{shown}distengine: profiler report written to {path}", file=sys.stderr, flush=True)
        finally:
            self.teardown(self._stage)

    # ------------------------------------------------------------------ files
    @property
    def local_rank(self) -> int:
        return 0 if self._local_rank is None else self._local_rank

    def output_dir(self) -> str:
        return self.dirpath or self._log_dir or os.getcwd()

    def output_name(self, action_name: str | None = None, extension: str = ".txt") -> str:
        """``<stage>-<filename>[-<rank>][-<action>]<extension>``, safe as a file name."""
        parts = [p for p in (self._stage, self.filename or "profiler") if p]
        if self._local_rank is not None:
            parts.append(str(self._local_rank))
        if action_name is not None:
            parts.append(action_name)
        base = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\s]", "_", "-".join(parts))).strip("_")
        return (base or "profiler") + extension

    def output_path(self, action_name: str | None = None, extension: str = ".txt") -> str:
        return os.path.join(self.output_dir(), self.output_name(action_name, extension))

    def _report_header(self) -> str:
        stage = f"{self._stage.upper()} " if self._stage else ""
        rank = f" (rank {self._local_rank})" if self._local_rank is not None else ""
        return f"{stage}Profiler Report{rank}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dirpath={self.dirpath!r}, filename={self.filename!r})"


_NOTHING = contextlib.nullcontext()  # one shared do-nothing context: profile() allocates nothing


class PassThroughProfiler(Profiler):
    """What ``Trainer(profiler=None)`` uses: records nothing and writes nothing, and the
    Trainer takes its unprofiled code paths, so a run without a profiler pays nothing."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return _NOTHING

    def describe(self) -> None:
        pass


def resolve_profiler(value: Any) -> Profiler:
    """``Trainer(profiler=...)``: None/False, ``"simple"``/``"advanced"``/``"pytorch"``
    (any case; 1.x ``True`` means ``"simple"``) or a :class:`Profiler`; anything else is a
    one-line error."""
    if value is None or value is False:
        return PassThroughProfiler()
    if value is True:
        value = "simple"
    if isinstance(value, Profiler):
        return value
    allowed = ", ".join(repr(n) for n in PROFILER_NAMES)
    if isinstance(value, str) and value.lower() in PROFILER_NAMES:
        from distengine import profilers

        return getattr(profilers, PROFILER_NAMES[value.lower()])()
    what = repr(value) if isinstance(value, str) else f"a {type(value).__name__}"
    raise ValueError(f"Trainer(profiler={what}) is not a profiler: use one of {allowed}, "
                     "a distengine.profilers.Profiler instance, or None (no profiling)")
