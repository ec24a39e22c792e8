"""`Trainer`: the flags, ``fit``/``validate``/``test``/``predict``, and the wiring of the parts.

Example::

    trainer = distengine.Trainer(max_epochs=5, precision="bf16-mixed")
    trainer.fit(model, train_loader, val_loader)

Where it runs: inside a launched job (``distengine launch``, torchrun, SLURM) every process
is one rank: the Trainer joins the process group, shards the data and wraps the model in
DDP. Started with plain ``python train.py`` and ``devices=N>1``, ``fit`` re-runs the script
under ``distengine launch`` (the code before ``fit`` runs once more in each rank); with
``strategy="ddp_notebook"`` or ``"ddp_spawn"`` (a notebook, ``python -c``) it starts the ranks
from this interpreter and brings rank 0's results back (rank_launch.py). Otherwise it
trains in this process on one device: the debugging mode where ``pdb`` works.

The Trainer is a facade: the flags are resolved once into ``trainer.settings``
(settings.py); each call builds a :class:`~distengine.stage_run.StageRun` that owns the call's
hooks, data, precision, optimizers, stop vote and checkpoints and builds the loop's context; the
state that outlives a call is one :class:`~distengine.stage_run.TrainerParts`; Lightning's
properties are plain functions of the Trainer (trainer_view.py), each named below.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from distengine import compat_flags, rank_launch, run_warnings
from distengine import trainer_view as view
from distengine.callbacks.finders import run_finder_callbacks
from distengine.compat_flags import accepts_1x_flags
from distengine.config import TrainerConfig
from distengine.init_module import init_module
from distengine.loop_context import LoopFlags
from distengine.metric_writer import MetricWriter
from distengine.module import Module, module_overrides
from distengine.settings import Settings, apply_settings, fit_max_epochs, resolve_settings
from distengine.stage_run import StageRun, TrainerParts
from distengine.state import Progress
from distengine.strategies import Strategy
from distengine.utilities.argparse import _defaults_from_env_vars
from distengine.utilities.exceptions import ConfigError

_P = property


class Trainer:
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
        self.progress = Progress()
        self._parts = TrainerParts(self.progress, LoopFlags())  # what outlives a call (stage_run.py)
        self.settings: Settings = resolve_settings(self.config)  # every flag checked (one-line errors), resolved once
        apply_settings(self, self.settings)  # the Trainer's starting state: flags Lightning lets code change later
        parts = self._parts
        parts.writer = MetricWriter(self._loggers, self.profiler, parts.results, self.progress, parts.status,
                                    parts.loop_state, parts.flags, self.env)
        self._run: StageRun | None = None  # the current (or last) call
        self._module: Module | None = None
        self.optimizers: list[Any] = []
        self.lr_scheduler_configs: list[Any] = []
        self.datamodule: Any = None

    # ------------------------------------------------------------------ public entry points
    def fit(self, model: Module, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: Any = None, ckpt_path: str | None = None) -> None:
        """Train ``model``. ``ckpt_path`` may be a file or ``"last"`` (the newest checkpoint in
        the checkpoint folder; a fresh start when there is none). A restarted or requeued job
        resumes from ``"last"`` by itself."""
        self._check_module(model, "fit")
        self.max_epochs = fit_max_epochs(self.max_epochs, self.max_steps, self.callbacks)  # None: 1000 or -1, now
        if rank_launch.launch_if_needed(self):  # ddp_notebook/ddp_spawn: the ranks are started from here
            return rank_launch.run_in_processes(self, self._parts, "fit", (model, train_dataloaders, val_dataloaders,
                                                                          datamodule, ckpt_path))
        compat_flags.tune_in_fit(self, self._parts.status, model, train_dataloaders, val_dataloaders, datamodule)
        run_finder_callbacks(self, model, train_dataloaders if datamodule is None else datamodule, val_dataloaders)
        ckpt_path = ckpt_path or self._parts.paths.set_by_user or self.resume_from_checkpoint
        if ckpt_path is None and self.env.restart_count > 0:
            ckpt_path = "last"
        self._start("fit", model).fit(train_dataloaders, val_dataloaders, datamodule, ckpt_path)

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

        self._parts.status.tuned = True  # fit does not run the finders again (compat_flags.tune_in_fit)
        return tune(self, model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, **kwargs)

    def _print_results(self, results: list[dict[str, float]], stage: str, verbose: bool) -> list[dict[str, float]]:
        if verbose and self.is_global_zero:
            from distengine.results_table import print_results

            print_results(results, stage)
        return results

    def save_checkpoint(self, filepath: str, weights_only: bool = False, storage_options: Any = None) -> None:
        """Save a checkpoint. A collective: call it on every rank; global rank zero writes the
        file atomically (a temporary file, fsync, rename) and every rank waits for it."""
        if self._module is None:  # (an AttributeError, as in Lightning)
            raise AttributeError("Trainer.save_checkpoint needs a model: call fit/validate/test/predict with one first")
        self._checkpoints().save(filepath, weights_only)

    def dump_checkpoint(self, weights_only: bool = False, *, every_rank: bool = False) -> dict[str, Any] | None:
        """The checkpoint dictionary, as ``save_checkpoint`` writes it: on global rank zero (None
        on the others; ``every_rank``: on every rank, each with its own shards, for a sharded
        checkpoint). A collective: call it on every rank."""
        return self._checkpoints().checkpoint_dict(weights_only, every_rank)

    # ------------------------------------------------------------------ the calls' runs
    def _start(self, stage: str, model: Module) -> StageRun:
        self._module = model
        self._run = StageRun(self, self._parts, stage, model, previous=self._run)
        return self._run

    def _checkpoints(self) -> Any:
        """The checkpoints of the current or last call (after ranks started from here: a run
        that was never entered, over the module they brought back)."""
        run = self._run or StageRun(self, self._parts, self._parts.status.last_fn or "fit", self._module)
        return run.checkpoints

    def _evaluate(self, stage: str, model: Module | None, dataloaders: Any, datamodule: Any,
                  ckpt_path: str | None) -> list[Any]:
        provided, connected = model is not None, self._module is not None
        model = model if provided else self._module
        if model is None:
            raise TypeError(f"Trainer.{stage} needs a model: pass one, or call fit() first")  # (as Lightning)
        self._check_module(model, stage)
        if ckpt_path is None and self._parts.paths.set_by_user is None and not provided and connected:
            ckpt_path = "best"  # Lightning: the previous fit's best (decided here, before ranks are started)
            run_warnings.warn_best_model_used(stage)
        if rank_launch.launch_if_needed(self):  # ddp_notebook/ddp_spawn: the ranks are started from here
            return rank_launch.run_in_processes(self, self._parts, "_evaluate",
                                                (stage, model, dataloaders, datamodule, ckpt_path))
        return self._start(stage, model).evaluate(dataloaders, datamodule, ckpt_path)

    def _check_module(self, model: Any, stage: str) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"Trainer.{stage} needs a distengine.Module (LightningModule), got {type(model).__name__}")
        need = {"fit": "training_step", "validate": "validation_step", "test": "test_step"}.get(stage)
        if need and not module_overrides(model, need):
            raise ConfigError(f"{type(model).__name__} does not define {need}(); Trainer.{stage} needs it")
        if stage == "fit" and not module_overrides(model, "configure_optimizers"):
            raise ConfigError(f"{type(model).__name__} does not define configure_optimizers(); "
                              "return an optimizer from it")

    # ------------------------------------------------------------------ Lightning's state (trainer_view.py)
    limit_train_batches, limit_val_batches = view.Limit("train"), view.Limit("val")
    limit_test_batches, limit_predict_batches = view.Limit("test"), view.Limit("predict")
    should_stop, logged_metrics = _P(view.should_stop, view.set_should_stop), _P(view.logged_metrics)
    global_step, current_epoch, global_rank = _P(view.global_step), _P(view.current_epoch), _P(view.global_rank)
    local_rank, node_rank, world_size = _P(view.local_rank), _P(view.node_rank), _P(view.world_size)
    num_devices, device_ids, is_global_zero = _P(view.num_devices), _P(view.device_ids), _P(view.is_global_zero)
    lightning_module, train_dataloader = _P(view.lightning_module), _P(view.train_dataloader)
    val_dataloaders, test_dataloaders = _P(view.val_dataloaders), _P(view.test_dataloaders)
    predict_dataloaders, enable_validation = _P(view.predict_dataloaders), _P(view.enable_validation)
    is_last_batch, ckpt_path = _P(view.is_last_batch), _P(view.ckpt_path, view.set_ckpt_path)
    interrupted, model, strategy = _P(view.interrupted), _P(view.model), _P(view.strategy)
    find_unused_parameters, root_device = _P(view.find_unused_parameters), _P(view.root_device)
    loggers, logger, log_dir = _P(view.loggers), _P(view.logger), _P(view.log_dir)
    profiler, sanity_checking, training = _P(view.profiler), _P(view.sanity_checking), _P(view.training)
    validating, testing, predicting = _P(view.validating), _P(view.testing), _P(view.predicting)
    callback_metrics, progress_bar_metrics = _P(view.callback_metrics), _P(view.progress_bar_metrics)
    progress_bar_step_metrics, predict_loop = _P(view.progress_bar_step_metrics), _P(view.predict_loop)
    checkpoint_callbacks, checkpoint_callback = _P(view.checkpoint_callbacks), _P(view.checkpoint_callback)
    early_stopping_callbacks = _P(view.early_stopping_callbacks)
    early_stopping_callback, progress_bar_callback = _P(view.early_stopping_callback), _P(view.progress_bar_callback)
    num_training_batches, num_val_batches = _P(view.num_training_batches), _P(view.num_val_batches)
    num_sanity_val_batches, num_test_batches = _P(view.num_sanity_val_batches), _P(view.num_test_batches)
    num_predict_batches = _P(view.num_predict_batches)
    estimated_stepping_batches, state = _P(view.estimated_stepping_batches), _P(view.state)
    precision_plugin, fit_loop, metric_results = _P(view.precision_plugin), _P(view.fit_loop), _P(view.metric_results)
    barrier, broadcast, reduce_boolean_decision = view.barrier, view.broadcast, view.reduce_boolean_decision
    record_callback_metrics, log_metrics = view.record_callback_metrics, view.log_metrics
    # the 1.x class methods and trainer.tuner (compat_flags.py)
    add_argparse_args = classmethod(compat_flags.add_argparse_args)
    parse_argparser = classmethod(compat_flags.parse_argparser)
    from_argparse_args = classmethod(compat_flags.from_argparse_args)
    tuner = _P(compat_flags.tuner)
    init_module = init_module  # with trainer.init_module(empty_init=None): build a model on its device/dtype


for _name in LoopFlags.__dataclass_fields__:  # max_epochs, accumulate_grad_batches, ...: the loop reads them live
    setattr(Trainer, _name, view.Flag(_name))
del _name
