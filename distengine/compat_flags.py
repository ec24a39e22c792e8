"""Lightning 1.x Trainer flags and entry points, translated once before the Trainer is built.

``@accepts_1x_flags`` wraps ``Trainer.__init__``: each 1.x flag becomes today's flag (or a
callback, or a documented no-op with one info line), unknown flags raise a ``TypeError`` that
names the closest known flag, and what the Trainer reads later is set on it afterwards.
The 1.x class methods ``add_argparse_args`` / ``from_argparse_args`` / ``parse_argparser`` (as
in pytorch-lightning 1.9.5), ``trainer.tuner`` and the finders ``fit`` runs for
``auto_lr_find``/``auto_scale_batch_size`` are plain functions here, named in the Trainer's
class body.

Example::

    trainer = de.Trainer(gpus=0, row_log_interval=10, weights_summary=None, max_epoch=3)
    # TypeError: Trainer got an unknown flag 'max_epoch'; did you mean 'max_epochs'?
"""
from __future__ import annotations

import argparse
import difflib
import functools
import inspect
from typing import Any, Callable

from distengine.utilities.exceptions import ConfigError

# 1.x flag -> its default; the argparse type of each is in _ARG_TYPES
LEGACY_DEFAULTS: dict[str, Any] = {
    "weights_summary": "top", "distributed_backend": None, "num_processes": None, "row_log_interval": None,
    "log_save_interval": None, "flush_logs_every_n_steps": None, "track_grad_norm": -1, "amp_level": None,
    "amp_backend": None, "prepare_data_per_node": True, "reload_dataloaders_every_n_epochs": 0,
    "early_stop_callback": None, "weights_save_path": None, "resume_from_checkpoint": None,
    "auto_lr_find": False, "auto_scale_batch_size": False, "checkpoint_callback": None,
    "progress_bar_refresh_rate": None, "terminate_on_nan": None, "replace_sampler_ddp": None,
}
# set on the Trainer after it is built (read by fit, the loops, the tuner)
_ATTRS = ("weights_save_path", "resume_from_checkpoint", "auto_lr_find", "auto_scale_batch_size",
          "prepare_data_per_node", "reload_dataloaders_every_n_epochs", "track_grad_norm")
_NO_OPS = {"log_save_interval": "loggers write when they are given values",
           "flush_logs_every_n_steps": "loggers write when they are given values",
           "amp_level": "Apex is not used; mixed precision is precision='16-mixed' or 'bf16-mixed'",
           "amp_backend": "mixed precision always uses torch.autocast"}
_BACKENDS = ("ddp", "ddp_spawn", "ddp_cpu", "ddp2", "dp", "horovod", "ddp_sharded")
_told: set[str] = set()


def _info(msg: str) -> None:
    from distengine.distributed.rank_zero import rank_zero_info

    if msg not in _told:  # one line per flag and process
        _told.add(msg)
        rank_zero_info(f"distengine: {msg}")


@functools.lru_cache(maxsize=16)
def _known(init: Callable) -> list[str]:
    # (once per __init__: every Trainer construction asks)
    return [n for n, p in inspect.signature(init).parameters.items()
            if n != "self" and p.kind is p.KEYWORD_ONLY]


