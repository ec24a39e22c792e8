"""The Trainer's flags as one dataclass, their validation, and what a tuner trial inherits.

``Trainer(**flags)`` keeps ``trainer.config`` (a :class:`TrainerConfig`, the flags as given
after the 1.x translation) and :func:`apply_config` checks them and sets the Trainer's
attributes. The tuner builds its trial Trainer from the same config (:func:`trial_flags`):
every flag is copied except the few a trial sets itself (:data:`TRIAL_OVERRIDES`) or must not
inherit (:data:`TRIAL_DROPPED`), so a new flag reaches the trial without anyone remembering it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from distengine.utilities.exceptions import ConfigError

# the trial's own values (max_steps and callbacks are the tuner's arguments)
TRIAL_OVERRIDES: dict[str, Any] = {
    "max_epochs": -1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
    "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
    # "skip" so that a diverging sweep ends the trial instead of raising
    "on_nonfinite_loss": "skip",
}
# flags about the length, evaluation, logging or debugging of the user's run, not how one step
# computes: a trial runs its own fixed number of steps without them
TRIAL_DROPPED = frozenset({"fast_dev_run", "min_epochs", "min_steps", "max_time", "limit_train_batches",
                           "limit_test_batches", "limit_predict_batches", "overfit_batches", "val_check_interval",
                           "check_val_every_n_epoch", "log_every_n_steps", "detect_anomaly", "profiler",
                           "barebones"})


@dataclass(frozen=True)
class TrainerConfig:
    """Every ``Trainer.__init__`` flag, as given (the same names and defaults)."""
    accelerator: str = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    logger: Any = None
    callbacks: Any = None
    fast_dev_run: Any = False
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    detect_anomaly: bool = False
    sync_batchnorm: bool = False
    default_root_dir: str | None = None
    compile: bool = False
    on_nonfinite_loss: str = "error"
    dist_timeout: float | timedelta | None = None
    find_unused_parameters: bool = False
    gpus: Any = None
    profiler: Any = None
    plugins: Any = None
    barebones: bool = False


def trial_flags(config: TrainerConfig, max_steps: int, callbacks: list[Any]) -> dict[str, Any]:
    """The flags of a tuner trial Trainer: ``config``'s hardware, precision and optimization
    flags (every flag not overridden or dropped), a fixed ``max_steps``, and ``callbacks``."""
    from distengine.strategies import Strategy

    flags = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in TRIAL_DROPPED}
    if isinstance(flags["strategy"], Strategy):  # the same options, not the user's (set-up) instance
        flags["strategy"] = flags["strategy"].fresh()
    flags.update(TRIAL_OVERRIDES, max_steps=max_steps, callbacks=callbacks)
    return flags


def apply_config(t: Any, c: TrainerConfig) -> None:
    """Check the flags (one-line errors, before anything runs) and set the Trainer's attributes."""
    from distengine.barebones import apply_barebones
    from distengine.callbacks.build import build_callbacks, build_loggers
    from distengine.distributed.devices import resolve_devices
    from distengine.distributed.env import detect
    from distengine.flags import check_numeric_flags, log_batch_flag_choices
    from distengine.plugins import cluster_env_from_plugin, resolve_plugins
    from distengine.precision import normalize_precision
    from distengine.profilers import wiring as profiling
    from distengine.strategies import resolve_strategy

    t.barebones = c.barebones
    c = apply_barebones(c)  # (barebones.py: the features it turns off)
    # every numeric flag is checked (and normalised) before anything else happens
    f = check_numeric_flags(
        max_epochs=c.max_epochs, min_epochs=c.min_epochs, max_steps=c.max_steps, min_steps=c.min_steps,
        max_time=c.max_time, limit_train_batches=c.limit_train_batches, limit_val_batches=c.limit_val_batches,
        limit_test_batches=c.limit_test_batches, limit_predict_batches=c.limit_predict_batches,
        overfit_batches=c.overfit_batches, val_check_interval=c.val_check_interval,
        check_val_every_n_epoch=c.check_val_every_n_epoch, log_every_n_steps=c.log_every_n_steps,
        accumulate_grad_batches=c.accumulate_grad_batches, gradient_clip_val=c.gradient_clip_val,
        num_sanity_val_steps=c.num_sanity_val_steps, fast_dev_run=c.fast_dev_run)
    max_epochs, min_epochs, max_steps, min_steps = f["max_epochs"], f["min_epochs"], f["max_steps"], f["min_steps"]
    fast_dev_run, detect_anomaly = f["fast_dev_run"], c.detect_anomaly
    if not fast_dev_run:  # (fast_dev_run sets every limit itself)
        log_batch_flag_choices({k: getattr(c, k) for k in (
            "limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
            "overfit_batches", "val_check_interval")})
    if os.environ.get("DISTENGINE_DEBUG") == "1" and not fast_dev_run:
        fast_dev_run, detect_anomaly = 3, True
    env_plugin, plugin_precision = resolve_plugins(c.plugins)
    t.env = detect() if env_plugin is None else cluster_env_from_plugin(env_plugin, c.devices, int(c.num_nodes))
    t.accelerator, t._devices, t._gpu_ids = resolve_devices(c.accelerator, c.devices, c.gpus, t.env)
    t.num_nodes = int(c.num_nodes)
    if env_plugin is not None and t.env.distributed:
        env_plugin.validate_settings(t._devices, t.num_nodes)
    if plugin_precision is not None and normalize_precision(c.precision) != "32-true":
        raise ConfigError(f"Trainer got both precision={c.precision!r} and a precision plugin "
                          f"({plugin_precision!r}); choose one")
    t.precision = normalize_precision(plugin_precision or c.precision)
    t._strategy = resolve_strategy(c.strategy, t.env.distributed, c.find_unused_parameters,
                                   t._devices if t.num_nodes == 1 else 1)
    n_fast = int((1 if fast_dev_run is True else fast_dev_run) or 0)
    t.fast_dev_run = True if n_fast == 1 else n_fast  # Lightning: fast_dev_run=1 reads back as True
    t._max_epochs_defaulted = max_epochs is None and max_steps == -1 and c.max_time is None and not t.fast_dev_run
    _check_min_max(min_epochs, max_epochs, min_steps, max_steps)
    t.max_epochs = 1 if t.fast_dev_run else max_epochs  # None (not given) is decided when a fit starts
    t.min_epochs, t.max_steps, t.min_steps = max(min_epochs or 0, 0), max_steps, max(min_steps or 0, 0)
    t.accumulate_grad_batches = f["accumulate_grad_batches"]
    if c.gradient_clip_algorithm not in (None, "norm", "value"):
        raise ConfigError(f"gradient_clip_algorithm must be 'norm' or 'value', got {c.gradient_clip_algorithm!r}")
    t.gradient_clip_val, t.gradient_clip_algorithm = c.gradient_clip_val, c.gradient_clip_algorithm or "norm"
    if c.on_nonfinite_loss not in ("error", "skip", "ignore"):
        raise ConfigError(f"on_nonfinite_loss must be 'error', 'skip' or 'ignore', got {c.on_nonfinite_loss!r}")
    t.on_nonfinite_loss = c.on_nonfinite_loss
    t.limits = {"train": f["limit_train_batches"], "val": f["limit_val_batches"],
                "test": f["limit_test_batches"], "predict": f["limit_predict_batches"]}
    t.overfit_batches = f["overfit_batches"]
    num_sanity_val_steps, logger, enable_checkpointing = f["num_sanity_val_steps"], c.logger, c.enable_checkpointing
    if t.fast_dev_run:
        t.limits = dict.fromkeys(t.limits, n_fast)
        num_sanity_val_steps, t.max_steps, enable_checkpointing, logger = 0, n_fast, False, _fast_dev_run_logger(logger)
    if t.overfit_batches:
        t.limits["train"] = t.limits["val"] = t.overfit_batches
    _set_eval_flags(t, f, num_sanity_val_steps)
    # "~/runs" is the user's home, as in Lightning
    t.ckpt_path = t._ckpt_path_asked = None  # the checkpoint the latest fit resumed from (and the fit's argument)
    t.default_root_dir = os.path.normpath(os.path.expanduser(os.fspath(c.default_root_dir or os.getcwd())))
    t.deterministic, t.benchmark, t.detect_anomaly = c.deterministic, c.benchmark, detect_anomaly
    t.inference_mode, t.sync_batchnorm, t.compile = c.inference_mode, c.sync_batchnorm, c.compile
    t.use_distributed_sampler, t.dist_timeout = c.use_distributed_sampler, c.dist_timeout
    t._profiler, t._profiling = profiling.resolve(c.profiler)
    t._loggers = build_loggers(True if logger is None else logger, t.default_root_dir)  # None: the default
    if c.enable_checkpointing is False and _has_checkpoint_callback(c.callbacks):  # Lightning refuses it too
        raise ConfigError("Trainer(enable_checkpointing=False) but callbacks has a ModelCheckpoint; "
                          "remove one of them")
    t.callbacks = build_callbacks(c.callbacks, c.max_time, enable_checkpointing is not False,
                                  c.enable_progress_bar is not False,
                                  c.enable_model_summary is not False and not t.fast_dev_run)


