"""The Trainer's flags resolved once: :func:`resolve_settings` turns a
:class:`~distengine.config.TrainerConfig` (the flags as given, after the 1.x translation of
:mod:`distengine.compat_flags` and the ``PL_TRAINER_*`` environment defaults of
:mod:`distengine.utilities.argparse`) into one frozen :class:`Settings`.

Example::

    settings = resolve_settings(TrainerConfig(max_epochs=3, fast_dev_run=True))
    settings.max_epochs, settings.limits["train"]   # (1, 1)

Pure: the config in, the settings out; nothing is written anywhere else (the Trainer copies
the mutable ones, such as ``max_epochs`` or ``limit_val_batches``, into its own state, where
callbacks and ``trainer.fit_loop`` may change them). Every numeric flag is checked here, before
anything is built (one-line errors, :mod:`distengine.flags`), and each flag has one form:
``fast_dev_run`` sets the limits, ``max_steps`` and the sanity check itself; ``overfit_batches``
the train and val limits; ``num_sanity_val_steps=-1`` is ``inf``; ``max_epochs=None`` stays
``None`` until a fit decides it (:func:`fit_max_epochs`), as in Lightning.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

from distengine.config import TrainerConfig
from distengine.utilities.exceptions import ConfigError


class ReadOnlyDict(dict):
    """A dict that refuses changes (and, unlike ``MappingProxyType``, pickles: a Trainer is
    pickled into the ranks ``ddp_spawn`` starts)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Settings are read-only; change the Trainer's attribute instead (trainer.limit_val_batches)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return ReadOnlyDict, (dict(self),)


@dataclass(frozen=True)
class Settings:
    """Every Trainer flag, checked and in its one resolved form (see the module docstring)."""
    barebones: bool
    env: Any                         # distributed.env.DistEnv (or the cluster-environment plugin's)
    accelerator: str
    devices: Any
    gpu_ids: Any
    num_nodes: int
    precision: str
    strategy: Any                    # a strategies.Strategy
    fast_dev_run: bool | int
    max_epochs: int | None           # None: decided when a fit starts (fit_max_epochs)
    max_epochs_defaulted: bool       # nothing bounds the run: a fit takes 1000 epochs (with a warning)
    min_epochs: int
    max_steps: int
    min_steps: int
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str
    on_nonfinite_loss: str
    limits: Mapping[str, Any]        # train/val/test/predict: None (all), a fraction or a count
    overfit_batches: Any
    val_check_interval: Any
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int | float
    log_every_n_steps: int
    default_root_dir: str
    deterministic: Any
    benchmark: bool | None
    detect_anomaly: bool
    inference_mode: bool
    sync_batchnorm: bool
    compile: bool
    use_distributed_sampler: bool
    dist_timeout: float | timedelta | None
    profiler: Any
    profiling: bool
    loggers: tuple[Any, ...]
    callbacks: tuple[Any, ...]


