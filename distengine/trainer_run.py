"""One run of the Trainer (fit, validate, test or predict): the hooks chosen once, signal
handling, the stop vote, and the set-up and teardown around a stage. Mixed into the Trainer."""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from distengine import compat
from distengine.callbacks.base import CALLBACK_HOOKS, HookDispatcher
from distengine.distributed import collectives
from distengine.distributed.env import interactive
from distengine.module import MODULE_HOOKS, Module, module_overrides
from distengine.profilers import wiring as profiling
from distengine.stop_vote import StopVote

if TYPE_CHECKING:
    from distengine.loop_context import EvalContext, LoopContext

_STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None),
                                  getattr(signal, "SIGUSR2", None)) if s is not None)


# Stop signals that arrive within this many seconds of the first count as that one: one Ctrl-C
# often arrives twice (the terminal's process group, and a wrapper such as `timeout --foreground`
# or the re-launching parent that forwards it). A Ctrl-C after the window interrupts at once.
SIGNAL_COALESCE_S = 1.0
# Set once a --debug run said that it runs one process in place of several (launcher or Trainer).
DEBUG_ANNOUNCED = "DISTENGINE_DEBUG_ANNOUNCED"


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run the re-launch ``cmd`` and return its exit status. SIGINT/SIGTERM sent to this process
    are passed on to it (it stops gracefully and exits 128 + N) instead of killing it, as
    ``subprocess.call`` does on a KeyboardInterrupt."""
    import threading

    proc = subprocess.Popen(cmd)

    def forward(signum, frame):  # noqa: ARG001
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


class RunMixin:
    """Hooks, launch, signals and the stop vote of the Trainer."""

    def _module_overrides(self, name: str) -> bool:
        return module_overrides(self._module, name)

    def _before_manual_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Manual optimization: ``on_before_optimizer_step`` before each ``optimizer.step()``."""
        for fn in self._hooks["on_before_optimizer_step"]:
            fn(optimizer)

    def _build_hooks(self) -> None:
        module = self._module
        dispatcher = HookDispatcher(self.callbacks)
        self._callback_hooks: dict[str, tuple] = {}
        self._module_hooks: dict[str, tuple] = {}
        self._hooks: dict[str, tuple] = {}
        for name in set(CALLBACK_HOOKS) | set(MODULE_HOOKS):
            cb = tuple(functools.partial(f, self, module)
                       for f in (dispatcher[name] if name in CALLBACK_HOOKS else ()))
            mod = compat.hook_methods(module, name) if name in MODULE_HOOKS else ()
            self._callback_hooks[name], self._module_hooks[name] = cb, mod
            if name in NO_LOG_HOOKS:  # self.log there raises, as in Lightning
                cb, mod = _no_log(name, cb, self._results), _no_log(name, mod, self._results)
                self._callback_hooks[name], self._module_hooks[name] = cb, mod
            self._hooks[name] = cb + mod
        self._adapted = adapted = compat.adapt(module)  # the 1.x style, decided once per run
        self._step_hook, self._training_end = adapted.step_end, adapted.training_end
        self._collect_train_outputs = adapted.collect_train_outputs
        if self._profiling:  # timed hooks; an unprofiled run calls the hooks themselves
            profiling.profiled_hooks(self._profiler, module, self._hooks, self._callback_hooks, self._module_hooks)

    def _attach_model_callbacks(self) -> None:
        """The module's ``configure_callbacks()``, as in Lightning: each replaces the Trainer's
        callbacks of a type it is (a subclass of), then checkpoint callbacks are moved last (and
        the finders first). ``trainer.callbacks`` keeps the result."""
        from collections.abc import Sequence

        from distengine.callbacks.base import Callback
        from distengine.callbacks.checkpoint import Checkpoint
        from distengine.callbacks.finders import BatchSizeFinder, LearningRateFinder

        if not module_overrides(self._module, "configure_callbacks"):
            return
        returned = self._module.configure_callbacks()
        if not returned:
            return
        mine = list(returned) if isinstance(returned, Sequence) else [returned]
        theirs = {type(c) for c in self.callbacks} - {Callback}
        replaced = {t for m in {type(c) for c in mine} for t in theirs if issubclass(m, t)}
        callbacks = [c for c in self.callbacks if type(c) not in replaced] + mine
        finders = [c for c in callbacks if isinstance(c, (BatchSizeFinder, LearningRateFinder))]
        last = [c for c in callbacks if isinstance(c, Checkpoint) and c not in finders]
        self.callbacks = finders + [c for c in callbacks if c not in finders and c not in last] + last

    def _launch_if_needed(self) -> bool:
        """Start the other ranks when this process was not launched but ``devices`` asks for
        several: True when the stage must run through ``_run_in_processes`` (the ranks are
        started from this interpreter: ddp_notebook/ddp_fork/ddp_spawn); otherwise the script
        re-runs itself under ``distengine launch`` (this process exits with its status)."""
        if self.env.distributed or (self._devices <= 1 and self.num_nodes <= 1):
            return False
        if os.environ.get("DISTENGINE_DEBUG") == "1":
            # `distengine launch --debug`: one process, in place, whatever devices says; said once
            if os.environ.get(DEBUG_ANNOUNCED) != "1":
                os.environ[DEBUG_ANNOUNCED] = "1"
                asked = f"devices={self._devices}" + (f", num_nodes={self.num_nodes}" if self.num_nodes > 1 else "")
                print(f"distengine: --debug: Trainer({asked}) runs as 1 process here (rank 0 of 1); "
                      f"without --debug it starts {self._devices * self.num_nodes}", file=sys.stderr, flush=True)
            return False
        if self.num_nodes > 1:
            raise RuntimeError(f"Trainer(num_nodes={self.num_nodes}) must be started on every node by "
                               "`distengine launch --nnodes N ...` or SLURM")
        if self._starts_processes():
            return True
        script = self._script_to_rerun()
        flag = ["--gpus", ",".join(map(str, self._gpu_ids))] if self.accelerator == "gpu" else \
            ["--cpus", str(self._devices)]
        cmd = [sys.executable, "-m", "distengine.launch", *flag, script, *sys.argv[1:]]
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(_run_forwarding_signals(cmd))

    def _script_to_rerun(self) -> str:
        name = getattr(self._strategy, "name", "") or type(self._strategy).__name__
        how = f"`distengine launch --{'gpus' if self.accelerator == 'gpu' else 'cpus'} {self._devices} your_script.py`"
        if interactive():  # sys.argv[0] is the kernel's launcher there: never re-run it
            raise RuntimeError(f"Trainer(strategy={name!r}, devices={self._devices}) re-runs the script in "
                               f"{self._devices} processes, and an interactive session (a notebook, the prompt) "
                               f"has none; use Trainer(strategy='ddp_notebook'), or run your code as a script "
                               f"with {how}")
        script = sys.argv[0] if sys.argv else ""
        if not script or script == "-c" or not os.path.exists(script):
            raise RuntimeError(f"Trainer(devices={self._devices}) needs {self._devices} processes and this "
                               f"session has no script to re-run; use Trainer(strategy='ddp_notebook') or "
                               f"strategy='ddp_spawn', or run it as {how}")
        return script

    # ------------------------------------------------------------------ the run context
    def _run(self, stage: str, model: Module):
        return _RunContext(self, stage, model)

    def _install_signal_handlers(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        first_at: list[float] = []

        def handler(signum, frame):  # only sets a flag: the loop acts at the next step boundary
            now = time.monotonic()
            if first_at and now - first_at[0] < SIGNAL_COALESCE_S:
                return  # the same Ctrl-C delivered twice (process group + a forwarding wrapper)
            if first_at and signum == signal.SIGINT:  # a second Ctrl-C, later: interrupt at once
                before = previous.get(signal.SIGINT)
                signal.signal(signal.SIGINT, before if before is not None else signal.default_int_handler)
                if callable(before) and before is not signal.default_int_handler:
                    signal.raise_signal(signal.SIGINT)  # the program's own handler decides
                    return
                # Python's default, or SIGINT ignored when the process started (a background job of a
                # non-interactive shell): re-raising would be lost, so interrupt here
                raise KeyboardInterrupt
            first_at[:] = [now]
            self._status.stop_signal = signum

        for s in _STOP_SIGNALS:
            try:
                previous[s] = signal.signal(s, handler)
            except (ValueError, OSError):
                pass
        return previous

    def _finish_signal_stop(self) -> None:
        signum = self._status.stop_signal
        if signum is None or not self._loop_state.stop_now:
            return
        path = self._save_on_signal(signum)
        if self.is_global_zero:
            where = f"; checkpoint: {path}" if path else ""
            print(f"distengine: stopped by signal {signal.Signals(signum).name} at step "
                  f"{self.global_step}{where}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def _raise_if_nonfinite(self) -> None:
        self._writer.raise_if_nonfinite()

    # ------------------------------------------------------------------ what the loops see
    def _eval_context(self, **fit_parts: Any) -> EvalContext:
        """The parts an evaluation loop uses (see loop_context.py); with ``fit_parts``, the fit's."""
        from distengine.loop_context import EvalContext, LoopContext

        self._writer.precision = self._precision
        kind = LoopContext if fit_parts else EvalContext
        return kind(module=self._module, strategy=self._strategy, precision=self._precision, results=self._results,
                    status=self._status, hooks=self._hooks, module_hooks=self._module_hooks,
                    callback_hooks=self._callback_hooks, adapted=self._adapted, profiler=self._profiler,
                    profiling=self._profiling, writer=self._writer, flags=self._flags,
                    predict=self.predict_loop, **fit_parts)

    def _loop_context(self) -> LoopContext:
        """The parts the fit loop uses, built once per ``fit`` after set-up and restore."""
        from distengine.optim_hooks import OptimHooks

        return self._eval_context(
            progress=self.progress, optimizers=self.optimizers, schedulers=self.lr_scheduler_configs,
            has_step_schedulers=self._has_step_schedulers, optimization=self._optimization, data=self._data,
            resume=self._resume, stop_vote=self._stop_vote, state=self._loop_state,
            sanity_steps=self._sanity_steps if self._run_sanity_check else None,
            reload_dataloaders=self._reload_dataloaders, step_counters=self._step_counters,
            opt_hooks=OptimHooks.of(self._module))


# The hooks where Lightning's self.log raises (its _FxValidator): logging there has no step or
# epoch to belong to. The module's and the callbacks' hooks alike; per-batch hooks are not
# among them except predict's.
NO_LOG_HOOKS = frozenset({
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_end", "on_validation_end", "on_test_end", "on_predict_start", "on_predict_end",
    "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end",
    "on_exception", "on_save_checkpoint", "on_load_checkpoint"})


def _no_log(name: str, fns: tuple, results: Any) -> tuple:
    """``fns`` wrapped so that ``self.log`` inside them raises (see Module.log)."""
    def guarded(fn: Any) -> Any:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            previous, results.no_log_hook = results.no_log_hook, name
            try:
                return fn(*args, **kwargs)
            finally:
                results.no_log_hook = previous
        call.func = getattr(fn, "func", fn)  # the callback's method, as the profiler names it (profilers/wiring.py)
        return call
    return tuple(guarded(fn) for fn in fns)


class _RunContext:
    """Sets up a stage, installs signal handlers, and always tears down (hooks, loggers, writes)."""

    def __init__(self, trainer: Any, stage: str, model: Module) -> None:
        self.t, self.stage, self.model = trainer, stage, model

    def __enter__(self) -> Any:
        t = self.t
        t._status.stage = t._status.last_fn = stage = self.stage
        t._status.run_status, t._ckpt_path = "running", None
        t._loop_state.begin_stage()  # no stop requested, the first loss not checked yet
        t._results.reset_all()  # as in Lightning: callback_metrics hold this stage's values only
        t._writer.begin_stage()  # logged_metrics and the write counters start afresh
        t._module = t._results.module = self.model  # module: where logged torchmetrics objects live
        self.model._trainer = t
        t._setup_env()
        if stage == "fit":
            t._stop_vote = StopVote()  # closed at the end of the fit loop
            t._loop_state.stopped_in_epoch = False
        t._attach_model_callbacks()
        t._build_hooks()
        if t._profiling:
            profiling.begin_run(t._profiler, stage, t.log_dir, t.root_device.type,
                                t.global_rank if t.world_size > 1 else None)
        self._previous = t._install_signal_handlers() if stage == "fit" else {}
        self.t0 = time.monotonic()
        key = {"fit": "fit", "validate": "validate", "test": "test", "predict": "predict"}[stage]
        if module_overrides(self.model, "prepare_data"):  # Lightning: downloads once per node, first
            if (t.local_rank if getattr(self.model, "prepare_data_per_node", t.prepare_data_per_node)
                    else t.global_rank) == 0:
                self.model.prepare_data()
            collectives.barrier()
        for fn in t._callback_hooks["setup"]:  # Lightning: the callbacks first, `stage` by keyword
            fn(stage=key)
        self.model.setup(stage=key)
        if module_overrides(self.model, "configure_model"):  # Lightning: after setup, before configure_optimizers
            t._strategy.configure_model(self.model)
        # anomaly mode is scoped to the run, as in Lightning: it slows every later backward
        self._anomaly = torch.is_anomaly_enabled()
        torch.autograd.set_detect_anomaly(bool(t.detect_anomaly) or self._anomaly)
        return t

    def __exit__(self, exc_type, exc, tb) -> bool:
        t = self.t
        for s, h in self._previous.items():
            signal.signal(s, h)
        failed = exc_type is not None and not (exc_type is SystemExit and t._status.stop_signal)
        clearer = t._strategy.explain_error(exc) if failed else None
        if failed:
            for fn in t._hooks.get("on_exception", ()):
                try:
                    fn(exc)
                except Exception:  # noqa: BLE001 - the original error matters more
                    pass
        key = self.stage
        for handle in t._step_counters:  # manual optimization's step counters end with the run
            handle.remove()
        t._step_counters = []
        try:
            for fn in t._callback_hooks["teardown"]:
                fn(stage=key)
            self.model.teardown(stage=key)
        finally:
            # after the callbacks' teardown (ModelCheckpoint waits for its saves there): the
            # strategy unwraps the model and releases what it built for this stage
            t._strategy.teardown()
            if t.is_global_zero and self.stage == "fit":
                status = "failed" if failed else ("interrupted" if t._status.stop_signal else "success")
                for lg in t._loggers:
                    lg.finalize(status)
            elif t.is_global_zero:
                for lg in t._loggers:
                    lg.save()  # flush what validate/test wrote
            t._status.stage = None
            # Lightning: any error or a stop signal leaves the Trainer interrupted
            t._status.run_status = "interrupted" if exc_type is not None or t._status.stop_signal else "finished"
            torch.autograd.set_detect_anomaly(self._anomaly)
            if t._profiling:
                profiling.end_run(t._profiler, failed)
        if clearer is not None:
            raise clearer from exc  # torch's own message stays in the traceback, as the cause
        return False

