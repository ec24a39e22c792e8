"""``PyTorchProfiler``: ``torch.profiler`` traces and operator tables (``Trainer(profiler="pytorch")``)."""
from __future__ import annotations

import glob
import inspect
import os
from typing import Any, Callable

from distengine.profilers.base import Profiler

#: keys ``sort_by_key`` takes (torch's ``EventList.table``; "cuda" reads as "device" there)
SORT_KEYS = ("cpu_time", "cpu_time_total", "self_cpu_time_total", "cuda_time", "cuda_time_total",
             "self_cuda_time_total", "device_time", "device_time_total", "self_device_time_total",
             "cpu_memory_usage", "self_cpu_memory_usage", "cuda_memory_usage", "self_cuda_memory_usage",
             "device_memory_usage", "self_device_memory_usage", "count")
#: the default schedule: skip 1 batch, warm up on 1, record 3, once
DEFAULT_SCHEDULE = {"wait": 1, "warmup": 1, "active": 3, "repeat": 1}
# set by this class (or by its named arguments), so not accepted through **profiler_kwargs
_OWN_KWARGS = {"schedule", "activities", "record_shapes", "profile_memory", "with_stack"}


class PyTorchProfiler(Profiler):
    """Runs ``torch.profiler.profile`` over the run: operator timings on the CPU and, on a
    GPU, CUDA kernels. Every loop phase, hook and ``profiler.profile(name)`` block is a
    ``record_function`` range under its action name, and each training batch is one profiler
    step (``prof.step()``), so the schedule counts batches.

    Writes, per rank, into ``dirpath`` (the Trainer's ``log_dir`` by default):

    * ``fit-<filename>[-<rank>].<ms>.pt.trace.json`` per recorded cycle, by
      ``torch.profiler.tensorboard_trace_handler``: Chrome-trace JSON that Perfetto
      (ui.perfetto.dev), ``chrome://tracing`` and TensorBoard's PyTorch-profiler tab read
      (``tensorboard --logdir <log_dir>`` with ``torch-tb-profiler`` installed);
    * ``fit-<filename>[-<rank>].txt``: the operator table of the recorded steps.

    Args:
        dirpath, filename: where the files go (see :class:`Profiler`).
        schedule: a dict with ``torch.profiler.schedule``'s arguments (``wait``, ``warmup``,
            ``active``, ``repeat``, ``skip_first``; those left out are the default's) or a
            schedule callable; default ``{"wait": 1, "warmup": 1, "active": 3, "repeat": 1}``:
            one trace, of batches 3-5.
            A run shorter than ``wait`` + ``warmup`` batches records nothing.
        activities: ``torch.profiler.ProfilerActivity`` values; default CPU, plus CUDA when
            the Trainer runs on a GPU.
        record_shapes, profile_memory, with_stack: passed to ``torch.profiler.profile``.
        export_to_chrome: write the trace files (default True).
        sort_by_key: the table's sort column (one of :data:`SORT_KEYS`); default
            ``"cuda_time_total"`` when CUDA is profiled, else ``"cpu_time_total"``.
        row_limit: rows of the table (default 20; -1: all).
        group_by_input_shapes: one table row per operator and input shapes (needs
            ``record_shapes=True``).
        **profiler_kwargs: other ``torch.profiler.profile`` arguments (``with_flops``,
            ``with_modules``, ``on_trace_ready``, ...).

    Example::

        prof = PyTorchProfiler(schedule={"wait": 2, "warmup": 1, "active": 5}, profile_memory=True)
        trainer = de.Trainer(profiler=prof, max_steps=20)
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 schedule: dict[str, int] | Callable[[int], Any] | None = None, activities: Any = None,
                 record_shapes: bool = False, profile_memory: bool = False, with_stack: bool = False,
                 export_to_chrome: bool = True, sort_by_key: str | None = None, row_limit: int = 20,
                 group_by_input_shapes: bool = False, **profiler_kwargs: Any) -> None:
        import torch.profiler

        super().__init__(dirpath=dirpath, filename=filename)
        self._schedule = _make_schedule(schedule)
        if sort_by_key is not None and sort_by_key not in SORT_KEYS:
            raise ValueError(f"PyTorchProfiler(sort_by_key={sort_by_key!r}): use one of {', '.join(SORT_KEYS)}")
        if isinstance(row_limit, bool) or not isinstance(row_limit, int) or row_limit == 0 or row_limit < -1:
            raise ValueError(f"PyTorchProfiler(row_limit={row_limit!r}): use a positive number of rows, or -1 for all")
        known = set(inspect.signature(torch.profiler.profile.__init__).parameters) - {"self"} - _OWN_KWARGS
        unknown = sorted(set(profiler_kwargs) - known)
        if unknown:
            raise TypeError(f"PyTorchProfiler got {', '.join(map(repr, unknown))}, which torch.profiler.profile "
                            f"does not take; it takes {', '.join(sorted(known))}")
        self._activities = list(activities) if activities is not None else None
        self._kwargs = dict(profiler_kwargs, record_shapes=bool(record_shapes),
                            profile_memory=bool(profile_memory), with_stack=bool(with_stack))
        self.export_to_chrome = bool(export_to_chrome)
        self.sort_by_key, self.row_limit = sort_by_key, row_limit
        self.group_by_input_shapes = bool(group_by_input_shapes) and bool(record_shapes)
        self.profiler: Any = None  # the torch.profiler.profile of the current run
        self._finished: Any = None  # ... once stopped, until its summary is written
        self._ranges: dict[str, list[Any]] = {}
        self.trace_paths: list[str] = []  # the trace files written in the last run

    def _default_activities(self) -> list[Any]:
        from torch.profiler import ProfilerActivity

        on_gpu = self._device_type == "cuda"
        return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        import torch.profiler

        super().setup(stage, local_rank, log_dir)
        self.teardown(stage)  # a run that ended without describe() leaves nothing running
        self.trace_paths = []
        kwargs = dict(self._kwargs)
        if "on_trace_ready" not in kwargs and self.export_to_chrome:
            os.makedirs(self.output_dir(), exist_ok=True)
            kwargs["on_trace_ready"] = self._trace_handler()
        self.profiler = torch.profiler.profile(activities=self._activities or self._default_activities(),
                                               schedule=self._schedule, **kwargs)
        self.profiler.start()

    def _trace_handler(self) -> Callable[[Any], None]:
        from torch.profiler import tensorboard_trace_handler

        folder, worker = self.output_dir(), self.output_name(extension="")
        write = tensorboard_trace_handler(folder, worker_name=worker)
        pattern = os.path.join(glob.escape(folder), f"{glob.escape(worker)}.*.pt.trace.json")

        def on_trace_ready(prof: Any) -> None:  # torch names the file; note which one it wrote
            before = set(glob.glob(pattern))
            write(prof)
            self.trace_paths.extend(sorted(set(glob.glob(pattern)) - before))

        return on_trace_ready

    def start(self, action_name: str) -> None:
        import torch.profiler

        rf = torch.profiler.record_function(action_name)
        rf.__enter__()
        self._ranges.setdefault(action_name, []).append(rf)

    def stop(self, action_name: str) -> None:
        open_ranges = self._ranges.get(action_name)
        if not open_ranges:
            raise ValueError(f"profiler: stop({action_name!r}) without a matching start({action_name!r})")
        open_ranges.pop().__exit__(None, None, None)

    def step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def _stop_profiler(self) -> None:
        for ranges in self._ranges.values():  # ranges a failed run left open
            while ranges:
                ranges.pop().__exit__(None, None, None)
        self._ranges = {}
        if self.profiler is not None:
            prof, self.profiler = self.profiler, None
            prof.stop()  # a cycle still recording is written now
            self._finished = prof

    def summary(self) -> str:
        self._stop_profiler()
        prof = self._finished
        if prof is None:
            return ""
        header = self._report_header()
        if prof.profiler is None or not prof.events():  # the schedule never reached a recording step
            return (f"{header}\nno profiler step was recorded: the run ended before the schedule's "
                    "wait + warmup batches; lower them or train longer\n")
        on_gpu = any("CUDA" in str(a) for a in (self._activities or self._default_activities()))
        sort = self.sort_by_key or ("cuda_time_total" if on_gpu else "cpu_time_total")
        table = prof.key_averages(group_by_input_shape=self.group_by_input_shapes).table(
            sort_by=sort, row_limit=self.row_limit)
        traces = "".join(f"trace: {p}\n" for p in self.trace_paths)
        return f"{header}\n{table}\n{traces}"

    def teardown(self, stage: str | None) -> None:
        self._stop_profiler()
        self._finished = None


def _make_schedule(schedule: Any) -> Callable[[int], Any]:
    import torch.profiler

    if schedule is None:
        schedule = DEFAULT_SCHEDULE
    if isinstance(schedule, dict):
        try:  # what the dict leaves out comes from the default (repeat=1: one trace, not one per cycle)
            return torch.profiler.schedule(**{**DEFAULT_SCHEDULE, **schedule})
        except (TypeError, ValueError, AssertionError) as exc:
            raise ValueError(f"PyTorchProfiler(schedule={schedule!r}): {exc}; use torch.profiler.schedule's "
                             "arguments: wait, warmup, active (> 0), repeat, skip_first") from None
    if not callable(schedule) or not isinstance(schedule(0), torch.profiler.ProfilerAction):
        raise ValueError(f"PyTorchProfiler(schedule={schedule!r}): use a dict such as {DEFAULT_SCHEDULE} "
                         "or torch.profiler.schedule(...)")
    return schedule
