"""Checkpoint files on disk: atomic writes, safe loads, and the ``last.json`` pointer.

A checkpoint is written to a temporary file in the destination folder, flushed and fsynced,
then renamed over the final name and the folder entry is fsynced too. A crash at any byte
therefore leaves either the previous file or the complete new one under the final name, never a
partial file. Temporary files are named ``.<final name>.<host>.<pid>.<random>.tmp``: readers skip
them, and :func:`clean_stale_temp_files` removes those whose writing process is gone.

Loading always uses ``torch.load(weights_only=True)``, so a checkpoint that carries a pickled
object whose unpickling would run code is refused before that code can run.

Layers: the single-file format is :mod:`distengine.checkpoint.files` (re-exported here); a
sharded directory is :mod:`distengine.checkpoint.sharded`, which builds on ``files`` and never
imports this module; :func:`safe_load` and :func:`is_valid_checkpoint` pick by path.

Example::

    from distengine.checkpoint.io import atomic_save, safe_load, resolve_checkpoint
    atomic_save({"model": model.state_dict()}, "ckpts/epoch=0-step=100.ckpt")
    write_last_pointer("ckpts", "ckpts/epoch=0-step=100.ckpt")
    path = resolve_checkpoint("last", "ckpts")     # -> ".../epoch=0-step=100.ckpt"
    state = safe_load(path)
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from typing import Any

from distengine.checkpoint.files import (  # noqa: F401 - re-exported (the file layer; sharded_files uses some)
    CheckpointError,
    CheckpointNotFoundError,
    _atomic_write,
    _write_text,
    atomic_save,
    file_problem,
    load_checkpoint_file,
)
from distengine.checkpoint.temp_files import (  # noqa: F401 - re-exported (and used by sharded_files)
    _TMP_SUFFIX,
    _fsync_dir,
    _host_tag,
    _new_temp_file,
    _pid_alive,
    clean_stale_temp_files,
    is_temp_file,
)

__all__ = [
    "CKPT_SUFFIX",
    "LAST_POINTER",
    "CheckpointError",
    "CheckpointNotFoundError",
    "atomic_save",
    "clean_stale_temp_files",
    "is_temp_file",
    "is_valid_checkpoint",
    "link_atomic",
    "list_checkpoints",
    "read_last_pointer",
    "resolve_checkpoint",
    "resolve_last_in_versions",
    "safe_load",
    "write_last_pointer",
]

#: Name of the pointer file written next to the checkpoints.
LAST_POINTER = "last.json"
#: Suffix of the checkpoint files that ``resolve_checkpoint("last", ...)`` considers.
CKPT_SUFFIX = ".ckpt"
_POINTER_VERSION = 1


def _downloaded(url: str) -> str:
    """The local copy of an http(s) checkpoint, in torch.hub's cache (``<hub dir>/checkpoints/<file
    name>``, as Lightning and ``torch.hub.load_state_dict_from_url`` keep it): downloaded once."""
    from urllib.parse import urlparse

    import torch.hub

    name = os.path.basename(urlparse(url).path)
    if not name:
        raise CheckpointError(f"checkpoint URL {url!r} names no file; give the URL of the .ckpt file")
    local = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    if not os.path.isfile(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, local, progress=False)
        except OSError as exc:  # (urllib's URLError and HTTPError are OSErrors)
            raise CheckpointError(f"checkpoint URL {url!r} could not be downloaded: {exc}") from exc
    return local


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``; ``mmap=True`` maps a zipfile
    checkpoint (the Trainer's restore): its ``state_dict`` tensors then read the file, which must
    not be overwritten in place while they live; every other tensor is copied (``mapped.py``).

    An ``http://`` / ``https://`` URL is downloaded first, once, into torch.hub's cache.
    Raises :class:`CheckpointError` naming the file when it is missing, truncated or corrupt,
    or when it is refused as unsafe: it holds objects that are not plain data (their
    unpickling could run code; it never does, the loader refuses them first). A sharded
    checkpoint directory gives the same dictionary, its tensors complete
    (``checkpoint/sharded.py``).

    Example::

        state = safe_load("ckpts/epoch=0-step=100.ckpt")
        model.load_state_dict(state["state_dict"])
    """
    path = os.fspath(path)
    if path.startswith(("http://", "https://")):
        path = _downloaded(path)
    if os.path.isdir(path):  # a sharded checkpoint: its complete tensors, read as safely as a file
        from distengine.checkpoint.sharded import load_consolidated

        return load_consolidated(path)
    return load_checkpoint_file(path, map_location, mmap)


def is_valid_checkpoint(path: str | os.PathLike, deep: bool = False) -> bool:
    """Cheaply check that ``path`` is a complete checkpoint that :func:`safe_load` accepts.

    The default check reads the zip directory and unpickles the structure with tensors memory-
    mapped (their bytes are not read), which catches truncation and bad pickles. ``deep=True``
    also verifies the CRC of every stored byte (reads the whole file once).
    """
    return _checkpoint_problem(os.fspath(path), deep) is None


