"""Temporary checkpoint files: their names, their creation (with the umask's mode), the clean-up
of those a dead writer left, and the directory fsync that makes a rename durable.

Split from :mod:`distengine.checkpoint.io` (which re-exports these names). Temporary files are
named ``.<final name>.<host>.<pid>.<random>.tmp``: readers skip them, and
:func:`clean_stale_temp_files` removes those whose writing process is gone."""
from __future__ import annotations

import os
import re
import socket
import uuid

_TMP_SUFFIX = ".tmp"


def _host_tag() -> str:
    # only characters that are safe in a file name; used to tell our own stale files apart
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"


def is_temp_file(name: str) -> bool:
    """True for the temporary names :func:`atomic_save` writes (readers must ignore them)."""
    base = os.path.basename(name)
    return base.startswith(".") and base.endswith(_TMP_SUFFIX)


def _fsync_dir(dirpath: str) -> None:
    # The rename is only durable once the directory entry is on disk. Some file systems refuse
    # to open or fsync a directory; the data itself is already synced, so that is not fatal.
    try:
        fd = os.open(dirpath, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temp_file(folder: str, base: str) -> str:
    """An empty ``.<base>.<host>.<pid>.<random>.tmp`` in ``folder``, with the mode a plain ``open()``
    gives (0666 less the umask): mkstemp's 0600 would hide checkpoints from a shared group."""
    while True:
        tmp = os.path.join(folder, f".{base}.{_host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def clean_stale_temp_files(dirpath: str | os.PathLike) -> list[str]:
    """Remove temporary files in ``dirpath`` left by writers on this host that no longer run.

    Files from other hosts, or from live processes, are left alone: they may still be written.
    """
    dirpath = os.fspath(dirpath)
    removed = []
    try:
        names = os.listdir(dirpath)
    except FileNotFoundError:
        return removed
    host = _host_tag()
    for name in names:
        if not is_temp_file(name):
            continue
        parts = name[:-len(_TMP_SUFFIX)].rsplit(".", 3)
        # parts: [".<final>", host, pid, random]
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
            continue
        if _pid_alive(int(parts[2])):
            continue
        try:
            os.unlink(os.path.join(dirpath, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
