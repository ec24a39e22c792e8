"""A checkpoint write that fails because the disk is full, a quota or the file size limit is hit,
said in one line with the numbers.

torch's zip writer reports any failed write as ``unexpected pos 7420096 vs 7419984``, and DCP
passes that on as ``CheckpointException ranks:dict_keys([0, 1])``: the ``OSError`` underneath
(``ENOSPC``, ``EDQUOT``, ``EFBIG``) is lost on the way through C++. So the cause is found in
two steps: first the exception chain (``__cause__``, ``__context__``, a DCP exception's per-rank
failures) is searched for an ``OSError`` with one of those errnos (Python-level writes keep it);
when there is none, the OS is asked again: 64 KiB are appended to the partly written file (for a
directory, its largest file: that is where a size limit is reached) and fsynced, and the errno of
that write is the answer. A probe that succeeds means the disk was not the cause, and the
original error is raised unchanged. The partial file is deleted by the caller right after.

Example of the message::

    no space left on /mnt/data (/dev/sdb1) while writing /mnt/data/run/checkpoints/epoch=3-step=80.ckpt:
    the checkpoint needed about 7.4 MB, 2.1 MB free; free some space (or keep fewer checkpoints) ...
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from typing import Any

_PROBE = b"\0" * (64 << 10)
_CAUSES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def errno_in(exc: BaseException) -> int | None:
    """The errno of the first disk-full, quota or size-limit ``OSError`` in ``exc``'s chain, or None."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, tuple):  # DCP's (exception, traceback) pairs
            stack.extend(x for x in e if isinstance(x, BaseException))
            continue
        if not isinstance(e, BaseException):
            continue
        if isinstance(e, OSError) and e.errno in _CAUSES:
            return e.errno
        failures = getattr(e, "failures", None)  # DCP's CheckpointException: {rank: failure}
        if isinstance(failures, dict):
            stack.extend(failures.values())
        stack.extend((e.__cause__, e.__context__))
    return None


def probe_errno(path: str) -> int | None:
    """Append 64 KiB to ``path`` (for a directory: its largest file, or a new one) and fsync: the
    errno when that fails with disk full, quota or size limit, None when it works (or fails
    otherwise). Only for files about to be deleted."""
    target, made = path, False
    if os.path.isdir(path):
        sizes = []
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isfile(full) and not os.path.islink(full):
                sizes.append((os.path.getsize(full), full))
        if sizes:
            target = max(sizes)[1]
        else:
            target, made = os.path.join(path, f".probe-{uuid.uuid4().hex[:8]}.tmp"), True
    try:
        with open(target, "ab", buffering=0) as f:
            f.write(_PROBE)
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.errno if exc.errno in _CAUSES else None
    finally:
        if made:
            try:
                os.unlink(target)
            except OSError:
                pass
    return None


def disk_cause(exc: BaseException, written: str) -> int | None:
    """ENOSPC, EDQUOT or EFBIG when that is why writing ``written`` (a file or a directory, still
    there) failed with ``exc``; None otherwise."""
    found = errno_in(exc)
    if found is None and (isinstance(exc, (RuntimeError, OSError)) or type(exc).__name__ == "CheckpointException"):
        found = probe_errno(written)
    return found


def payload_bytes(obj: Any) -> int:
    """About how many bytes ``torch.save(obj)`` writes: every distinct tensor storage (a DTensor's
    local shard) once; the pickled rest is small next to it."""
    import torch

    seen: dict[Any, int] = {}
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            local = o.to_local() if hasattr(o, "to_local") else o
            try:
                storage = local.untyped_storage()
                seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            except (RuntimeError, NotImplementedError):  # meta or sparse tensors
                seen[id(local)] = local.numel() * local.element_size()
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return sum(seen.values())


def free_after_removing(path: str) -> int:
    """Free bytes on ``path``'s file system once the partial save ``path`` (a file, or a directory)
    is deleted: measured before, as a writer that failed may still hold the file open."""
    files = [path] if os.path.isfile(path) else [os.path.join(d, n) for d, _, ns in os.walk(path) for n in ns]
    held = 0
    for name in files:
        try:
            held += os.stat(name).st_blocks * 512  # what the file occupies on disk
        except OSError:
            pass
    return shutil.disk_usage(path if os.path.isdir(path) else os.path.dirname(path)).free + held


def _mount(folder: str) -> str:
    """``<mount point> (<device>)`` of the file system ``folder`` is on."""
    point = os.path.realpath(folder)
    while not os.path.ismount(point):
        point = os.path.dirname(point)
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            devices = [line.split()[0] for line in f if len(line.split()) > 1 and line.split()[1] == point]
    except OSError:
        devices = []
    return f"{point} ({devices[-1]})" if devices else point


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 50_000 or n == 0 else f"{n / 1e3:.0f} kB"  # last.json: a few bytes


def message(cause: int, target: str, needed: int, free: int) -> str:
    """The one line for ``cause`` (an errno of :func:`disk_cause`) while writing ``target``;
    ``needed``: bytes the checkpoint needed; ``free``: bytes free (:func:`free_after_removing`)."""
    folder = os.path.dirname(os.path.abspath(target))
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    if cause == errno.EFBIG:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = "unlimited" if limit == resource.RLIM_INFINITY else _mb(limit)
        return (f"the file size limit ({size}, ulimit -f) was hit while writing {target}: the checkpoint needed "
                f"about {_mb(needed)}; raise the limit (ulimit -f unlimited) or save smaller checkpoints; "
                "the previous checkpoint is intact")
    what = "no space left on" if cause == errno.ENOSPC else "disk quota exceeded on"
    return (f"{what} {_mount(folder)} while writing {target}: the checkpoint needed about {_mb(needed)}, "
            f"{_mb(free)} free; free some space (or keep fewer checkpoints: save_top_k) and resume, "
            "the previous checkpoint is intact")