def resolve_settings(c: TrainerConfig) -> Settings:
    """Check ``c``'s flags (one-line errors, before anything runs) and resolve them into :class:`Settings`."""
    from distengine.barebones import apply_barebones
    from distengine.callbacks.build import build_callbacks, build_loggers
    from distengine.flags import check_numeric_flags, log_batch_flag_choices
    from distengine.profilers import wiring as profiling

    barebones = c.barebones
    c = apply_barebones(c)  # (barebones.py: the features it turns off)
    f = check_numeric_flags(
        max_epochs=c.max_epochs, min_epochs=c.min_epochs, max_steps=c.max_steps, min_steps=c.min_steps,
        max_time=c.max_time, limit_train_batches=c.limit_train_batches, limit_val_batches=c.limit_val_batches,
        limit_test_batches=c.limit_test_batches, limit_predict_batches=c.limit_predict_batches,
        overfit_batches=c.overfit_batches, val_check_interval=c.val_check_interval,
        check_val_every_n_epoch=c.check_val_every_n_epoch, log_every_n_steps=c.log_every_n_steps,
        accumulate_grad_batches=c.accumulate_grad_batches, gradient_clip_val=c.gradient_clip_val,
        num_sanity_val_steps=c.num_sanity_val_steps, fast_dev_run=c.fast_dev_run)
    fast_dev_run, detect_anomaly = f["fast_dev_run"], c.detect_anomaly
    if not fast_dev_run:  # (fast_dev_run sets every limit itself)
        log_batch_flag_choices({k: getattr(c, k) for k in (
            "limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
            "overfit_batches", "val_check_interval")})
    if os.environ.get("DISTENGINE_DEBUG") == "1" and not fast_dev_run:
        fast_dev_run, detect_anomaly = 3, True
    hw = _hardware(c)
    n_fast = int((1 if fast_dev_run is True else fast_dev_run) or 0)
    fast = True if n_fast == 1 else n_fast  # Lightning: fast_dev_run=1 reads back as True
    run = _run_length(c, f, fast, n_fast)
    enable_checkpointing = False if fast else c.enable_checkpointing
    default_root_dir = os.path.normpath(os.path.expanduser(os.fspath(c.default_root_dir or os.getcwd())))  # "~": home
    logger = _fast_dev_run_logger(c.logger) if fast else c.logger
    profiler, profiled = profiling.resolve(c.profiler)
    loggers = tuple(build_loggers(True if logger is None else logger, default_root_dir))  # None: the default
    if c.enable_checkpointing is False and _has_checkpoint_callback(c.callbacks):  # Lightning refuses it too
        raise ConfigError("Trainer(enable_checkpointing=False) but callbacks has a ModelCheckpoint; "
                          "remove one of them")
    callbacks = build_callbacks(c.callbacks, c.max_time, enable_checkpointing is not False,
                                c.enable_progress_bar is not False, c.enable_model_summary is not False and not fast)
    return Settings(
        barebones=barebones, **hw, fast_dev_run=fast, **run,
        default_root_dir=default_root_dir, deterministic=c.deterministic, benchmark=c.benchmark,
        detect_anomaly=detect_anomaly, inference_mode=c.inference_mode, sync_batchnorm=c.sync_batchnorm,
        compile=c.compile, use_distributed_sampler=c.use_distributed_sampler, dist_timeout=c.dist_timeout,
        profiler=profiler, profiling=profiled, loggers=loggers, callbacks=tuple(callbacks))


# the settings a Trainer keeps as plain public attributes under the same name; the loop's flags
# (max_epochs, ...) among them land in its LoopFlags through the Trainer's descriptors
_PUBLIC = ("barebones", "env", "accelerator", "num_nodes", "precision", "fast_dev_run", "max_epochs", "min_epochs",
           "max_steps", "min_steps", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
           "on_nonfinite_loss", "overfit_batches", "val_check_interval", "check_val_every_n_epoch",
           "num_sanity_val_steps", "log_every_n_steps", "default_root_dir", "deterministic", "benchmark",
           "detect_anomaly", "inference_mode", "sync_batchnorm", "compile", "use_distributed_sampler", "dist_timeout")


def apply_settings(trainer: Any, s: Settings) -> None:
    """Give a new Trainer its starting state from ``s``: the values Lightning lets code change
    later (``trainer.max_epochs``, ``trainer.limit_val_batches``, the callbacks list) are copies."""
    for name in _PUBLIC:
        setattr(trainer, name, getattr(s, name))
    trainer.limits = dict(s.limits)
    trainer._loggers, trainer.callbacks = list(s.loggers), list(s.callbacks)


def _hardware(c: TrainerConfig) -> dict[str, Any]:
    """The cluster environment, devices, precision and strategy."""
    from distengine.distributed.devices import resolve_devices
    from distengine.distributed.env import detect
    from distengine.plugins import cluster_env_from_plugin, resolve_plugins
    from distengine.precision import normalize_precision
    from distengine.strategies import resolve_strategy

    env_plugin, plugin_precision = resolve_plugins(c.plugins)
    env = detect() if env_plugin is None else cluster_env_from_plugin(env_plugin, c.devices, int(c.num_nodes))
    accelerator, devices, gpu_ids = resolve_devices(c.accelerator, c.devices, c.gpus, env)
    num_nodes = int(c.num_nodes)
    if env_plugin is not None and env.distributed:
        env_plugin.validate_settings(devices, num_nodes)
    if plugin_precision is not None and normalize_precision(c.precision) != "32-true":
        raise ConfigError(f"Trainer got both precision={c.precision!r} and a precision plugin "
                          f"({plugin_precision!r}); choose one")
    strategy = resolve_strategy(c.strategy, env.distributed, c.find_unused_parameters,
                                devices if num_nodes == 1 else 1)
    return {"env": env, "accelerator": accelerator, "devices": devices, "gpu_ids": gpu_ids, "num_nodes": num_nodes,
            "precision": normalize_precision(plugin_precision or c.precision), "strategy": strategy}


