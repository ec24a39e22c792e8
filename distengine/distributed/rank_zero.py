"""Helpers that act on global rank zero only (Lightning's ``utilities.rank_zero``).

Example::

    from distengine.utilities import rank_zero_only

    @rank_zero_only
    def save_plot(fig): ...          # runs on global rank 0, returns None elsewhere

    if rank_zero_only.rank == 0: ...  # the rank the decorator compares
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("distengine")


def global_rank() -> int:
    from distengine.distributed import collectives

    if collectives.is_distributed():
        return collectives.rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)


class _RankZeroOnly:
    """Decorator: run ``fn`` on global rank zero; other ranks get ``None`` (or ``default=``).

    ``rank_zero_only.rank`` is the rank it compares: this process's global rank, read when
    asked (the process group may start after import); assign it to pin a value, as some
    Lightning scripts do (``rank_zero_only.rank = int(os.environ["RANK"])``).
    """

    def __init__(self) -> None:
        self._rank: int | None = None

    @property
    def rank(self) -> int:
        return global_rank() if self._rank is None else self._rank

    @rank.setter
    def rank(self, value: int | None) -> None:
        self._rank = None if value is None else int(value)

    def __call__(self, fn: F | None = None, *, default: Any = None) -> Any:
        if fn is None:  # @rank_zero_only(default=...)
            return functools.partial(self.__call__, default=default)

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.rank == 0:
                return fn(*args, **kwargs)
            return default

        return wrapped


rank_zero_only = _RankZeroOnly()


@rank_zero_only
def rank_zero_info(msg: Any, *args: Any, **kwargs: Any) -> None:
    """Print ``msg`` to stderr on global rank zero."""
    print(msg, file=sys.stderr, flush=True)


@rank_zero_only
def rank_zero_debug(msg: Any, *args: Any, **kwargs: Any) -> None:
    """``logging.debug`` on the ``distengine`` logger, on global rank zero."""
    log.debug(msg, *args, **kwargs)


@rank_zero_only
def rank_zero_warn(msg: Any, category: type[Warning] = UserWarning, stacklevel: int = 3, **kwargs: Any) -> None:
    """``warnings.warn`` on global rank zero."""
    warnings.warn(msg, category, stacklevel=stacklevel)


@rank_zero_only
def rank_zero_deprecation(msg: Any, stacklevel: int = 3, **kwargs: Any) -> None:
    warnings.warn(msg, DeprecationWarning, stacklevel=stacklevel)


__all__ = ["global_rank", "rank_zero_debug", "rank_zero_deprecation", "rank_zero_info", "rank_zero_only",
           "rank_zero_warn"]
