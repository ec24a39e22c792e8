"""Checkpoint file names and scores: the pure helpers of :mod:`distengine.callbacks.model_checkpoint`."""
from __future__ import annotations

import os
import re
from typing import Any

import torch

__all__ = ["format_checkpoint_name", "scanned_folders", "tidy_checkpoint_folders", "versioned_path"]

#: the first version a name in use gets: ``epoch=0-v1.ckpt`` (as Lightning's ``STARTING_VERSION``)
STARTING_VERSION = 1
CKPT_SUFFIX = ".ckpt"

_FIELD = re.compile(r"\{([^{}:!]+)(![rsa])?(:[^{}]*)?\}")


def format_checkpoint_name(template: str, metrics: dict[str, Any], auto_insert_metric_name: bool = True) -> str:
    """Fill a filename template; every field becomes ``name=value`` (Lightning's naming), or
    just ``value`` with ``auto_insert_metric_name=False``.

    A field missing from ``metrics`` is written as ``nan``. ``/`` in a metric name becomes ``_``
    so that the name stays one file.

    Example::

        format_checkpoint_name("{epoch}-{val_loss:.3f}", {"epoch": 1, "val_loss": 0.12345})
        # -> "epoch=1-val_loss=0.123"
    """
    def fill(match: re.Match) -> str:
        name = match.group(1).strip()
        spec = (match.group(3) or ":")[1:]
        value = metrics.get(name, float("nan"))
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else float("nan")
        if match.group(2) == "!r":
            value = repr(value)
        try:
            text = format(value, spec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint filename field {match.group(0)!r} cannot format "
                             f"{value!r}: {exc}") from None
        if not auto_insert_metric_name:
            return text
        return f"{name.replace('/', '_').replace(os.sep, '_')}={text}"

    return _FIELD.sub(fill, template)


def versioned_path(dirpath: str, name: str, ours: set[str], replaced: set[str] = frozenset(),
                   enabled: bool = True, start: int = STARTING_VERSION) -> str:
    """``<dirpath>/<name>.ckpt``, or ``<name>-v1.ckpt``, ``-v2``... while that name is taken: by a
    file or link on disk, or by one of ``ours`` (paths this run still keeps). Only a path in
    ``replaced`` (one of ours that this save replaces) may be reused, so a second run into the same
    folder never overwrites the first run's files (Lightning's ``enable_version_counter``;
    ``enabled=False``: always the plain name; ``start``: the first suffix, the callback's
    ``STARTING_VERSION``). Rank zero decides; the ranks are then told.

    Example: ``versioned_path("ckpts", "epoch=0", set())`` -> ``ckpts/epoch=0-v1.ckpt`` when
    ``ckpts/epoch=0.ckpt`` exists.
    """
    path = os.path.join(dirpath, name + CKPT_SUFFIX)
    version = start
    while enabled and path not in replaced and (path in ours or os.path.lexists(path)):
        path = os.path.join(dirpath, f"{name}-v{version}{CKPT_SUFFIX}")
        version += 1
    return path


def _score(value: Any) -> torch.Tensor | None:
    """A score as Lightning keeps it: a 0-dim tensor (None stays None)."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value))


def _to_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def scanned_folders(dirpath: str, version_root: str | None) -> list[str]:
    """The folders ``fit(ckpt_path="last")`` may resume from: ``dirpath``, and with a logger the
    ``checkpoints`` folders of the other versions under ``version_root``."""
    folders = [dirpath]
    if version_root:
        try:
            names = sorted(os.listdir(version_root))
        except OSError:
            names = []
        for name in names:
            folder = os.path.abspath(os.path.join(version_root, name, "checkpoints"))
            if folder != dirpath and os.path.isdir(folder):
                folders.append(folder)
    return folders


def tidy_checkpoint_folders(dirpath: str, version_root: str | None) -> None:
    """Rank 0, before a fit: create ``dirpath``; in every scanned folder, remove the temporary files of saves that
    never finished and put back what an interrupted sharded publish left."""
    from distengine.checkpoint.io import clean_stale_temp_files
    from distengine.checkpoint.sharded import recover_interrupted_saves

    os.makedirs(dirpath, exist_ok=True)
    for folder in scanned_folders(dirpath, version_root):
        clean_stale_temp_files(folder)
        recover_interrupted_saves(folder)
