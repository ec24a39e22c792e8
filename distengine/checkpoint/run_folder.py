"""Where a resumed run writes: into its own ``version_N`` folder, not a new one.

A file logger (TensorBoard, CSV) picks its version when it is built: the next free
``version_N``. A run resumed from ``<save_dir>/<name>/version_0/checkpoints/...`` (where
``fit(ckpt_path="last")`` finds it) would then log into ``version_1`` and save its checkpoints to
``version_1/checkpoints``: its TensorBoard curves split in two. So once the checkpoint to resume
from is agreed, and before anything is written, rank 0 decides whether it lies in a version
folder of the first logger and broadcasts the answer; when it does, every rank moves the loggers
of that folder whose ``version`` was not given, and the ModelCheckpoints whose ``dirpath`` was
not given, into that version. A ``version`` or ``dirpath`` the user gave is kept. The resume's
one line on stderr (:func:`resume_line`) says where the run writes.
"""
from __future__ import annotations

import os
import re
from typing import Any

_VERSION_DIR = re.compile(r"^version_(\d+)$")


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _version_folder(path: str, root: str) -> str | None:
    """``V`` when checkpoint ``path`` is ``<root>/V/checkpoints/<entry>``, else None."""
    folder = os.path.dirname(os.path.abspath(path))  # its checkpoints folder (a link there: the link's)
    version_dir = os.path.dirname(folder)
    if os.path.basename(folder) != "checkpoints" or not _same(os.path.dirname(version_dir), root):
        return None
    return os.path.basename(version_dir)


def _logger_root(trainer: Any) -> str | None:
    """``<save_dir>/<name>`` of the first logger: the folder holding its version folders."""
    loggers = list(getattr(trainer, "loggers", None) or [])
    root = getattr(loggers[0], "root_dir", None) if loggers else None
    return os.path.abspath(root) if isinstance(root, str) else None


def _auto_checkpoints(trainer: Any) -> list[Any]:
    """The ModelCheckpoints whose folder follows the first logger (no ``dirpath`` was given)."""
    return [cb for cb in getattr(trainer, "checkpoint_callbacks", []) if getattr(cb, "version_root", None)]


def continue_run_folder(trainer: Any, path: str, full: bool) -> str | None:
    """Every rank, once ``path`` is agreed and loaded, before it is restored: move the loggers and
    ModelCheckpoints that follow the first logger into the version folder ``path`` lies in.
    Returns the folder they moved to (None: nothing moved). ``full``: a resumable checkpoint
    (a weights-only one starts a new run, which gets a new version)."""
    from distengine.checkpoint.agreement import on_rank_zero
    from distengine.loggers.csv_logger import VersionedLogger, version_dir_name

    root = _logger_root(trainer)
    if not full or root is None:  # the same on every rank: no collective then
        return None

    def decide() -> str | None:  # rank 0: only its loggers may have written already
        first, name = trainer.loggers[0], _version_folder(path, root)
        if name is None or name == version_dir_name(first.version):
            return None  # not in a version folder, or already in this run's own
        if not isinstance(first, VersionedLogger) or not first.can_continue_version():
            return None  # the first logger keeps the version it was given: so do the others and the checkpoints
        return os.path.join(root, name)

    target = on_rank_zero(decide, trainer.strategy, trainer.is_global_zero, "choosing the resumed run's folder")
    if target is None:
        return None
    name = os.path.basename(target)
    match = _VERSION_DIR.match(name)
    version: int | str = int(match.group(1)) if match else name
    trainer.loggers[0].continue_version(version)  # rank 0 found it can: so can the others, which never write
    for lg in trainer.loggers[1:]:
        if isinstance(lg, VersionedLogger) and _same(lg.root_dir, os.path.dirname(target)):
            lg.continue_version(version)
    for cb in _auto_checkpoints(trainer):
        old, cb.dirpath = cb.dirpath, os.path.join(target, "checkpoints")
        if trainer.is_global_zero:
            _remove_if_empty(old)
    return target


def _remove_if_empty(checkpoints: str | None) -> None:
    """The ``version_N/checkpoints`` folder made for this run before it knew it resumes: gone when
    nothing is in it (so it leaves no empty ``version_N`` behind)."""
    if not checkpoints:
        return
    for folder in (checkpoints, os.path.dirname(checkpoints)):
        try:
            os.rmdir(folder)  # only an empty folder
        except OSError:
            return


def resume_line(trainer: Any, path: str, moved_to: str | None) -> str:
    """Where this resumed run writes, for the one ``distengine: resumed from ...`` line."""
    if moved_to is not None:
        return f"continuing in its own folder {moved_to} (logs and checkpoints)"
    parts = []
    loggers = list(getattr(trainer, "loggers", None) or [])
    if loggers and getattr(loggers[0], "log_dir", None):
        parts.append(f"logs go to {loggers[0].log_dir}")
    cb = getattr(trainer, "checkpoint_callback", None)
    if cb is not None and cb.dirpath:
        was = getattr(cb, "resumed_from_dirpath", None)
        fresh = f" (not {was}, where that checkpoint was saved: best-k tracking starts afresh)" if was else ""
        parts.append(f"checkpoints to {cb.dirpath}{fresh}")
    return ", ".join(parts)
