"""How the Trainer and the loops hand their phases and hooks to a profiler.

Everything here runs only when a profiler is set (``profiling`` in the loop context). The Trainer and
the loops decide once -- per run for the hooks, per epoch / evaluation run for the loop
phases -- whether to call the profiled versions built here, so an unprofiled run calls
nothing extra per batch. The actions (and Lightning's name for the same thing):

=========================  ====================================================
``run_training_epoch``     the training epoch (Lightning: the same)
``train_dataloader_next``  fetching a training batch (``[_TrainingEpochLoop].train_dataloader_next``)
``training_step``          forward: ``training_step``, through DDP (``[Strategy]...training_step``)
``backward``               ``loss.backward()`` with precision scaling (``[Strategy]...backward``)
``optimizer_step``         unscale, clip, ``optimizer.step()``, ``zero_grad`` (manual: ``opt.step()``)
``log_step_metrics``       reducing and writing the step values (every ``log_every_n_steps``)
``log_epoch_metrics``      writing the epoch values to the loggers
``save_checkpoint``        ``trainer.save_checkpoint`` (Lightning: the same)
``run_validation``         a validation run (``run_sanity_check``, ``run_test``, ``run_predict``)
``val_dataloader_next``    fetching an evaluation batch (``test_``, ``predict_``)
``validation_step``        ``validation_step`` (``test_step``, ``predict_step``)
``[Callback]K.hook``       a callback's hook, K its ``state_key`` (Lightning: the same)
``[LightningModule]M.hook``  the module's hook, M its class name (Lightning: the same)
=========================  ====================================================
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

from distengine.profilers.base import PassThroughProfiler, Profiler, resolve_profiler

_EVAL_PREFIX = {"validation": "val", "test": "test", "predict": "predict"}


def resolve(value: Any) -> tuple[Profiler, bool]:
    """``Trainer(profiler=value)`` -> (the profiler, whether it records anything)."""
    profiler = resolve_profiler(value)
    return profiler, not isinstance(profiler, PassThroughProfiler)


def _timed(profiler: Profiler, action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    start, stop = profiler.start, profiler.stop

    def timed(*args: Any, **kwargs: Any) -> Any:
        start(action)
        try:
            return fn(*args, **kwargs)
        finally:
            stop(action)

    timed.func = getattr(fn, "func", fn)  # the hook's bound method (loop._monitors reads its callback)
    return timed


def _fetching(profiler: Profiler, iterable: Iterable, action: str, step: bool) -> Iterator[Any]:
    """Yield ``iterable``'s batches, each ``next`` timed as ``action``; with ``step``, call
    ``profiler.step()`` once each batch is done (when the loop asks for the next one, or
    leaves the loop)."""
    it = iter(iterable)
    while True:
        profiler.start(action)
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            profiler.stop(action)
        try:
            yield batch
        finally:
            if step:
                profiler.step()


class _FetchTimed:
    """An evaluation loader whose batches are fetched through :func:`_fetching`."""

    def __init__(self, profiler: Profiler, loader: Iterable, action: str, step: bool) -> None:
        self.profiler, self.loader, self.action, self.step = profiler, loader, action, step

    def __iter__(self) -> Iterator[Any]:
        return _fetching(self.profiler, self.loader, self.action, self.step)


def profiled_hooks(profiler: Profiler, module: Any, hooks: dict, callback_hooks: dict, module_hooks: dict) -> None:
    """Replace the entries of the hook tables by timed versions (once per run)."""
    module_name = type(module).__name__
    for name in list(hooks):
        cb = tuple(_timed(profiler, f"[Callback]{_owner(fn)}.{name}", fn) for fn in callback_hooks[name])
        mod = tuple(_timed(profiler, f"[LightningModule]{module_name}.{getattr(fn, '__name__', name)}", fn)
                    for fn in module_hooks[name])
        callback_hooks[name], module_hooks[name], hooks[name] = cb, mod, cb + mod


def _owner(fn: Any) -> str:
    """The callback behind ``functools.partial(callback.hook, trainer, module)``."""
    cb = getattr(getattr(fn, "func", fn), "__self__", None)
    return str(getattr(cb, "state_key", type(cb).__name__)) if cb is not None else "callback"


def train_parts(ctx: Any, iterator: Iterator, step_fn: Callable, backward: Callable,
                optimizer_step: Callable) -> tuple[Iterator, Callable, Callable, Callable]:
    """The training loop's batch iterator, forward, backward and optimizer step, timed (per
    epoch); ``ctx`` is the fit's :class:`~distengine.loop_context.LoopContext`."""
    p = ctx.profiler
    if not ctx.module.automatic_optimization:
        _time_manual_steps(ctx)
    return (_fetching(p, iterator, "train_dataloader_next", step=True), _timed(p, "training_step", step_fn),
            _timed(p, "backward", backward), _timed(p, "optimizer_step", optimizer_step))


def _time_manual_steps(ctx: Any) -> None:
    """Manual optimization: time each ``optimizer.step()`` the user makes, through the
    optimizer's step hooks (removed with the Trainer's step counters at the end of the run)."""
    p = ctx.profiler
    done = ctx.timed_optimizers
    for opt in ctx.optimizers:
        if id(opt) in done:
            continue
        done.add(id(opt))
        ctx.step_counters.append(opt.register_step_pre_hook(lambda *_: p.start("optimizer_step")))
        ctx.step_counters.append(opt.register_step_post_hook(lambda *_: p.stop("optimizer_step")))


def eval_parts(ctx: Any, name: str, step: Callable, loaders: list[Any]) -> tuple[Callable, list[Any]]:
    """An evaluation run's step and loaders, timed. Outside ``fit`` (validate/test/predict)
    each evaluation batch is also one profiler step."""
    p = ctx.profiler
    per_batch_steps = ctx.status.stage != "fit"
    action = f"{_EVAL_PREFIX[name]}_dataloader_next"
    return _timed(p, f"{name}_step", step), [_FetchTimed(p, dl, action, per_batch_steps) for dl in loaders]


def begin_run(profiler: Profiler, stage: str, log_dir: str, device_type: str, rank: int | None) -> None:
    """Set the profiler up for a run: its stage, this process's rank (``rank``: in file names
    when several processes run, else None) and the log folder, which is created here so that a
    folder that cannot be written fails now rather than at the end of training."""
    folder = profiler.dirpath or log_dir
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OSError(f"profiler: cannot create the report folder {folder!r} ({exc}); "
                      "pass a writable dirpath to the profiler") from None
    profiler._device_type = device_type
    profiler.setup(stage, local_rank=rank, log_dir=log_dir)


def end_run(profiler: Profiler, failed: bool) -> None:
    """Write the run's report. After a failed run the report is still written, but a failure
    to write it does not hide the run's own error."""
    try:
        profiler.describe()
    except Exception as exc:  # noqa: BLE001 - the run's error matters more
        if not failed:
            raise
        from distengine.distributed.rank_zero import rank_zero_warn

        rank_zero_warn(f"profiler: the report of the failed run could not be written: {exc}")
