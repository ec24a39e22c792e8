"""``Trainer(barebones=True)``: every feature that costs time besides the steps themselves is
off, to measure the Trainer's own overhead (Lightning's flag, with Lightning's rules).

Off: checkpointing, loggers, the progress bar, the model summary, step logging
(``log_every_n_steps=0``), the sanity check, and ``self.log`` (it warns and does nothing).
Asking for one of them (``Trainer(barebones=True, logger=True)``), or for ``fast_dev_run``,
``detect_anomaly`` or a ``profiler``, raises a ``ConfigError`` (a ``ValueError``) naming it.

Example::

    trainer = Trainer(barebones=True, max_steps=1000)
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from distengine.utilities.exceptions import ConfigError

# flag -> (is it asked for?, what barebones turns off)
_CONFLICTS = {
    "enable_checkpointing": (lambda v: bool(v), "checkpointing"),
    "logger": (lambda v: v is not None and v is not False, "loggers"),
    "enable_progress_bar": (lambda v: bool(v), "the progress bar"),
    "log_every_n_steps": (lambda v: v is not None and v != 0, "step logging"),
    "enable_model_summary": (lambda v: bool(v), "the model summary"),
    "num_sanity_val_steps": (lambda v: v is not None and v != 0, "the sanity check"),
    "fast_dev_run": (lambda v: bool(v), "debugging runs"),
    "detect_anomaly": (lambda v: bool(v), "anomaly detection"),
    "profiler": (lambda v: v is not None, "profiling"),
}
_OFF = {"enable_checkpointing": False, "logger": False, "enable_progress_bar": False, "log_every_n_steps": 0,
        "enable_model_summary": False, "num_sanity_val_steps": 0}


def apply_barebones(config: Any) -> Any:
    """``config`` (a TrainerConfig) with the barebones features turned off; unchanged without
    ``barebones=True``. Raises ConfigError when one of them is asked for as well."""
    if not config.barebones:
        return config
    for flag, (asked, what) in _CONFLICTS.items():
        value = getattr(config, flag)
        if asked(value):
            raise ConfigError(f"`Trainer(barebones=True, {flag}={value!r})` was passed, but barebones mode turns "
                              f"{what} off to time the Trainer alone; drop {flag} or barebones=True")
    from distengine.distributed.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        logging.getLogger("distengine").info(
            "The Trainer is running in `Trainer(barebones=True)` mode: checkpointing, loggers, the progress bar, "
            "the model summary, step logging, self.log, the sanity check, anomaly detection and profiling are off")
    return dataclasses.replace(config, **_OFF)


def warn_log_ignored(name: str) -> None:
    """``self.log`` under ``Trainer(barebones=True)``: a warning, and the value is not recorded."""
    from distengine.distributed.rank_zero import rank_zero_warn

    rank_zero_warn(f"self.log({name!r}) is ignored: `Trainer(barebones=True)` is configured, which turns "
                   "logging off; remove barebones=True to record metrics", category=UserWarning)