def _run_length(c: TrainerConfig, f: dict[str, Any], fast: bool | int, n_fast: int) -> dict[str, Any]:
    """The epoch/step bounds, the batch limits, the evaluation schedule and the optimisation flags."""
    max_epochs, min_epochs, max_steps, min_steps = f["max_epochs"], f["min_epochs"], f["max_steps"], f["min_steps"]
    _check_min_max(min_epochs, max_epochs, min_steps, max_steps)
    if c.gradient_clip_algorithm not in (None, "norm", "value"):
        raise ConfigError(f"gradient_clip_algorithm must be 'norm' or 'value', got {c.gradient_clip_algorithm!r}")
    if c.on_nonfinite_loss not in ("error", "skip", "ignore"):
        raise ConfigError(f"on_nonfinite_loss must be 'error', 'skip' or 'ignore', got {c.on_nonfinite_loss!r}")
    limits = {"train": f["limit_train_batches"], "val": f["limit_val_batches"],
              "test": f["limit_test_batches"], "predict": f["limit_predict_batches"]}
    sanity = f["num_sanity_val_steps"]
    if fast:
        limits, sanity, max_steps = dict.fromkeys(limits, n_fast), 0, n_fast
    if f["overfit_batches"]:
        limits["train"] = limits["val"] = f["overfit_batches"]
    return {"max_epochs": 1 if fast else max_epochs,
            "max_epochs_defaulted": max_epochs is None and f["max_steps"] == -1 and c.max_time is None and not fast,
            "min_epochs": max(min_epochs or 0, 0), "max_steps": max_steps, "min_steps": max(min_steps or 0, 0),
            "accumulate_grad_batches": f["accumulate_grad_batches"], "gradient_clip_val": c.gradient_clip_val,
            "gradient_clip_algorithm": c.gradient_clip_algorithm or "norm", "on_nonfinite_loss": c.on_nonfinite_loss,
            "limits": ReadOnlyDict(limits), "overfit_batches": f["overfit_batches"],
            **_eval_flags(f, fast, sanity)}


def _eval_flags(f: dict[str, Any], fast: bool | int, num_sanity_val_steps: Any) -> dict[str, Any]:
    """val_check_interval, check_val_every_n_epoch (fast_dev_run: every epoch, at its end; None:
    no epoch gate, the interval counts batches over the run, so a fraction makes no sense),
    num_sanity_val_steps (-1 reads back as float("inf"), as in Lightning) and log_every_n_steps
    (0 writes no step metrics; they still reach callback_metrics)."""
    val_check_interval = 1.0 if fast else f["val_check_interval"]
    check_val_every_n_epoch = 1 if fast else f["check_val_every_n_epoch"]
    if check_val_every_n_epoch is None and isinstance(val_check_interval, float):
        raise ConfigError(f"Trainer(val_check_interval={val_check_interval}, check_val_every_n_epoch=None): "
                          "without an epoch gate the interval must be a whole number of batches or a duration; "
                          "for example val_check_interval=1000")
    return {"val_check_interval": val_check_interval, "check_val_every_n_epoch": check_val_every_n_epoch,
            "num_sanity_val_steps": 2 if num_sanity_val_steps is None else
            float("inf") if num_sanity_val_steps == -1 else num_sanity_val_steps,
            "log_every_n_steps": 50 if f["log_every_n_steps"] is None else f["log_every_n_steps"]}


def fit_max_epochs(max_epochs: int | None, max_steps: int, callbacks: list[Any]) -> int:
    """Lightning decides a ``max_epochs`` left unset when a fit starts (until then the Trainer
    reads it back as None): 1000 epochs (with a warning, run_warnings.py), or no epoch limit
    (-1) when ``max_steps`` or a Timer (``max_time``) bounds the run."""
    if max_epochs is not None:
        return max_epochs
    from distengine.callbacks.timer import Timer

    timer = any(isinstance(cb, Timer) for cb in callbacks)
    return 1000 if max_steps == -1 and not timer else -1


def _fast_dev_run_logger(logger: Any) -> Any:
    """Lightning: under fast_dev_run a logger that writes nothing stands in for the loggers."""
    if logger is False or logger in ([], ()):
        return False
    from distengine.loggers.logger import DummyLogger

    return [DummyLogger()]


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
