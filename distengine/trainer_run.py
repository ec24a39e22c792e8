"""One run of the Trainer (fit, validate, test or predict): the hooks chosen once, signal
handling, the stop vote, and the set-up and teardown around a stage. Mixed into the Trainer."""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from typing import Any

import torch

from distengine import compat, metric_writer
from distengine.callbacks.base import CALLBACK_HOOKS, HookDispatcher
from distengine.dist import collectives
from distengine.module import MODULE_HOOKS, Module, module_overrides
from distengine.profilers import wiring as profiling
from distengine.trainer_parts import StopVote

_STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None),
                                  getattr(signal, "SIGUSR2", None)) if s is not None)


class RunMixin:
    """Hooks, launch, signals and the stop vote of the Trainer."""

    def _module_overrides(self, name: str) -> bool:
        return module_overrides(self._module, name)

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
            self._hooks[name] = cb + mod
        self._adapted = adapted = compat.adapt(module)  # the 1.x style, decided once per run
        self._step_hook, self._training_end = adapted.step_end, adapted.training_end
        self._collect_train_outputs = adapted.collect_train_outputs
        if self._profiling:  # timed hooks; an unprofiled run calls the hooks themselves
            profiling.profiled_hooks(self)

    def _launch_if_needed(self) -> None:
        if self.env.distributed or (self._devices <= 1 and self.num_nodes <= 1):
            return
        if os.environ.get("DISTENGINE_DEBUG") == "1":
            return  # `distengine launch --debug`: one process, in place, whatever devices says
        if self.num_nodes > 1:
            raise RuntimeError(f"Trainer(num_nodes={self.num_nodes}) must be started on every node by "
                               "`distengine launch --nnodes N ...` or SLURM")
        script = sys.argv[0] if sys.argv else ""
        if not script or script == "-c" or not os.path.exists(script):
            raise RuntimeError(f"Trainer(devices={self._devices}) needs {self._devices} processes; run it "
                               f"as `distengine launch --{'gpus' if self.accelerator == 'gpu' else 'cpus'} "
                               f"{self._devices} your_script.py` (this session has no script to re-run)")
        flag = ["--gpus", ",".join(map(str, self._gpu_ids))] if self.accelerator == "gpu" else \
            ["--cpus", str(self._devices)]
        cmd = [sys.executable, "-m", "distengine.launch", *flag, script, *sys.argv[1:]]
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(subprocess.call(cmd))

    # ------------------------------------------------------------------ the run context
    def _run(self, stage: str, model: Module):
        return _RunContext(self, stage, model)

    def _install_signal_handlers(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):  # only sets a flag: the loop acts at the next step boundary
            self._status.stop_signal = signum
            if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
                signal.signal(signal.SIGINT, previous.get(signal.SIGINT, signal.default_int_handler))

        for s in _STOP_SIGNALS:
            try:
                previous[s] = signal.signal(s, handler)
            except (ValueError, OSError):
                pass
        return previous

    def _vote_step(self) -> bool:
        """Called after each training batch. Returns True when all ranks agreed to stop now."""
        local = self.should_stop or self._status.stop_signal is not None
        stop, signum = self._stop_vote.step(local, self._status.stop_signal or 0)
        return self._apply_vote(stop, signum, epochs_done=self.progress.epoch)

    def _vote_epoch(self) -> bool:
        local = self.should_stop or self._status.stop_signal is not None
        stop, signum = self._stop_vote.sync(local, self._status.stop_signal or 0)
        return self._apply_vote(stop, signum, epochs_done=self.progress.epoch + 1)

    def _apply_vote(self, stop: bool, signum: int, epochs_done: int) -> bool:
        if not stop:
            return False
        if signum:
            self._status.stop_signal = signum
        elif epochs_done < self.min_epochs or self.progress.global_step < self.min_steps:
            return False  # min_epochs / min_steps delay a requested stop
        self.should_stop = True
        self._stop_now = True
        return True

    def _fit_done(self) -> bool:
        p = self.progress
        if self._stop_now:
            return True
        if 0 <= self.max_steps <= p.global_step:
            return True
        return 0 <= self.max_epochs <= p.epoch

    def _finish_signal_stop(self) -> None:
        signum = self._status.stop_signal
        if signum is None or not self._stop_now:
            return
        path = self._save_on_signal(signum)
        if self.is_global_zero:
            where = f"; checkpoint: {path}" if path else ""
            print(f"distengine: stopped by signal {signal.Signals(signum).name} at step "
                  f"{self.global_step}{where}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def _write_step_metrics(self) -> None:
        metric_writer.write_train_step(self)

    def _raise_if_nonfinite(self) -> None:
        if self._nonfinite_watch is not None:
            self._nonfinite_watch.check(self)

    def _log_to_loggers(self, metrics: dict[str, float]) -> None:
        with self._profiler.profile("log_epoch_metrics"):
            metric_writer.log_to_loggers(self, metrics)

    def _check_first_loss(self, loss: torch.Tensor) -> None:
        if not loss.requires_grad and self._module.automatic_optimization:
            raise ValueError("the loss returned by training_step does not require grad: it was computed "
                             "without the model's parameters or under torch.no_grad()")
        self._loss_checked = True


class _RunContext:
    """Sets up a stage, installs signal handlers, and always tears down (hooks, loggers, writes)."""

    def __init__(self, trainer: Any, stage: str, model: Module) -> None:
        self.t, self.stage, self.model = trainer, stage, model

    def __enter__(self) -> Any:
        t = self.t
        t._status.stage = stage = self.stage
        t._stop_now, t.should_stop = False, False
        t._loss_checked = False
        t._results.reset_all()  # as in Lightning: callback_metrics hold this stage's values only
        t.logged_metrics, t._eval_log_steps, t._step_writes = {}, {}, 0
        t._last_step_written = t.progress.batches_stepped
        t._module = t._results.module = self.model  # module: where logged torchmetrics objects live
        self.model._trainer = t
        t._setup_env()
        if stage == "fit":
            t._stop_vote = StopVote()  # closed at the end of the fit loop
            t._stopped_in_epoch = False
        t._build_hooks()
        profiling.begin_run(t, stage)
        self._previous = t._install_signal_handlers() if stage == "fit" else {}
        self.t0 = time.monotonic()
        key = {"fit": "fit", "validate": "validate", "test": "test", "predict": "predict"}[stage]
        if module_overrides(self.model, "prepare_data"):  # Lightning: downloads once per node, first
            if (t.local_rank if getattr(self.model, "prepare_data_per_node", t.prepare_data_per_node)
                    else t.global_rank) == 0:
                self.model.prepare_data()
            collectives.barrier()
        self.model.setup(key)
        for fn in t._callback_hooks["setup"]:
            fn(key)
        # anomaly mode is scoped to the run, as in Lightning: it slows every later backward
        self._anomaly = torch.is_anomaly_enabled()
        torch.autograd.set_detect_anomaly(bool(t.detect_anomaly) or self._anomaly)
        return t

    def __exit__(self, exc_type, exc, tb) -> bool:
        t = self.t
        for s, h in self._previous.items():
            signal.signal(s, h)
        failed = exc_type is not None and not (exc_type is SystemExit and t._status.stop_signal)
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
                fn(key)
            self.model.teardown(key)
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
            torch.autograd.set_detect_anomaly(self._anomaly)
            profiling.end_run(t, failed)
        return False