def _fast_dev_run_logger(logger: Any) -> Any:
    """Lightning: under fast_dev_run a logger that writes nothing stands in for the loggers."""
    if logger is False or logger in ([], ()):
        return False
    from distengine.loggers.logger import DummyLogger

    return [DummyLogger()]


def _set_eval_flags(t: Any, f: dict[str, Any], num_sanity_val_steps: Any) -> None:
    """val_check_interval, check_val_every_n_epoch (fast_dev_run: every epoch, at its end; None:
    no epoch gate, the interval counts batches over the run, so a fraction makes no sense),
    num_sanity_val_steps (-1 reads back as float("inf"), as in Lightning) and log_every_n_steps
    (0 writes no step metrics; they still reach callback_metrics)."""
    t.val_check_interval = 1.0 if t.fast_dev_run else f["val_check_interval"]
    t.check_val_every_n_epoch = 1 if t.fast_dev_run else f["check_val_every_n_epoch"]
    if t.check_val_every_n_epoch is None and isinstance(t.val_check_interval, float):
        raise ConfigError(f"Trainer(val_check_interval={t.val_check_interval}, check_val_every_n_epoch=None): "
                          "without an epoch gate the interval must be a whole number of batches or a duration; "
                          "for example val_check_interval=1000")
    t.num_sanity_val_steps = 2 if num_sanity_val_steps is None else \
        float("inf") if num_sanity_val_steps == -1 else num_sanity_val_steps
    t.log_every_n_steps = 50 if f["log_every_n_steps"] is None else f["log_every_n_steps"]


