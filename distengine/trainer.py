"""`Trainer`: the flags, ``fit``/``validate``/``test``/``predict``, and the wiring of the parts.

Example::

    trainer = distengine.Trainer(max_epochs=5, precision="bf16-mixed")
    trainer.fit(model, train_loader, val_loader)

Where it runs: inside a launched job (``distengine launch``, torchrun, SLURM) every process
is one rank: the Trainer joins the process group, shards the data and wraps the model in
DDP. Started with plain ``python train.py`` and ``devices=N>1``, ``fit`` re-runs the script
under ``distengine launch`` (the code before ``fit`` runs once more in each rank). Otherwise
it trains in this process on one device: the debugging mode where ``pdb`` works.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any, Iterable

import torch

from distengine import compat, loop, metric_writer
from distengine.callbacks.base import CALLBACK_HOOKS, Callback, HookDispatcher
from distengine.callbacks.finders import run_finder_callbacks
from distengine.compat_flags import OneXTrainerMixin, accepts_1x_flags
from distengine.dist import collectives
from distengine.dist.devices import resolve_devices
from distengine.dist.env import ClusterEnv, detect
from distengine.flags import check_numeric_flags
from distengine.metrics import Results
from distengine.module import MODULE_HOOKS, Module, module_overrides
from distengine.precision import Precision, normalize_precision
from distengine.profilers import wiring as profiling
from distengine.state import Progress, TrainerStatus
from distengine.trainer_parts import CheckpointMixin, StopVote

_ONE_X_HOOKS = {"on_train_epoch_start": "on_epoch_start", "on_train_epoch_end": "on_epoch_end",
                "on_train_batch_start": "on_batch_start", "on_train_batch_end": "on_batch_end"}
_STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None),
                                  getattr(signal, "SIGUSR2", None)) if s is not None)


class Trainer(CheckpointMixin, OneXTrainerMixin):
    """Runs the loops for a :class:`distengine.Module`. Flags use Lightning 2.x names; ``gpus``
    and the other 1.x flags are translated by :mod:`distengine.compat_flags` (which also adds
    ``add_argparse_args``/``from_argparse_args``/``parse_argparser`` and ``trainer.tuner``).

    distengine-specific flags: ``on_nonfinite_loss`` ("error": stop with an error naming the
    step and rank; "skip": skip optimizer steps whose gradients are not finite; "ignore"),
    ``dist_timeout`` (process-group timeout in seconds; default ``DISTENGINE_TIMEOUT`` or
    1800) and ``find_unused_parameters`` (passed to DDP).
    """

    @accepts_1x_flags
    def __init__(self, *, accelerator: str = "auto", strategy: str = "auto", devices: Any = "auto",
                 num_nodes: int = 1, precision: Any = "32-true", logger: Any = True,
                 callbacks: Any = None, fast_dev_run: Any = False, max_epochs: int | None = None,
                 min_epochs: int | None = None, max_steps: int = -1, min_steps: int | None = None,
                 max_time: Any = None, limit_train_batches: Any = None, limit_val_batches: Any = None,
                 limit_test_batches: Any = None, limit_predict_batches: Any = None,
                 overfit_batches: Any = 0.0, val_check_interval: Any = None,
                 check_val_every_n_epoch: int = 1, num_sanity_val_steps: int | None = None,
                 log_every_n_steps: int | None = None, enable_checkpointing: bool | None = None,
                 enable_progress_bar: bool | None = None, enable_model_summary: bool | None = None,
                 accumulate_grad_batches: int = 1, gradient_clip_val: float | None = None,
                 gradient_clip_algorithm: str | None = None, deterministic: Any = None,
                 benchmark: bool | None = None, inference_mode: bool = True,
                 use_distributed_sampler: bool = True, detect_anomaly: bool = False,
                 sync_batchnorm: bool = False, default_root_dir: str | None = None,
                 compile: bool = False, on_nonfinite_loss: str = "error",
                 dist_timeout: float | timedelta | None = None, find_unused_parameters: bool = False,
                 gpus: Any = None, profiler: Any = None) -> None:
        # every numeric flag is checked (and normalised) before anything else happens
        flags = check_numeric_flags(
            max_epochs=max_epochs, min_epochs=min_epochs, max_steps=max_steps, min_steps=min_steps,
            max_time=max_time, limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
            overfit_batches=overfit_batches, val_check_interval=val_check_interval,
            check_val_every_n_epoch=check_val_every_n_epoch, log_every_n_steps=log_every_n_steps,
            accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
            num_sanity_val_steps=num_sanity_val_steps, fast_dev_run=fast_dev_run)
        max_epochs, min_epochs, max_steps, min_steps = (flags[k] for k in ("max_epochs", "min_epochs",
                                                                             "max_steps", "min_steps"))
        limit_train_batches, limit_val_batches = flags["limit_train_batches"], flags["limit_val_batches"]
        limit_test_batches, limit_predict_batches = flags["limit_test_batches"], flags["limit_predict_batches"]
        overfit_batches, val_check_interval = flags["overfit_batches"], flags["val_check_interval"]
        check_val_every_n_epoch, log_every_n_steps = flags["check_val_every_n_epoch"], flags["log_every_n_steps"]
        accumulate_grad_batches, num_sanity_val_steps = flags["accumulate_grad_batches"], flags["num_sanity_val_steps"]
        fast_dev_run = flags["fast_dev_run"]
        debug = os.environ.get("DISTENGINE_DEBUG") == "1"
        if debug and not fast_dev_run:
            fast_dev_run, detect_anomaly = 3, True
        self.env: ClusterEnv = detect()
        self.accelerator, self._devices, self._gpu_ids = resolve_devices(accelerator, devices, gpus, self.env)
        self.num_nodes = int(num_nodes)
        self.precision = normalize_precision(precision)
        if strategy not in ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", None):
            raise ValueError(f"strategy={strategy!r} is not supported; distengine runs DDP ('auto' or 'ddp')")
        self.find_unused_parameters = find_unused_parameters or strategy == "ddp_find_unused_parameters_true"
        if fast_dev_run is True:
            fast_dev_run = 1
        self.fast_dev_run = int(fast_dev_run or 0)
        if max_epochs is None and max_steps == -1 and max_time is None:
            max_epochs = 1 if self.fast_dev_run else 1000
        if min_epochs is not None and max_epochs is not None and max_epochs >= 0 and min_epochs > max_epochs:
            raise ValueError(f"min_epochs={min_epochs} is larger than max_epochs={max_epochs}; "
                             "raise max_epochs or lower min_epochs")
        if min_steps is not None and max_steps >= 0 and min_steps > max_steps:
            raise ValueError(f"min_steps={min_steps} is larger than max_steps={max_steps}; "
                             "raise max_steps or lower min_steps")
        self.max_epochs = -1 if max_epochs is None else max_epochs
        self.min_epochs, self.max_steps, self.min_steps = max(min_epochs or 0, 0), max_steps, max(min_steps or 0, 0)
        self.accumulate_grad_batches = accumulate_grad_batches
        if gradient_clip_algorithm not in (None, "norm", "value"):
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}")
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm or "norm"
        if on_nonfinite_loss not in ("error", "skip", "ignore"):
            raise ValueError(f"on_nonfinite_loss must be 'error', 'skip' or 'ignore', got {on_nonfinite_loss!r}")
        self.on_nonfinite_loss = on_nonfinite_loss
        self.limits = {"train": limit_train_batches, "val": limit_val_batches,
                       "test": limit_test_batches, "predict": limit_predict_batches}
        self.overfit_batches = overfit_batches
        if self.fast_dev_run:
            self.limits = dict.fromkeys(self.limits, self.fast_dev_run)
            num_sanity_val_steps, logger, self.max_epochs = 0, False, 1
            enable_checkpointing = False
        if overfit_batches:
            self.limits["train"] = self.limits["val"] = overfit_batches
        self.val_check_interval = val_check_interval
        self.check_val_every_n_epoch = check_val_every_n_epoch or 1
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        # Lightning: 0 writes no step metrics at all (they still reach callback_metrics)
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        self.default_root_dir = os.fspath(default_root_dir or os.getcwd())
        self.deterministic, self.benchmark, self.detect_anomaly = deterministic, benchmark, detect_anomaly
        self.inference_mode, self.sync_batchnorm, self.compile = inference_mode, sync_batchnorm, compile
        self.use_distributed_sampler = use_distributed_sampler
        self.dist_timeout = dist_timeout
        self._profiler, self._profiling = profiling.resolve(profiler)
        self._loggers = self._build_loggers(logger)
        self.callbacks = self._build_callbacks(
            callbacks, max_time, enable_checkpointing is not False,
            enable_progress_bar is not False,
            enable_model_summary is not False and not self.fast_dev_run)
        self.progress = Progress()
        self._status = TrainerStatus()
        self._results = Results()
        self._stop_vote: StopVote | None = None
        self._stop_now = False
        self._setup_done = False
        self._module: Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[Any] = []
        self._pending_rng = None
        self.datamodule: Any = None
        self._rng_after_iter = True
        self._train_loader: Any = None
        self._train_sampler = None
        self._val_loaders: list[Any] = []
        self._precision: Precision | None = None
        self._epoch_start_sample = self._epoch_start_batch = 0
        self._train_outputs = None
        self._last_loss = None
        self._skipped_nonfinite = 0
        self._nonfinite_watch = None
        self._step_fn: Any = None  # what the loop calls with (batch, batch_idx): see _setup_fit
        self._manual_ddp = None  # dist.setup.ManualDDPStep under DDP with manual optimization
        self._one_x = None  # compat.OneXOptimization for 1.x several-optimizer modules
        self._step_counters: list[Any] = []  # optimizer hooks counting manual steps
        self.should_stop = False
        self.logged_metrics: dict[str, float] = {}
        self._stopped_in_epoch = False

    # ------------------------------------------------------------------ read-only state
    @property
    def global_step(self) -> int:
        return self.progress.global_step

    @property
    def current_epoch(self) -> int:
        # A fit that stopped early (EarlyStopping, max_steps mid-epoch, a stop request) counts
        # the epoch it stopped in as finished, as Lightning does; `progress.epoch` keeps the
        # exact position, which is what a checkpoint stores and a resume continues from.
        return self.progress.epoch + self._stopped_in_epoch

    @property
    def global_rank(self) -> int:
        return self.env.rank

    @property
    def local_rank(self) -> int:
        return self.env.local_rank

    @property
    def node_rank(self) -> int:
        return self.env.node_rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def num_devices(self) -> int:
        return self._devices

    @property
    def is_global_zero(self) -> bool:
        return self.env.rank == 0

    @property
    def lightning_module(self) -> Module | None:
        return self._module

    @property
    def train_dataloader(self) -> Any:
        """The training loader of the current fit, as this rank iterates it (sharded)."""
        return getattr(self, "_train_loader", None)

    @property
    def model(self) -> Any:
        return getattr(self, "_model", None)

    @property
    def strategy(self) -> Trainer:
        """The object with the distributed helpers (``root_device``, ``barrier``, ``broadcast``,
        ``reduce_boolean_decision``); the Trainer itself plays that role."""
        return self

    @property
    def root_device(self) -> torch.device:
        return getattr(self, "_device", torch.device("cpu"))

    def barrier(self, name: str | None = None) -> None:
        collectives.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return collectives.broadcast_object(obj, src)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if all:
            return not collectives.any_rank(not decision, self._comm_device())
        return collectives.any_rank(decision, self._comm_device())

    def _comm_device(self) -> torch.device:
        return self.root_device if self.root_device.type == "cuda" else torch.device("cpu")

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @property
    def logger(self) -> Any:
        return self._loggers[0] if self._loggers else None

    @property
    def log_dir(self) -> str:
        if self.logger is not None and getattr(self.logger, "log_dir", None):
            return self.logger.log_dir
        return self.default_root_dir

    @property
    def profiler(self) -> Any:  # a PassThroughProfiler without Trainer(profiler=...), as in Lightning
        return self._profiler

    @property
    def sanity_checking(self) -> bool:
        return self._status.sanity_checking

    @property
    def training(self) -> bool:
        return self._status.stage == "fit" and self._results.stage == "train"

    @property
    def validating(self) -> bool:
        return self._results.stage == "validate" and self._status.stage in ("fit", "validate")

    @property
    def testing(self) -> bool:
        return self._status.stage == "test"

    @property
    def predicting(self) -> bool:
        return self._status.stage == "predict"

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Latest values of everything logged: local step values and rank-reduced epoch values."""
        out = self._results.step_metrics_now()
        out.update(self._results.epoch_values)
        return out

    def record_callback_metrics(self, values: dict[str, float]) -> None:
        """Add values a callback computed (for example learning rates) to ``callback_metrics``."""
        self._results.epoch_values.update({k: torch.tensor(v) for k, v in values.items()})

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The values logged with ``prog_bar=True`` (the bar shows the step's loss beside them)."""
        return self._results.prog_bar_now()

    @property
    def checkpoint_callbacks(self) -> list[Callback]:
        from distengine.callbacks.model_checkpoint import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Callback | None:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callback(self) -> Callback | None:
        from distengine.callbacks.early_stopping import EarlyStopping

        return next((c for c in self.callbacks if isinstance(c, EarlyStopping)), None)

    @property
    def num_training_batches(self) -> int | float:
        return getattr(self, "_num_train_batches", 0)

    @property
    def num_val_batches(self) -> list[int]:
        return list(getattr(self, "_num_val_batches", []))

    @property
    def num_sanity_val_batches(self) -> list[int]:
        return list(getattr(self, "_sanity_steps", []))

    @property
    def num_test_batches(self) -> list[int]:
        return list(self._eval_batches.get("test", [])) if hasattr(self, "_eval_batches") else []

    @property
    def num_predict_batches(self) -> list[int]:
        return list(self._eval_batches.get("predict", [])) if hasattr(self, "_eval_batches") else []

    @property
    def estimated_stepping_batches(self) -> int | float:
        from distengine.data import estimated_steps

        return estimated_steps(self.num_training_batches, self.accumulate_grad_batches, self.max_epochs, self.max_steps)

    @property
    def state(self) -> TrainerStatus:
        return self._status

    # ------------------------------------------------------------------ building
    def _build_loggers(self, logger: Any) -> list[Any]:
        if logger is True:
            try:
                from distengine.loggers.tensorboard import TensorBoardLogger

                return [TensorBoardLogger(self.default_root_dir)]
            except ImportError:
                from distengine.loggers.csv_logger import CSVLogger

                return [CSVLogger(self.default_root_dir)]
        if logger in (False, None):
            return []
        return list(logger) if isinstance(logger, (list, tuple)) else [logger]

    def _build_callbacks(self, callbacks: Any, max_time: Any, checkpointing: bool, progress: bool,
                         summary: bool) -> list[Callback]:
        cbs = list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be distengine.callbacks.Callback instances, got {type(cb).__name__}")
        if max_time is not None:
            from distengine.callbacks.timer import Timer

            cbs.append(Timer(duration=max_time, interval="step"))
        if summary:
            from distengine.callbacks.model_summary import ModelSummary

            if not any(isinstance(c, ModelSummary) for c in cbs):
                cbs.append(ModelSummary())
        from distengine.callbacks.progress import user_progress_bar

        if not user_progress_bar(cbs, progress) and progress and os.environ.get("DISTENGINE_NO_PROGRESS") != "1":
            from distengine.callbacks.tqdm_progress import TQDMProgressBar

            cbs.append(TQDMProgressBar())
        from distengine.callbacks.model_checkpoint import ModelCheckpoint

        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in cbs):
            cbs.append(ModelCheckpoint())
        # checkpoints go last so that they capture the state other callbacks just updated
        return [c for c in cbs if not isinstance(c, ModelCheckpoint)] + \
               [c for c in cbs if isinstance(c, ModelCheckpoint)]

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
            mod = tuple(getattr(module, n) for n in (name, _ONE_X_HOOKS.get(name))
                        if n and name in MODULE_HOOKS and module_overrides(module, n))
            self._callback_hooks[name], self._module_hooks[name] = cb, mod
            self._hooks[name] = cb + mod
        self._step_hook = compat.step_end_hook(module)
        self._training_end = compat.training_end_hook(module)
        self._collect_train_outputs = module_overrides(module, "training_epoch_end") \
            if hasattr(type(module), "training_epoch_end") else False
        if self._profiling:  # timed hooks; an unprofiled run calls the hooks themselves
            profiling.profiled_hooks(self)

    def _collect_eval_outputs(self, stage: str) -> bool:
        if stage == "predict":
            return True
        name = {"validate": "validation", "test": "test"}[stage]
        return hasattr(type(self._module), f"{name}_epoch_end") or (
            stage == "validate" and hasattr(type(self._module), "validation_end"))

    # ------------------------------------------------------------------ public entry points
    def fit(self, model: Module, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Any = None, ckpt_path: str | None = None) -> None:
        """Train ``model``. ``ckpt_path`` may be a file or ``"last"`` (the newest checkpoint in
        the checkpoint folder; a fresh start when there is none). A restarted or requeued job
        resumes from ``"last"`` by itself."""
        self._check_module(model, "fit")
        self._launch_if_needed()
        self._tune_in_fit(model, train_dataloaders, val_dataloaders, datamodule)
        run_finder_callbacks(self, model, train_dataloaders if datamodule is None else datamodule, val_dataloaders)
        ckpt_path = ckpt_path or self.resume_from_checkpoint
        if ckpt_path is None and self.env.restart_count > 0:
            ckpt_path = "last"
        with self._run("fit", model):
            if datamodule is None and hasattr(train_dataloaders, "train_dataloader"):
                datamodule, train_dataloaders = train_dataloaders, None  # fit(model, dm), as Lightning allows
            train = self._resolve_loader(train_dataloaders, datamodule, "train")
            val = self._resolve_loader(val_dataloaders, datamodule, "val", required=False)
            self._setup_fit(train, val)
            self._restore(ckpt_path)
            if self.is_global_zero:
                hp = dict(self._module.hparams)
                if hp and getattr(self._module, "_log_hyperparams", True):
                    for lg in self._loggers:
                        lg.log_hyperparams(hp)
            for fn in self._hooks["on_fit_start"]:
                fn()
            loop.fit_loop(self)
            self._finish_signal_stop()
            for fn in self._hooks["on_fit_end"]:
                fn()

    def validate(self, model: Module | None = None, dataloaders: Any = None, datamodule: Any = None,
                 ckpt_path: str | None = None, verbose: bool = True) -> list[dict[str, float]]:
        """Run one validation epoch; returns one dict of rank-reduced metrics per dataloader."""
        return self._evaluate("validate", model, dataloaders, datamodule, ckpt_path)

    def test(self, model: Module | None = None, dataloaders: Any = None, datamodule: Any = None,
             ckpt_path: str | None = None, verbose: bool = True,
             test_dataloaders: Any = None) -> list[dict[str, float]]:
        """Run one test epoch; returns one dict of rank-reduced metrics per dataloader
        (``test_dataloaders=`` is the 1.x name of ``dataloaders``)."""
        return self._evaluate("test", model, dataloaders or test_dataloaders, datamodule, ckpt_path)

    def predict(self, model: Module | None = None, dataloaders: Any = None, datamodule: Any = None,
                ckpt_path: str | None = None, return_predictions: bool | None = None) -> list[Any] | None:
        """Return ``predict_step`` outputs in dataset order, gathered from every rank (a list
        per dataloader when there are several); ``None`` with ``return_predictions=False``
        (Lightning's flag, for runs whose callbacks write the predictions themselves)."""
        out = self._evaluate("predict", model, dataloaders, datamodule, ckpt_path)
        if return_predictions is False:
            return None
        return out[0] if len(out) == 1 else out

    def tune(self, model: Module, train_dataloaders: Any = None, val_dataloaders: Any = None,
             **kwargs: Any) -> dict[str, Any]:
        """1.x spelling: run the LR finder / batch-size finder chosen by ``auto_lr_find`` and
        ``auto_scale_batch_size``."""
        from distengine.tuner import tune

        return tune(self, model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, **kwargs)

    # ------------------------------------------------------------------ checks and launch
    def _check_module(self, model: Any, stage: str) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"Trainer.{stage} needs a distengine.Module (LightningModule), got {type(model).__name__}")
        need = {"fit": "training_step", "validate": "validation_step", "test": "test_step"}.get(stage)
        if need and not module_overrides(model, need):
            raise ValueError(f"{type(model).__name__} does not define {need}(); Trainer.{stage} needs it")
        if stage == "fit" and not module_overrides(model, "configure_optimizers"):
            raise ValueError(f"{type(model).__name__} does not define configure_optimizers(); "
                             "return an optimizer from it")

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

    def __init__(self, trainer: Trainer, stage: str, model: Module) -> None:
        self.t, self.stage, self.model = trainer, stage, model

    def __enter__(self) -> Trainer:
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


def _iter_len(loader: Iterable) -> int | float:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return float("inf")