def _checkpoint_problem(path: str, deep: bool = False) -> str | None:
    """Why ``path`` cannot be loaded ("is missing", "is truncated or corrupt", "was refused as
    unsafe ..."), or None when :func:`safe_load` would accept it."""
    if os.path.isdir(path):  # a sharded checkpoint (checkpoint/sharded.py): files, sizes, checksums
        from distengine.checkpoint.sharded_files import sharded_problem

        return sharded_problem(path, deep)
    return file_problem(path, deep)


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike, symbolic: bool = False) -> None:
    """Make ``dst`` the same checkpoint as ``src``. Atomic: a crash leaves the previous ``dst`` whole.
    ``symbolic``: a relative symbolic link for a file too (``ModelCheckpoint(save_last="link")``).

    A file gets a hard link (no extra disk space), or a copy where the file system has no hard
    links. A directory (a sharded checkpoint) gets a relative symbolic link, so the folder can
    still be moved: directories cannot be hard-linked, and copying shards would double the disk
    use of the largest checkpoints.

    Example: ``link_atomic("ckpts/epoch=3-step=80.ckpt", "ckpts/last.ckpt")``.
    """
    src = os.fspath(src)
    dst = os.path.abspath(os.fspath(dst))
    if os.path.isdir(src) or symbolic:
        target = os.path.relpath(os.path.abspath(src), os.path.dirname(dst))
        tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.{_host_tag()}.{os.getpid()}."
                                                  f"{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
        os.symlink(target, tmp, target_is_directory=os.path.isdir(src))
        old = None
        if os.path.isdir(dst) and not os.path.islink(dst):  # a copy made by following the link (cp -L)
            # a name the next sharded save's clean-up removes should we crash before rmtree below
            old = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp-old-{uuid.uuid4().hex[:8]}")
            os.rename(dst, old)
        try:
            os.replace(tmp, dst)  # over the previous link (or file) in one step
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_dir(os.path.dirname(dst))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return

    def write(tmp: str) -> None:
        os.unlink(tmp)  # the placeholder _new_temp_file made; the link takes its name
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    _atomic_write(dst, write)


# ----------------------------------------------------------------------------- last pointer
def write_last_pointer(dirpath: str | os.PathLike, ckpt_path: str | os.PathLike) -> None:
    """Atomically point ``<dirpath>/last.json`` at ``ckpt_path``, a checkpoint inside ``dirpath``.

    The path is stored relative to ``dirpath``, so the folder can be moved or mounted elsewhere.
    A checkpoint outside the folder is refused: :func:`read_last_pointer` only follows a pointer
    to a file inside its folder. Example: ``write_last_pointer("ckpts", "ckpts/a.ckpt")``.
    """
    dirpath = os.path.abspath(os.fspath(dirpath))
    target = os.path.abspath(os.fspath(ckpt_path))
    rel = os.path.relpath(target, dirpath)
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        raise ValueError(f"{LAST_POINTER} in {dirpath!r} can only point at a checkpoint inside that folder, "
                         f"got {target!r}; save the checkpoint into the folder first")
    text = json.dumps({"version": _POINTER_VERSION, "path": rel}) + "\n"
    _atomic_write(os.path.join(dirpath, LAST_POINTER), lambda tmp: _write_text(tmp, text))


def _inside(folder: str, path: str) -> bool:
    """True when ``path`` lies strictly inside ``folder``, symbolic links resolved."""
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([folder, path]) == folder and path != folder


def read_last_pointer(dirpath: str | os.PathLike) -> str | None:
    """The absolute path ``<dirpath>/last.json`` points at, or None when there is no pointer.

    Raises :class:`CheckpointError` when the pointer file exists but is not valid, including a
    pointer to anything outside ``dirpath`` (``../../etc/passwd``, an absolute path elsewhere,
    or a symbolic link leading out): such a pointer is never followed.
    """
    dirpath = os.path.abspath(os.fspath(dirpath))
    pointer = os.path.join(dirpath, LAST_POINTER)
    try:
        with open(pointer, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint pointer {pointer!r} is unreadable: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("path"), str):
        raise CheckpointError(f"checkpoint pointer {pointer!r} has no 'path' entry")
    target = os.path.normpath(os.path.join(dirpath, data["path"]))
    if not _inside(dirpath, target):
        raise CheckpointError(f"checkpoint pointer {pointer!r} points outside its folder ({data['path']!r}); "
                              "it is ignored: a pointer may only name a checkpoint in the same folder")
    return target