def unknown_flag_error(names: list[str], known: list[str]) -> TypeError:
    """``Trainer got an unknown flag 'min_epoch'; did you mean 'min_epochs'?``"""
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if len(names) == 1:
        close = difflib.get_close_matches(names[0], known, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else "; see help(distengine.Trainer)"
        return TypeError(f"Trainer got an unknown flag '{names[0]}'{hint}")
    return TypeError(f"Trainer got unknown flags {', '.join(hints)}; see help(distengine.Trainer)")


def translate(kwargs: dict[str, Any], known: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``kwargs`` into today's flags and the attributes to set afterwards."""
    unknown = [k for k in kwargs if k not in known and k not in LEGACY_DEFAULTS]
    if unknown:
        raise unknown_flag_error(unknown, known + list(LEGACY_DEFAULTS))
    new = {k: v for k, v in kwargs.items() if k in known}
    old = {k: v for k, v in kwargs.items() if k in LEGACY_DEFAULTS}
    attrs = {k: old.get(k, LEGACY_DEFAULTS[k]) for k in _ATTRS}
    callbacks = _as_list(new.get("callbacks"))

    def setdefault(flag: str, value: Any, default: Any = None) -> None:
        if new.get(flag, default) == default:  # today's flag, when given, wins
            new[flag] = value

    if "weights_summary" in old:  # 1.x: None/"top"/"full"
        ws = old["weights_summary"]
        if ws not in (None, "top", "full"):
            raise ConfigError(f"Trainer(weights_summary={ws!r}): use None, 'top' or 'full'")
        setdefault("enable_model_summary", ws is not None)
        if ws == "full":
            from distengine.callbacks.model_summary import ModelSummary

            callbacks.append(ModelSummary(max_depth=-1))
    backend = old.get("distributed_backend")
    if new.get("accelerator") in _BACKENDS:  # 1.x: Trainer(accelerator="ddp") named the backend
        backend = backend or new.pop("accelerator")
    if backend is not None:
        if backend not in _BACKENDS:
            raise ConfigError(f"Trainer(distributed_backend={backend!r}): use 'ddp' (or 'ddp_spawn'/'ddp_cpu')")
        if backend in ("ddp_cpu",):
            setdefault("accelerator", "cpu", "auto")
        if backend not in ("ddp", "ddp_spawn", "ddp_cpu"):
            _info(f"distributed_backend={backend!r} runs as strategy='ddp' (the one distributed strategy)")
        setdefault("strategy", "ddp", "auto")
    if old.get("num_processes") is not None:  # 1.x: CPU processes
        setdefault("accelerator", "cpu", "auto")
        setdefault("devices", old["num_processes"], "auto")
    if old.get("row_log_interval") is not None:
        setdefault("log_every_n_steps", old["row_log_interval"])
    for flag, why in _NO_OPS.items():
        if old.get(flag) is not None:
            _info(f"Trainer({flag}=...) is accepted and does nothing: {why}")
    tgn = attrs["track_grad_norm"]
    if tgn != -1:
        if isinstance(tgn, bool) or not (tgn == "inf" or (isinstance(tgn, (int, float)) and float(tgn) > 0)):
            raise ConfigError(f"Trainer(track_grad_norm={tgn!r}): use a positive number, 'inf', or -1 (off)")
        from distengine.callbacks.grad_norm import GradNormTracker

        callbacks.append(GradNormTracker(tgn))
    reload = attrs["reload_dataloaders_every_n_epochs"]
    if isinstance(reload, bool) or not isinstance(reload, int) or reload < 0:
        raise ConfigError(f"Trainer(reload_dataloaders_every_n_epochs={reload!r}): use a whole number of epochs "
                          ">= 0 (0: never)")
    esc = old.get("early_stop_callback")
    if esc is not None and esc is not False:
        from distengine.callbacks.early_stopping import EarlyStopping

        # 1.x: True meant EarlyStopping on 'val_loss' (patience 3, mode 'min')
        callbacks.append(EarlyStopping(monitor="val_loss") if esc is True else esc)
    if old.get("checkpoint_callback") is not None:  # a bool (1.3-1.6) or a ModelCheckpoint (1.0-1.2)
        from distengine.compat import legacy_checkpoint_callback

        callbacks, enabled = legacy_checkpoint_callback(old["checkpoint_callback"], callbacks,
                                                        new.get("enable_checkpointing"))
        if enabled is not None:
            new["enable_checkpointing"] = enabled
    if old.get("progress_bar_refresh_rate") == 0:
        setdefault("enable_progress_bar", False)
    if old.get("terminate_on_nan") is not None:
        setdefault("on_nonfinite_loss", "error" if old["terminate_on_nan"] else "ignore", "error")
    if old.get("replace_sampler_ddp") is not None:
        setdefault("use_distributed_sampler", old["replace_sampler_ddp"], True)
    if callbacks:
        new["callbacks"] = callbacks
    return new, attrs


def _as_list(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def accepts_1x_flags(init: Callable) -> Callable:
    """Wrap ``Trainer.__init__`` (see the module docstring). ``inspect.signature`` still shows
    the wrapped signature."""

    @functools.wraps(init)
    def wrapper(self: Any, **kwargs: Any) -> None:
        new, attrs = translate(kwargs, _known(init))
        init(self, **new)
        for name, value in attrs.items():
            setattr(self, name, value)

    return wrapper


# ---------------------------------------------------------------------------- argparse (1.9.5)
def _str_to_bool(v: str) -> bool:
    low = str(v).lower()
    if low in ("y", "yes", "t", "true", "on", "1"):
        return True
    if low in ("n", "no", "f", "false", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"invalid truth value {v!r}")


def _bool_or(kind: Callable) -> Callable:
    def parse(v: str) -> Any:
        try:
            return _str_to_bool(v)
        except argparse.ArgumentTypeError:
            return kind(v)
    parse.__name__ = f"str_to_bool_or_{kind.__name__}"
    return parse


def _int_or_float(v: str) -> int | float:
    return float(v) if any(c in v for c in ".eE") and not v.lstrip("-").isdigit() else int(v)


def _devices(v: str) -> Any:  # "2", "-1", "0,1", "auto"
    return int(v) if v.lstrip("-").isdigit() else v


def _precision(v: str) -> Any:
    return int(v) if v.isdigit() else v


def _arg_types() -> dict[str, Callable]:
    b = _str_to_bool
    return {
        "accelerator": str, "strategy": str, "devices": _devices, "num_nodes": int, "precision": _precision,
        "logger": b, "fast_dev_run": _bool_or(int), "max_epochs": int, "min_epochs": int, "max_steps": int,
        "min_steps": int, "max_time": str, "limit_train_batches": _int_or_float, "limit_val_batches": _int_or_float,
        "limit_test_batches": _int_or_float, "limit_predict_batches": _int_or_float,
        "overfit_batches": _int_or_float, "val_check_interval": _int_or_float, "check_val_every_n_epoch": int,
        "num_sanity_val_steps": int, "log_every_n_steps": int, "enable_checkpointing": b,
        "enable_progress_bar": b, "enable_model_summary": b, "accumulate_grad_batches": int,
        "gradient_clip_val": _int_or_float, "gradient_clip_algorithm": str, "deterministic": _bool_or(str),
        "benchmark": b, "inference_mode": b, "use_distributed_sampler": b, "detect_anomaly": b,
        "sync_batchnorm": b, "default_root_dir": str, "compile": b, "on_nonfinite_loss": str,
        "dist_timeout": float, "find_unused_parameters": b, "gpus": _devices, "profiler": str,
        # 1.x flags
        "weights_summary": str, "distributed_backend": str, "num_processes": int, "row_log_interval": int,
        "log_save_interval": int, "flush_logs_every_n_steps": int, "track_grad_norm": float, "amp_level": str,
        "amp_backend": str, "prepare_data_per_node": b, "reload_dataloaders_every_n_epochs": int,
        "early_stop_callback": b, "weights_save_path": str, "resume_from_checkpoint": str,
        "auto_lr_find": _bool_or(str), "auto_scale_batch_size": _bool_or(str), "checkpoint_callback": b,
        "progress_bar_refresh_rate": int, "terminate_on_nan": b, "replace_sampler_ddp": b,
    }


def _flags_with_defaults(cls: type) -> dict[str, Any]:
    init = inspect.unwrap(cls.__init__)
    out = {n: p.default for n, p in inspect.signature(init).parameters.items()
           if n != "self" and p.kind is p.KEYWORD_ONLY}
    for name, default in LEGACY_DEFAULTS.items():
        out.setdefault(name, default)
    return out


def add_argparse_args(cls: type, parent_parser: argparse.ArgumentParser, *, use_argument_group: bool = True) -> Any:
    """Add every Trainer flag as ``--flag`` with its default, in a group ``pl.Trainer``
    (as pytorch-lightning 1.9.5). Boolean flags may be given bare (``--enable_progress_bar``
    means True). Flags taking objects (``callbacks``, ``plugins``) are left out.

    Example::

        parser = Trainer.add_argparse_args(argparse.ArgumentParser())
        trainer = Trainer.from_argparse_args(parser.parse_args(), logger=False)
    """
    if isinstance(parent_parser, argparse._ArgumentGroup):
        raise RuntimeError("Please only pass an `ArgumentParser` instance.")
    parser: Any = parent_parser.add_argument_group("pl.Trainer") if use_argument_group else \
        argparse.ArgumentParser(parents=[parent_parser], add_help=False)
    types = _arg_types()
    for name, default in _flags_with_defaults(cls).items():
        kind = types.get(name)
        if kind is None:
            continue
        extra: dict[str, Any] = {"nargs": "?", "const": True} if kind is _str_to_bool or \
            kind.__name__.startswith("str_to_bool") else {}
        parser.add_argument(f"--{name}", dest=name, default=default, type=kind, **extra)
    return parent_parser if use_argument_group else parser


def parse_argparser(cls: type, arg_parser: argparse.ArgumentParser | argparse.Namespace) -> argparse.Namespace:
    """Parse ``sys.argv`` (or take a Namespace); a bare boolean flag becomes True."""
    args = arg_parser.parse_args() if isinstance(arg_parser, argparse.ArgumentParser) else arg_parser
    defaults = _flags_with_defaults(cls)
    return argparse.Namespace(**{k: (True if v is None and isinstance(defaults.get(k), bool) else v)
                                 for k, v in vars(args).items()})


def from_argparse_args(cls: type, args: argparse.ArgumentParser | argparse.Namespace, **kwargs: Any) -> Any:
    """A Trainer from the Trainer flags in ``args`` (other entries are ignored), with
    ``kwargs`` overriding them."""
    if isinstance(args, argparse.ArgumentParser):
        args = cls.parse_argparser(args)
    params = vars(args)
    flags = {k: params[k] for k in _flags_with_defaults(cls) if k in params}
    flags.update(kwargs)
    return cls(**flags)


def tuner(trainer: Any) -> Any:
    """1.x ``trainer.tuner.lr_find(model)`` / ``trainer.tuner.scale_batch_size(model)``."""
    from distengine.tuner import Tuner

    return Tuner(trainer)


def tune_in_fit(trainer: Any, status: Any, model: Any, train: Any, val: Any, datamodule: Any) -> None:
    """``auto_lr_find`` / ``auto_scale_batch_size`` act in ``fit`` when ``tune()`` was not
    called (pytorch-lightning 1.9.5 ignores them there; scripts that set the flag expect it
    to act), with one line saying so."""
    if status.tuned or not (trainer.auto_lr_find or trainer.auto_scale_batch_size):
        return
    from distengine.tuner import tune

    flags = " and ".join(f"{f}={getattr(trainer, f)!r}" for f in ("auto_scale_batch_size", "auto_lr_find")
                         if getattr(trainer, f))
    _info(f"{flags}: trainer.tune() was not called, so fit runs it first (Lightning 1.9.5 would not)")
    status.tuned = True  # once: a second fit does not search again
    result = tune(trainer, model, train if datamodule is None else datamodule, val)
    if "lr_find" in result:
        _info(f"lr_find suggests lr={result['lr_find'].suggestion()}")
