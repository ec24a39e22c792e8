"""``is_shared_filesystem`` (``pytorch_lightning.utilities``): whether every rank sees the same
files at a path, so that rank 0 alone may write what all will read."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["is_shared_filesystem"]


def is_shared_filesystem(strategy: Any, path: str | os.PathLike | None = None, timeout: int = 3) -> bool:
    """True when ``path`` (default: the working directory) is one filesystem for all ranks.

    Every rank must call it (it is collective). Rank 0 creates a file there; the others look
    for it for up to ``timeout`` seconds; the answer is True only if every rank saw it. A remote
    URL (``s3://...``) is shared; one process is trivially shared; a path that differs between
    ranks is not. ``strategy`` is ``trainer.strategy``.
    """
    if path is not None and "://" in str(path) and not str(path).startswith("file://"):
        return True
    where = Path(Path.cwd() if path is None else str(path).removeprefix("file://")).resolve()
    if getattr(strategy, "world_size", 1) == 1:
        return True
    if not strategy.reduce_boolean_decision(strategy.broadcast(where) == where, all=True):
        return False
    if not strategy.reduce_boolean_decision(where.exists(), all=True):
        raise FileNotFoundError(f"Unable to determine if the path belongs to a shared filesystem. "
                                f"The path does not exist: {where}")
    folder = where.parent if where.is_file() else where
    marker = folder / ".lightning_shared_fs_check"
    with contextlib.suppress(OSError):
        marker.unlink()
    strategy.barrier()
    if strategy.global_rank == 0:
        marker.touch()
        found = True
    else:
        deadline = time.monotonic() + timeout
        found = marker.exists()
        while not found and time.monotonic() < deadline:
            time.sleep(0.01)
            found = marker.exists()
    strategy.barrier()
    shared = strategy.reduce_boolean_decision(found, all=True)
    with contextlib.suppress(OSError):  # another rank may have removed it first
        marker.unlink()
    return shared
