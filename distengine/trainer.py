"""`Trainer`: the flags, ``fit``/``validate``/``test``/``predict``, and the wiring of the parts.

Example::

    trainer = distengine.Trainer(max_epochs=5, precision="bf16-mixed")
    trainer.fit(model, train_loader, val_loader)

Where it runs: inside a launched job (``distengine launch``, torchrun, SLURM) every process
is one rank: the Trainer joins the process group, shards the data and wraps the model in
DDP. Started with plain ``python train.py`` and ``devices=N>1``, ``fit`` re-runs the script
under ``distengine launch`` (the code before ``fit`` runs once more in each rank); with
``strategy="ddp_notebook"`` or ``"ddp_spawn"`` (a notebook, ``python -c``) it starts the ranks
from this interpreter and brings rank 0's results back (trainer_processes.py). Otherwise it
trains in this process on one device: the debugging mode where ``pdb`` works.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch

from distengine import loop
from distengine.callbacks.finders import run_finder_callbacks
from distengine.compat_flags import OneXTrainerMixin, accepts_1x_flags
from distengine.config import TrainerConfig
from distengine.loop_context import FitData, LoopFlags, LoopState
from distengine.metric_writer import MetricWriter
from distengine.metrics import Results
from distengine.module import Module, module_overrides
from distengine.precision import Precision
from distengine.settings import Settings, apply_settings, fit_max_epochs, resolve_settings
from distengine.state import Progress, ResumePoint, TrainerStatus
from distengine.stop_vote import StopVote
from distengine.strategies import Strategy
from distengine.trainer_parts import CheckpointMixin
from distengine.trainer_processes import ProcessesMixin
from distengine.trainer_props import TrainerProperties
from distengine.trainer_run import RunMixin
from distengine.utilities.argparse import _defaults_from_env_vars
from distengine.utilities.exceptions import ConfigError


class Trainer(TrainerProperties, RunMixin, ProcessesMixin, CheckpointMixin, OneXTrainerMixin):
    """Runs the loops for a :class:`distengine.Module`. Flags use Lightning 2.x names; ``gpus``
    and the other 1.x flags are translated by :mod:`distengine.compat_flags` (which also adds
    ``add_argparse_args``/``from_argparse_args``/``parse_argparser`` and ``trainer.tuner``).

    distengine-specific flags: ``on_nonfinite_loss`` ("error": stop with an error naming the
    step and rank; "skip": skip optimizer steps whose gradients are not finite; "ignore"),
    ``dist_timeout`` (process-group timeout in seconds; default ``DISTENGINE_TIMEOUT`` or
    1800) and ``find_unused_parameters`` (passed to DDP). ``plugins``: a cluster environment
    and/or a precision plugin (:mod:`distengine.plugins`).
    """

    @_defaults_from_env_vars  # PL_TRAINER_MAX_EPOCHS=3 etc. (utilities/argparse.py)
    @accepts_1x_flags
    def __init__(self, *, accelerator: str = "auto", strategy: str | Strategy = "auto", devices: Any = "auto",
                 num_nodes: int = 1, precision: Any = "32-true", logger: Any = None,
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
                 gpus: Any = None, profiler: Any = None, plugins: Any = None, barebones: bool = False) -> None:
        # the flags as given, kept whole: the tuner builds its trial Trainers from them
        self.config = TrainerConfig(**{k: v for k, v in locals().items() if k != "self"})
        self._flags = LoopFlags()  # the flags the loop reads (max_epochs, ...: see trainer_props._Flag)
        self._loop_state = LoopState()  # what the loop writes: should_stop, the last loss, ...
        self.settings: Settings = resolve_settings(self.config)  # every flag checked (one-line errors), resolved once
        apply_settings(self, self.settings)  # the Trainer's starting state: flags Lightning lets code change later
        self.progress = Progress()
        self._status = TrainerStatus()
        self._results = Results()
        self._writer = MetricWriter(self._loggers, self._profiler, self._results, self.progress, self._status,
                                    self._loop_state, self._flags, self.env)
        self._stop_vote: StopVote | None = None
        self._setup_done = False
        self._module: Module | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[Any] = []
        self.datamodule: Any = None
        self._resume = ResumePoint()  # where the epoch started; the RNG state a resume applies
        self._data = FitData()  # the fit's loaders and batch counts
        self._precision: Precision | None = None
        self._optimization = None  # how fit optimises each batch (distengine/optimization/)
        self._step_counters: list[Any] = []  # optimizer hooks counting manual steps
        self._ckpt_path: str | None = None  # the checkpoint the current/last call loaded (trainer.ckpt_path)
        self._ckpt_path_set: str | None = None  # `trainer.ckpt_path = ...`: the checkpoint the next calls load

    # ------------------------------------------------------------------ public entry points
    def fit(self, model: Module, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Any = None, ckpt_path: str | None = None) -> None:
        """Train ``model``. ``ckpt_path`` may be a file or ``"last"`` (the newest checkpoint in
        the checkpoint folder; a fresh start when there is none). A restarted or requeued job
        resumes from ``"last"`` by itself."""
        self._check_module(model, "fit")
        self.max_epochs = fit_max_epochs(self.max_epochs, self.max_steps, self.callbacks)  # None: 1000 or -1, now
        if self._launch_if_needed():  # ddp_notebook/ddp_spawn: the ranks are started from here
            return self._run_in_processes("fit", (model, train_dataloaders, val_dataloaders, datamodule, ckpt_path))
        self._tune_in_fit(model, train_dataloaders, val_dataloaders, datamodule)
        run_finder_callbacks(self, model, train_dataloaders if datamodule is None else datamodule, val_dataloaders)
        ckpt_path = ckpt_path or self._ckpt_path_set or self.resume_from_checkpoint
        if ckpt_path is None and self.env.restart_count > 0:
            ckpt_path = "last"
        with self._run("fit", model):
            if datamodule is None and hasattr(train_dataloaders, "train_dataloader"):
                datamodule, train_dataloaders = train_dataloaders, None  # fit(model, dm), as Lightning allows
            train = self._resolve_loader(train_dataloaders, datamodule, "train")
            # Lightning calls val_dataloader() in the sanity check (trainer.sanity_checking set), else at
            # the start of training when the first epoch validates, else at the first validating epoch
            val = self._resolve_loader(val_dataloaders, datamodule, "val", required=False, defer=True)
            self._setup_fit(train, val)
            self._restore(ckpt_path)
            if self.is_global_zero:
                hp = dict(self._module.hparams)
                if hp and getattr(self._module, "_log_hyperparams", True):
                    for lg in self._loggers:
                        lg.log_hyperparams(hp)
            for fn in self._hooks["on_fit_start"]:
                fn()
            self._module.zero_grad()  # as Lightning does before a stage's loop
            loop.fit_loop(self._loop_context())
            self._finish_signal_stop()
            for fn in self._hooks["on_fit_end"]:
                fn()

    def validate(self, model: Module | None = None, dataloaders: Any = None, datamodule: Any = None,
                 ckpt_path: str | None = None, verbose: bool = True) -> list[dict[str, float]]:
        """Run one validation epoch; returns one dict of rank-reduced metrics per dataloader.
        ``verbose``: global rank zero prints them as a table (distengine/results_table.py)."""
        return self._print_results(self._evaluate("validate", model, dataloaders, datamodule, ckpt_path),
                                   "validate", verbose)

    def test(self, model: Module | None = None, dataloaders: Any = None, datamodule: Any = None,
             ckpt_path: str | None = None, verbose: bool = True,
             test_dataloaders: Any = None) -> list[dict[str, float]]:
        """Run one test epoch; returns one dict of rank-reduced metrics per dataloader
        (``test_dataloaders=`` is the 1.x name of ``dataloaders``); printed as with ``validate``."""
        given = test_dataloaders if dataloaders is None else dataloaders  # (no truth test: it calls len())
        return self._print_results(self._evaluate("test", model, given, datamodule, ckpt_path), "test", verbose)

    def predict(self, model: Module | None = None, dataloaders: Any = None, datamodule: Any = None,
                ckpt_path: str | None = None, return_predictions: bool | None = None) -> list[Any] | None:
        """Return ``predict_step`` outputs in dataset order, gathered from every rank (a list
        per dataloader when there are several); ``None`` with ``return_predictions=False``
        (Lightning's flag, for runs whose callbacks write the predictions themselves)."""
        self.predict_loop.return_predictions = return_predictions is not False  # False: no gather
        out = self._evaluate("predict", model, dataloaders, datamodule, ckpt_path)
        if return_predictions is False:
            return None
        return out[0] if len(out) == 1 else out

    def tune(self, model: Module, train_dataloaders: Any = None, val_dataloaders: Any = None,
             **kwargs: Any) -> dict[str, Any]:
        """1.x spelling: run the LR finder / batch-size finder chosen by ``auto_lr_find`` and
        ``auto_scale_batch_size``."""
        from distengine.tuner import tune

        self._tuned = True  # fit does not run the finders again (see compat_flags._tune_in_fit)
        return tune(self, model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, **kwargs)

    def _print_results(self, results: list[dict[str, float]], stage: str, verbose: bool) -> list[dict[str, float]]:
        if verbose and self.is_global_zero:
            from distengine.results_table import print_results

            print_results(results, stage)
        return results

    # ------------------------------------------------------------------ checks and launch
    def _check_module(self, model: Any, stage: str) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"Trainer.{stage} needs a distengine.Module (LightningModule), got {type(model).__name__}")
        need = {"fit": "training_step", "validate": "validation_step", "test": "test_step"}.get(stage)
        if need and not module_overrides(model, need):
            raise ConfigError(f"{type(model).__name__} does not define {need}(); Trainer.{stage} needs it")
        if stage == "fit" and not module_overrides(model, "configure_optimizers"):
            raise ConfigError(f"{type(model).__name__} does not define configure_optimizers(); "
                              "return an optimizer from it")