def resolve_max_epochs(t: Any) -> None:
    """Lightning decides a ``max_epochs`` left unset when a fit starts (until then the Trainer
    reads it back as None): 1000 epochs (with a warning, run_warnings.py), or no epoch limit
    (-1) when ``max_steps`` or a Timer (``max_time``) bounds the run."""
    if t.max_epochs is None:
        from distengine.callbacks.timer import Timer

        timer = any(isinstance(cb, Timer) for cb in t.callbacks)
        t.max_epochs = 1000 if t.max_steps == -1 and not timer else -1


def _check_min_max(min_epochs: Any, max_epochs: Any, min_steps: Any, max_steps: int) -> None:
    if min_epochs is not None and max_epochs is not None and max_epochs >= 0 and min_epochs > max_epochs:
        raise ConfigError(f"min_epochs={min_epochs} is larger than max_epochs={max_epochs}; "
                          "raise max_epochs or lower min_epochs")
    if min_steps is not None and max_steps >= 0 and min_steps > max_steps:
        raise ConfigError(f"min_steps={min_steps} is larger than max_steps={max_steps}; "
                          "raise max_steps or lower min_steps")


def _has_checkpoint_callback(callbacks: Any) -> bool:
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    given = callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
    return any(isinstance(cb, ModelCheckpoint) for cb in given)
