"""One call of the Trainer (``fit``, ``validate``, ``test`` or ``predict``): a :class:`StageRun`
owns what the call needs and builds the loop's context from it.

Example (what ``Trainer.fit`` does)::

    StageRun(trainer, parts, "fit", model).fit(train_dataloaders, val_dataloaders, datamodule, ckpt_path)

The run owns the hook tables (stage_hooks.py), the data of the call (the loaders flow from the
entry point's argument into :class:`~distengine.stage_data.StageData`), the precision, the
optimizers and how each batch is optimised (distengine/optimization/), the stop vote, and the
checkpoints (stage_checkpoint.py). It reads the Trainer's public state (flags, callbacks,
strategy, loggers) and is handed the parts that outlive a call (:class:`TrainerParts`: progress,
loop state, status, results, the metric writer, the resume point, the data) explicitly; it
writes the Trainer's public ``optimizers``/``lr_scheduler_configs``/``callbacks``, as Lightning
code expects to find them there after the call.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from distengine import loop, run_warnings
from distengine.distributed import collectives
from distengine.loop_context import EvalContext, LoopContext, LoopFlags, LoopState
from distengine.metric_writer import MetricWriter
from distengine.metrics import Results
from distengine.module import Module, module_overrides
from distengine.profilers import wiring as profiling
from distengine.stage_checkpoint import CheckpointPaths, StageCheckpoints
from distengine.stage_data import StageData
from distengine.stage_hooks import build_hooks, model_callbacks
from distengine.stage_signals import (
    finish_signal_stop,
    install_interrupt_marker,
    install_signal_handlers,
    restore_signal_handlers,
)
from distengine.state import Progress, ResumePoint, TrainerStatus
from distengine.stop_vote import StopVote
from distengine.utilities.exceptions import ConfigError


@dataclass
class TrainerParts:
    """What outlives one call: created with the Trainer, handed to each :class:`StageRun`."""
    progress: Progress
    flags: LoopFlags                     # the flags the loop reads (the Trainer's max_epochs... write them)
    writer: MetricWriter = None  # type: ignore[assignment]  # (built once the loggers are: Trainer.__init__)
    results: Results = field(default_factory=Results)
    loop_state: LoopState = field(default_factory=LoopState)  # should_stop, the last loss, ...
    status: TrainerStatus = field(default_factory=TrainerStatus)
    resume: ResumePoint = field(default_factory=ResumePoint)  # where the epoch started; a resume's RNG state
    data: StageData = field(default_factory=StageData)
    paths: CheckpointPaths = field(default_factory=CheckpointPaths)  # trainer.ckpt_path
    predict_loop: Any = None             # trainer.predict_loop (predict_state.py), made when first read


class StageRun:
    """One call of the Trainer; see the module docstring. Used as a context manager around the
    call's loop: set-up on entry (hooks, environment, ``setup``), teardown always on exit."""

    def __init__(self, trainer: Any, parts: TrainerParts, stage: str, module: Module,
                 previous: StageRun | None = None) -> None:
        self.trainer, self.parts, self.stage, self.module = trainer, parts, stage, module
        self.paths = parts.paths
        # the precision of the previous call on the same device carries on (its skipped-step count)
        self.precision = previous.precision if previous is not None else None
        self.hooks: dict[str, tuple] = {}
        self.callback_hooks: dict[str, tuple] = {}
        self.module_hooks: dict[str, tuple] = {}
        self.adapted: Any = None
        self.optimization: Any = None        # fit: how each batch is optimised (optimization/)
        self.has_step_schedulers = False
        self.step_counters: list[Any] = []   # manual optimization: the optimizer step hooks, removed on exit
        self.stop_vote: StopVote | None = None
        self.run_sanity_check = False
        self.checkpoints = StageCheckpoints(self)
        self.datamodule: Any = None          # the datamodule given to this call
        self._previous_signals: dict = {}

    # ------------------------------------------------------------------ the calls
    def fit(self, train_dataloaders: Any, val_dataloaders: Any, datamodule: Any, ckpt_path: str | None) -> None:
        t, module, data = self.trainer, self.module, self.parts.data
        if datamodule is None and hasattr(train_dataloaders, "train_dataloader"):
            datamodule, train_dataloaders = train_dataloaders, None  # fit(model, dm), as Lightning allows
        self.datamodule = datamodule  # its prepare_data and setup: _setup_hooks
        with self:
            # Lightning calls train_dataloader() after the sanity check (load_train), or when
            # trainer.estimated_stepping_batches is first read (configure_optimizers)
            train = data.resolve(t, module, "fit", train_dataloaders, datamodule, "train", defer=True)
            # Lightning calls val_dataloader() in the sanity check (trainer.sanity_checking set), else at
            # the start of training when the first epoch validates, else at the first validating epoch
            val = data.resolve(t, module, "fit", val_dataloaders, datamodule, "val", required=False, defer=True)
            self.setup_fit(train, val)
            self.checkpoints.restore(ckpt_path)
            if t.is_global_zero:
                hp = dict(module.hparams)
                if hp and getattr(module, "_log_hyperparams", True):
                    for lg in t.loggers:
                        lg.log_hyperparams(hp)
            for fn in self.hooks["on_fit_start"]:
                fn()
            module.zero_grad()  # as Lightning does before a stage's loop
            loop.fit_loop(self.loop_context())
            finish_signal_stop(t, self.parts.status, self.parts.loop_state.stop_now, self.checkpoints.save_on_signal)
            for fn in self.hooks["on_fit_end"]:
                fn()

    def evaluate(self, dataloaders: Any, datamodule: Any, ckpt_path: str | None) -> list[Any]:
        """validate/test/predict: one evaluation epoch over the call's loaders."""
        from distengine import loop_eval
        from distengine.data import apply_limit, loader_len
        from distengine.data_combined import prepare_eval
        from distengine.precision import Precision

        t, model, stage, data = self.trainer, self.module, self.stage, self.parts.data
        kind = {"validate": "val", "test": "test", "predict": "predict"}[stage]
        if datamodule is None and hasattr(dataloaders, f"{kind}_dataloader"):
            datamodule, dataloaders = dataloaders, None  # test(model, dm), as Lightning allows
        self.datamodule = datamodule  # its prepare_data and setup: _setup_hooks
        with self:
            model.zero_grad()  # as Lightning does before a stage's loop
            if stage != "predict" and t.limits[kind] == 0:  # Lightning: no dataloader, no hooks, no results
                return []
            loaders = data.resolve(t, model, stage, dataloaders, datamodule, kind)
            run_warnings.warn_few_workers(t, loaders, kind)
            strategy = t.strategy
            loaders = [prepare_eval(dl, *strategy.data_parallel(t.env), t.use_distributed_sampler) for dl in loaders]
            if self.precision is None or self.precision.device != strategy.root_device:
                self.precision = Precision(t.precision, strategy.root_device)
            strategy.precision = self.precision
            strategy.module_to_device(model)
            ckpt_path = ckpt_path if ckpt_path is not None else self.paths.set_by_user  # trainer.ckpt_path = ...
            if ckpt_path is not None:
                self.checkpoints.load_weights_only(ckpt_path)
            if stage == "predict":  # a prediction writer's indices (predict_state.py)
                loaders = t.predict_loop.begin(t.callbacks, loaders)
            limit = [apply_limit(t.limits[kind], loader_len(dl), kind) for dl in loaders]
            data.eval_batches[stage] = limit  # kept per stage, as in Lightning
            if stage == "validate":
                data.fit.num_val_batches = limit
            return loop_eval.run_eval(self.eval_context(), stage, loaders, limit)

    # ------------------------------------------------------------------ fit set-up
    def setup_fit(self, train: list[Any], val: list[Any]) -> None:
        """The fit's loaders, precision, the module on its device(s), optimizers and how each batch is optimised."""
        from distengine.optim import ManualStepCounter, parse_optimizers, wrap_optimizers
        from distengine.optimization import one_x_mode, plan_optimization
        from distengine.precision import Precision

        t, module, data = self.trainer, self.module, self.parts.data
        if len(train) > 1:
            raise ConfigError(f"fit takes one training dataloader, got {len(train)}")
        data.begin_fit(t, module, train, val)  # the training loader: load_train
        fit = data.fit
        fit.val_pending = "val" in data.hooks and not val
        fit.train_loaded_epoch, fit.val_loaded_epoch = 0, float("-inf")  # (set again in fit_loop)
        run_warnings.warn_fit_setup(t, fit, val)  # Lightning's PossibleUserWarnings (max_epochs, workers...)
        # Lightning decides from the flags; the loader is loaded in the check (loop._sanity_check)
        may_validate = fit.should_validate() or (fit.val_pending and fit.has_val_step and t.limits["val"] != 0)
        self.run_sanity_check = may_validate and t.num_sanity_val_steps != 0
        strategy = t.strategy
        self.precision = Precision(t.precision, strategy.root_device)
        self.parts.loop_state.nonfinite_watch = None
        manual = not module.automatic_optimization
        if manual and t.precision == "16-mixed":
            raise ConfigError("manual optimization with precision='16-mixed' is not supported; use 'bf16-mixed'")
        if manual and t.accumulate_grad_batches > 1:  # Lightning 2.x refuses it as well
            raise ConfigError("accumulate_grad_batches is not supported with manual optimization; accumulate in "
                              "training_step (step the optimizer every N batches) or use automatic optimization")
        strategy.precision, strategy.sync_batchnorm = self.precision, t.sync_batchnorm
        strategy.one_x_mode = one_x_mode(module)
        strategy.setup_module(module)
        if t.compile:  # in place; the DDP wrapper calls training_step, which calls the compiled forward
            module.compile()
        # after setup_module: a sharding strategy replaces the parameters the optimizers must hold
        returned = module.configure_optimizers()
        t.optimizers, t.lr_scheduler_configs = parse_optimizers(returned, manual)
        self.optimization = plan_optimization(  # automatic, manual or 1.x several optimizers (optimization/)
            module, t.optimizers, t.lr_scheduler_configs, returned, t.precision, t.accumulate_grad_batches)
        self.has_step_schedulers = any(c.interval == "step" for c in t.lr_scheduler_configs)
        if manual:  # Lightning 2.x: global_step counts the optimizer.step() calls of training_step
            counter = ManualStepCounter(self.parts.progress, wrap_optimizers(t, t.optimizers))
            self.step_counters = [o.register_step_post_hook(counter.hook) for o in t.optimizers] + [
                o.register_step_pre_hook(self._before_manual_step) for o in t.optimizers] + [counter]
        self.parts.progress.next_fit()

    def _before_manual_step(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        """Manual optimization: ``on_before_optimizer_step`` before each ``optimizer.step()``
        updates the weights; with a closure, after the closure ran (it computes the gradients
        the hook sees), as Lightning does."""
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # (args[0]: the optimizer)
        if closure is None:
            for fn in self.hooks["on_before_optimizer_step"]:
                fn(optimizer)
            return None

        def then_hooks() -> Any:
            out = closure()
            for fn in self.hooks["on_before_optimizer_step"]:
                fn(optimizer)
            return out

        if "closure" in kwargs:
            return args, {**kwargs, "closure": then_hooks}
        return (args[0], then_hooks, *args[2:]), kwargs

    def reload_dataloaders(self, kind: str) -> None:
        self.parts.data.reload(self.trainer, self.module, kind)

    def load_train(self, position: bool = True) -> None:
        """The fit's training loader, loaded once: after the sanity check (the loop), or before
        when ``trainer.estimated_stepping_batches`` is read (configure_optimizers), as in
        Lightning. ``position``: a resumed fit's data position is applied to it (the loop's
        call, on every rank at once: the position check is a collective)."""
        t, data = self.trainer, self.parts.data
        if data.load_train(t, self.module):
            run_warnings.warn_train_loaded(t, data.fit, data.raw[0])
        if position and not data.fit.train_pending:
            self.checkpoints.restore_position()

    # ------------------------------------------------------------------ what the loops see
    def eval_context(self, **fit_parts: Any) -> EvalContext:
        """The parts an evaluation loop uses (see loop_context.py); with ``fit_parts``, the fit's."""
        t, parts = self.trainer, self.parts
        parts.writer.precision = self.precision
        kind = LoopContext if fit_parts else EvalContext
        return kind(module=self.module, strategy=t.strategy, precision=self.precision, results=parts.results,
                    status=parts.status, hooks=self.hooks, module_hooks=self.module_hooks,
                    callback_hooks=self.callback_hooks, adapted=self.adapted, profiler=t.profiler,
                    profiling=t.settings.profiling, writer=parts.writer, flags=parts.flags,
                    predict=t.predict_loop, **fit_parts)

    def loop_context(self) -> LoopContext:
        """The parts the fit loop uses, built once per ``fit`` after set-up and restore."""
        from distengine.optim_hooks import OptimHooks

        t, parts = self.trainer, self.parts
        return self.eval_context(
            progress=parts.progress, optimizers=t.optimizers, schedulers=t.lr_scheduler_configs,
            has_step_schedulers=self.has_step_schedulers, optimization=self.optimization, data=parts.data.fit,
            resume=parts.resume, stop_vote=self.stop_vote, state=parts.loop_state,
            sanity_steps=parts.data.sanity_steps if self.run_sanity_check else None,
            reload_dataloaders=self.reload_dataloaders, load_train=self.load_train, step_counters=self.step_counters,
            opt_hooks=OptimHooks.of(self.module))

    # ------------------------------------------------------------------ set-up and teardown
    def setup_environment(self) -> None:
        """The process group, the device and torch's flags: once per Trainer."""
        t, status = self.trainer, self.parts.status
        if status.environment_ready:
            return
        import os

        from distengine.distributed import setup

        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=t.deterministic == "warn")
        if t.benchmark is not None:
            torch.backends.cudnn.benchmark = bool(t.benchmark)
        t.strategy.setup_environment(t.accelerator, t.env, t.settings.gpu_ids, setup.timeout_seconds(t.dist_timeout))
        status.environment_ready = True

    def __enter__(self) -> StageRun:
        t, parts, stage, model = self.trainer, self.parts, self.stage, self.module
        parts.status.stage = parts.status.last_fn = stage
        parts.status.run_status, self.paths.loaded = "running", None
        parts.loop_state.begin_stage()  # no stop requested, the first loss not checked yet
        parts.results.reset_all()  # as in Lightning: callback_metrics hold this stage's values only
        parts.writer.begin_stage()  # logged_metrics and the write counters start afresh
        parts.results.module = model  # where logged torchmetrics objects live
        model._trainer = t
        self.setup_environment()
        if stage == "fit":
            self.stop_vote = StopVote()  # closed at the end of the fit loop
            parts.loop_state.stopped_in_epoch = False
        t.callbacks = model_callbacks(t.callbacks, model)  # the module's configure_callbacks()
        tables = build_hooks(t, model, t.callbacks, parts.results, t.profiler, t.settings.profiling)
        self.hooks, self.callback_hooks, self.module_hooks = tables.all, tables.callbacks, tables.module
        self.adapted = tables.adapted
        if t.settings.profiling:
            profiling.begin_run(t.profiler, stage, t.log_dir, t.root_device.type,
                                t.global_rank if t.world_size > 1 else None)
        parts.status.stop_signal = None  # a signal noted by an earlier call is not this call's
        self._anomaly = torch.is_anomaly_enabled()  # (put back in __exit__)
        self._previous_signals = (install_signal_handlers if stage == "fit" else install_interrupt_marker)(parts.status)
        self.t0 = time.monotonic()
        try:
            self._setup_hooks()
        except BaseException as exc:  # a failing setup ends the run as a failing step does: on_exception,
            self.__exit__(type(exc), exc, exc.__traceback__)  # teardown, the signal handlers put back
            raise
        return self

    def _setup_hooks(self) -> None:
        """prepare_data (the datamodule's, the module's), setup (the datamodule's, the callbacks',
        the module's), configure_model, anomaly mode: Lightning's order."""
        from distengine import stage_data

        t, model, stage, dm = self.trainer, self.module, self.stage, self.datamodule
        if dm is not None:
            stage_data.attach_datamodule(t, dm)
            stage_data.prepare_datamodule(t, dm)
        if module_overrides(model, "prepare_data"):  # Lightning: downloads once per node, first
            if (t.local_rank if getattr(model, "prepare_data_per_node", t.prepare_data_per_node)
                    else t.global_rank) == 0:
                model.prepare_data()
            collectives.barrier()
        if dm is not None:
            stage_data.setup_datamodule(dm, stage)
        for fn in self.callback_hooks["setup"]:  # Lightning: the callbacks first, `stage` by keyword
            fn(stage=stage)
        model.setup(stage=stage)
        if module_overrides(model, "configure_model"):  # Lightning: after setup, before configure_optimizers
            t.strategy.configure_model(model)
        # anomaly mode is scoped to the run, as in Lightning: it slows every later backward
        torch.autograd.set_detect_anomaly(bool(t.detect_anomaly) or self._anomaly)

    def __exit__(self, exc_type, exc, tb) -> bool:
        t, status, model = self.trainer, self.parts.status, self.module
        restore_signal_handlers(self._previous_signals)
        self._previous_signals = {}  # (the run stays on the Trainer, which ddp_spawn pickles)
        failed = exc_type is not None and not (exc_type is SystemExit and status.stop_signal)
        clearer = t.strategy.explain_error(exc) if failed else None
        if failed:
            self._on_exception(exc)
        for handle in self.step_counters:  # manual optimization's step counters end with the run
            handle.remove()
        self.step_counters = []
        try:
            if self.datamodule is not None and callable(getattr(self.datamodule, "teardown", None)):
                self.datamodule.teardown(stage=self.stage)  # Lightning: the datamodule's first
            for fn in self.callback_hooks["teardown"]:
                fn(stage=self.stage)
            model.teardown(stage=self.stage)
        finally:
            # after the callbacks' teardown (ModelCheckpoint waits for its saves there): the
            # strategy unwraps the model and releases what it built for this stage
            t.strategy.teardown()
            self._close_loggers(failed)
            status.stage = None
            # Lightning: any error or a stop signal leaves the Trainer interrupted
            status.run_status = "interrupted" if exc_type is not None or status.stop_signal else "finished"
            torch.autograd.set_detect_anomaly(self._anomaly)
            if t.settings.profiling:
                profiling.end_run(t.profiler, failed)
        if clearer is not None:
            raise clearer from exc  # torch's own message stays in the traceback, as the cause
        if exc_type is KeyboardInterrupt and status.stop_signal is None:
            # raised in the run (user code), not our Ctrl-C handling (stage_signals.py): as in
            # Lightning, the hooks ran above, the Trainer is interrupted, the process exits with 1
            if t.is_global_zero:
                print("distengine: KeyboardInterrupt during the run; stopped after on_exception and teardown",
                      file=sys.stderr, flush=True)
            raise SystemExit(1) from exc
        return False

    def _on_exception(self, exc: BaseException) -> None:
        """Lightning's ``on_exception``: each callback's, then the datamodule's, once per failed call."""
        fns = list(self.hooks.get("on_exception", ()))
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and callable(getattr(dm, "on_exception", None)):
            fns.append(dm.on_exception)
        for fn in fns:
            try:
                fn(exc)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass

    def _close_loggers(self, failed: bool) -> None:
        t = self.trainer
        if not t.is_global_zero:
            return
        if self.stage == "fit":
            status = "failed" if failed else ("interrupted" if self.parts.status.stop_signal else "success")
            for lg in t.loggers:
                lg.finalize(status)
        else:
            for lg in t.loggers:
                lg.save()  # flush what validate/test wrote
