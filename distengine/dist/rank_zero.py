"""Helpers that act on global rank zero only."""
from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def global_rank() -> int:
    from distengine.dist import collectives

    if collectives.is_distributed():
        return collectives.rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)


def rank_zero_only(fn: F) -> F:
    """Run ``fn`` on global rank zero; other ranks get ``None``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if global_rank() == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped  # type: ignore[return-value]


@rank_zero_only
def rank_zero_info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@rank_zero_only
def rank_zero_warn(msg: str, category: type[Warning] = UserWarning) -> None:
    warnings.warn(msg, category, stacklevel=3)
