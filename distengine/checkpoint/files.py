"""One checkpoint file: the atomic write (temporary file, fsync, rename, fsync of the folder),
the safe load (``torch.load(weights_only=True)``; refusals and damage as one-line
:class:`CheckpointError`) and what is wrong with a file that does not load.

The layer under both layouts: :mod:`distengine.checkpoint.io` (a file or a sharded directory,
the ``last.json`` pointer) and the sharded directories (:mod:`distengine.checkpoint.sharded`,
whose ``meta.pt`` is such a file) import it; it imports neither.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import uuid
import zipfile
from typing import Any

import torch

from distengine.checkpoint.mapped import copy_unmapped, load_file
from distengine.checkpoint.temp_files import _fsync_dir, _new_temp_file
from distengine.checkpoint.write_failures import disk_cause, free_after_removing, message, payload_bytes


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, or not plain data."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """``ckpt_path`` names a file that does not exist (also a ``FileNotFoundError``, as Lightning raises)."""


# ----------------------------------------------------------------------------- writing
def _atomic_write(path: str, write: Any, needed: Any = None) -> None:
    """Call ``write(tmp_path)``, fsync the result, rename it to ``path``, fsync the folder.

    A write that fails for want of disk space, quota or file size limit raises a one-line
    :class:`CheckpointError` saying so (``write_failures.py``; ``needed()``: the bytes it needs)."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = _new_temp_file(folder, os.path.basename(path))
    old = None
    try:
        write(tmp)
        # fsync through a fresh descriptor: the writer may be C++ code that owns its own handle.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.isdir(path) and not os.path.islink(path):
            # a sharded checkpoint of the same name (a resume under another strategy): a file
            # cannot replace a directory in one rename, so it moves aside until the file is in
            # place (sharded.recover_interrupted_saves puts it back after a crash in between)
            old = os.path.join(folder, f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
        os.replace(tmp, path)
    except BaseException as exc:
        cause, written, free = None, 0, 0
        if isinstance(exc, Exception) and os.path.isfile(tmp):  # before the partial file goes
            written = os.path.getsize(tmp)
            cause = disk_cause(exc, tmp)
            free = free_after_removing(tmp) if cause else 0
        if old is not None and not os.path.lexists(path):
            os.rename(old, path)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if cause is not None:
            raise CheckpointError(message(cause, path, max(written, needed() if needed else 0), free)) from exc
        raise
    _fsync_dir(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` so that a crash never leaves a partial file there.

    Example::

        atomic_save({"model": model.state_dict(), "step": 10}, "ckpts/step=10.ckpt")
    """
    # torch.save with a file *name* uses the C++ writer directly (faster than a Python file).
    _atomic_write(os.fspath(path), lambda tmp: torch.save(obj, tmp), lambda: payload_bytes(obj))


def _write_text(tmp: str, text: str) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()


# ----------------------------------------------------------------------------- loading
# What torch's refusal names: "GLOBAL mod.name" in current versions; older ones only put a
# description after "WeightsUnpickler error:".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_ONLY_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)")


def _is_weights_only_refusal(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)


_TRUST_HINT = ("only if you trust the file and where it came from, allow that class with "
               "torch.serialization.add_safe_globals([...]) before loading, or load it yourself with "
               "torch.load(path, weights_only=False) and save its tensors and plain values again")


def _refused_object(exc: BaseException) -> str:
    found = _REFUSED_GLOBAL.search(str(exc)) or _WEIGHTS_ONLY_DETAIL.search(str(exc))
    return found.group(1).strip() if found else "an object"


def _unsafe_message(path: str, exc: BaseException) -> str:
    """One line: the file was refused as unsafe (not corrupt), and how to load it if trusted."""
    return (f"checkpoint file {path!r} was refused as unsafe, not because it is damaged: it holds "
            f"{_refused_object(exc)}, an object that is not plain data, and torch.load(weights_only=True) "
            f"does not unpickle it because that could run code; {_TRUST_HINT}")


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The file half of :func:`distengine.checkpoint.io.safe_load` (see there)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist; check the path")
    try:
        obj = load_file(path, map_location, mmap)
    except pickle.UnpicklingError as exc:
        if _is_weights_only_refusal(exc):
            raise CheckpointError(_unsafe_message(path, exc)) from None
        raise CheckpointError(f"checkpoint file {path!r} is corrupt: {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        if _loads_on_cpu(path):
            raise  # the file is fine; the problem is elsewhere (say, a map_location device)
        first = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"checkpoint file {path!r} is truncated or corrupt and cannot be loaded "
            f"({type(exc).__name__}: {first})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint file {path!r} holds a {type(obj).__name__}, expected a dict")
    return copy_unmapped(obj) if mmap else obj


def file_problem(path: str, deep: bool = False) -> str | None:
    """Why checkpoint file ``path`` cannot be loaded ("is missing", "is truncated or corrupt",
    "was refused as unsafe ..."), or None when :func:`load_checkpoint_file` would accept it."""
    if not os.path.isfile(path):
        return "is missing"
    if deep:
        try:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    if zf.testzip() is not None:
                        return "is truncated or corrupt"
        except (OSError, zipfile.BadZipFile, RuntimeError):
            return "is truncated or corrupt"
    try:
        ok = _loads_on_cpu(path, raise_refusal=True)
    except pickle.UnpicklingError as exc:
        return (f"was refused as unsafe (it holds {_refused_object(exc)}, an object that is not plain data "
                f"and whose unpickling could run code; {_TRUST_HINT})")
    return None if ok else "is truncated or corrupt"


def _loads_on_cpu(path: str, raise_refusal: bool = False) -> bool:
    """True when ``path`` unpickles under weights_only into a dict (tensor bytes mapped, not read).

    With ``raise_refusal`` a file refused as unsafe raises the loader's UnpicklingError instead
    of returning False, so callers can say why it was refused."""
    try:
        obj = load_file(path, "cpu")
    except pickle.UnpicklingError as exc:
        if raise_refusal and _is_weights_only_refusal(exc):
            raise
        return False  # not plain data, or a broken pickle
    except Exception:  # noqa: BLE001 - any failure means "not loadable"
        return False
    return isinstance(obj, dict)
