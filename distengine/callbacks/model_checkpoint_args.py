"""Checking and normalising ``ModelCheckpoint``'s arguments (one clear error per bad value)."""
from __future__ import annotations

import datetime
import os
from typing import Any

from distengine.checkpoint.io import CKPT_SUFFIX
from distengine.utilities.exceptions import ConfigError

__all__ = ["checked_arguments"]


def _dir_and_name(dirpath: Any, filename: Any, filepath: Any) -> tuple[str | None, str | None]:
    if filepath is not None:  # 0.x/1.x: one path, split into dirpath + filename as Lightning 1.1 did
        if dirpath is not None or filename is not None:
            raise ConfigError("ModelCheckpoint: pass filepath= (the 1.x form) or dirpath=/filename=, not both")
        filepath = os.path.expanduser(os.fspath(filepath))
        dirpath, filename = (filepath, None) if os.path.isdir(filepath) else \
            os.path.split(os.path.realpath(filepath))
        filename = filename or None
    if filename is not None and not isinstance(filename, str):
        raise ConfigError(f"ModelCheckpoint(filename={filename!r}) must be a string template")
    if filename and filename.endswith(CKPT_SUFFIX):
        filename = filename[:-len(CKPT_SUFFIX)]
    if isinstance(dirpath, str) and "://" in dirpath:
        if not dirpath.startswith("file://"):  # it would become a local folder named "memory:" / "s3:"
            raise ConfigError(f"ModelCheckpoint(dirpath={dirpath!r}): a remote URL; checkpoints are written to local "
                              "files, so give a local or mounted folder")
        dirpath = dirpath[len("file://"):]
    # "~/ckpts" is the user's home, as in Lightning (which resolves links too; an absolute path
    # keeps the name the user sees, and the one earlier checkpoints recorded)
    dirpath = os.path.abspath(os.path.expanduser(os.fspath(dirpath))) if dirpath else None
    return dirpath, filename


def _trigger(every_n_train_steps: Any, every_n_epochs: Any, train_time_interval: Any) -> dict[str, Any]:
    for name, val in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
        if val is not None and (not isinstance(val, int) or val < 0):
            raise ConfigError(f"ModelCheckpoint({name}={val!r}) must be a non-negative int")
    if isinstance(train_time_interval, (int, float)) and not isinstance(train_time_interval, bool):
        train_time_interval = datetime.timedelta(seconds=float(train_time_interval))
    if train_time_interval is not None and (
            not isinstance(train_time_interval, datetime.timedelta) or train_time_interval.total_seconds() <= 0):
        raise ConfigError(f"ModelCheckpoint(train_time_interval={train_time_interval!r}) must "
                         "be a positive timedelta or number of seconds")
    chosen = [n for n, v in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs),
                             ("train_time_interval", train_time_interval)) if v]
    if len(chosen) > 1:
        raise ConfigError(f"ModelCheckpoint: {' and '.join(chosen)} are both set; choose one trigger")
    return {"every_n_train_steps": every_n_train_steps or 0,
            "every_n_epochs": every_n_epochs if every_n_epochs is not None else (0 if chosen else 1),
            "train_time_interval": train_time_interval}


def checked_arguments(dirpath: Any, filename: Any, filepath: Any, mode: str, save_top_k: Any, save_last: Any,
                      every_n_train_steps: Any, every_n_epochs: Any, train_time_interval: Any) -> dict[str, Any]:
    """The normalised settings: ``dirpath`` (absolute, ``~`` expanded), ``filename`` (without
    ``.ckpt``) and the trigger; a ``ValueError`` naming the bad argument otherwise."""
    if mode not in ("min", "max"):
        raise ConfigError(f"ModelCheckpoint(mode={mode!r}) is not valid; use 'min' or 'max'")
    if not isinstance(save_top_k, int) or save_top_k < -1:
        raise ConfigError(f"ModelCheckpoint(save_top_k={save_top_k!r}) must be an int >= -1 "
                         "(-1 keeps every checkpoint)")
    if save_last not in (None, True, False, "link"):
        raise ConfigError(f"ModelCheckpoint(save_last={save_last!r}) is not valid; use True, False, None or 'link'")
    dirpath, filename = _dir_and_name(dirpath, filename, filepath)
    return {"dirpath": dirpath, "filename": filename,
            **_trigger(every_n_train_steps, every_n_epochs, train_time_interval)}