def list_checkpoints(dirpath: str | os.PathLike) -> list[str]:
    """The ``*.ckpt`` files in ``dirpath`` (temporary files and symbolic links that lead out of
    the folder skipped), newest first."""
    dirpath = os.fspath(dirpath)
    try:
        names = os.listdir(dirpath)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        full = os.path.join(dirpath, name)
        if name.endswith(CKPT_SUFFIX) and not is_temp_file(name) and _inside(dirpath, full) \
                and (os.path.isfile(full) or os.path.isdir(full)):  # a directory: a sharded checkpoint
            try:
                found.append((os.stat(full).st_mtime_ns, name, os.path.abspath(full)))
            except FileNotFoundError:  # deleted between listdir and stat
                continue
    found.sort(reverse=True)
    return [full for _, _, full in found]


# ----------------------------------------------------------------------------- resolving
def resolve_checkpoint(ckpt_path: str | os.PathLike | None,
                       dirpath: str | os.PathLike | None) -> str | None:
    """Turn ``Trainer.fit(ckpt_path=...)`` into a file to load, or None to start fresh.

    * ``None`` -> None.
    * ``"last"`` -> the file ``<dirpath>/last.json`` points at (named as the ``last.ckpt`` of
      ``save_last`` when that is the same file); None when nothing was saved yet.
      When that file is missing or corrupt, the newest valid ``*.ckpt`` in ``dirpath`` is used
      instead, with a warning that says so; when no valid one exists, :class:`CheckpointError`.
    * any other path -> that path; :class:`CheckpointError` when it does not exist.

    Example::

        path = resolve_checkpoint("last", "runs/checkpoints")
        state = safe_load(path) if path else None
    """
    if ckpt_path is None:
        return None
    ckpt_path = os.fspath(ckpt_path)
    if ckpt_path != "last":
        if not os.path.isfile(ckpt_path) and not os.path.isdir(ckpt_path):  # a directory: sharded
            raise CheckpointNotFoundError(
                f"checkpoint file {ckpt_path!r} does not exist; pass an existing file, "
                "'last', or None")
        return os.path.abspath(ckpt_path)
    if dirpath is None:
        raise CheckpointError("ckpt_path='last' needs a checkpoint folder, but none is configured")
    dirpath = os.path.abspath(os.fspath(dirpath))
    clean_stale_temp_files(dirpath)
    problem: str | None = None
    try:
        pointed = read_last_pointer(dirpath)
    except CheckpointError as exc:
        pointed, problem = None, str(exc)
    if pointed is not None:
        why = _checkpoint_problem(pointed, deep=os.path.isdir(pointed))  # a directory: its checksums
        if why is None:
            return _last_named(dirpath, pointed)
        problem = f"the last checkpoint {pointed!r} {why}"
    candidates = list_checkpoints(dirpath)
    if problem is None and not candidates:
        return None  # nothing saved yet: start fresh
    if problem is None:
        problem = f"no {LAST_POINTER} in {dirpath!r}"
    for cand in candidates:
        if pointed is not None and os.path.abspath(cand) == pointed:
            continue
        if is_valid_checkpoint(cand, deep=os.path.isdir(cand)):
            warnings.warn(f"{problem}; resuming from the newest valid checkpoint {cand!r} instead",
                          UserWarning, stacklevel=2)
            return cand
    raise CheckpointError(f"{problem}, and no other valid checkpoint exists in {dirpath!r}")


def _last_named(dirpath: str, pointed: str) -> str:
    """``pointed`` under the name ``save_last`` gave it, when ``dirpath`` holds one: the
    ``last*.ckpt`` file (a hard or symbolic link to the same file, written with the pointer) is
    what ``ckpt_path="last"`` names in Lightning, and ``trainer.ckpt_path`` reports it."""
    try:
        names = sorted(n for n in os.listdir(dirpath) if n.startswith("last") and n.endswith(CKPT_SUFFIX))
    except OSError:
        return pointed
    for name in sorted(names, key=lambda n: n != "last" + CKPT_SUFFIX):  # last.ckpt first
        full = os.path.join(dirpath, name)
        try:
            if full != pointed and _inside(dirpath, full) and os.path.samefile(full, pointed):
                return full
        except OSError:
            continue
    return pointed


def resolve_last_in_versions(version_root: str | os.PathLike, current: str | os.PathLike) -> str | None:
    """``fit(ckpt_path="last")`` for checkpoints in a logger's run folder
    (``<save_dir>/<name>/version_N/checkpoints``, as in Lightning): a restarted job gets a new
    version, so when ``current`` holds nothing yet, the newest ``last.json`` of the other
    versions' ``checkpoints`` folders is followed. None when there is none."""
    try:
        names = os.listdir(version_root)
    except FileNotFoundError:
        return None
    found = []
    for name in names:
        folder = os.path.abspath(os.path.join(version_root, name, "checkpoints"))
        if folder == os.path.abspath(current):
            continue
        try:
            found.append((os.stat(os.path.join(folder, LAST_POINTER)).st_mtime_ns, folder))
        except OSError:
            continue
    for _, folder in sorted(found, reverse=True):
        path = resolve_checkpoint("last", folder)
        if path is not None:
            return path
    return None
