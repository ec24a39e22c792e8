"""Lightning's ``utilities`` names scripts import first: ``rank_zero_only`` (a decorator with a
``.rank`` attribute), ``rank_zero_info``/``rank_zero_warn``/``rank_zero_debug``, ``grad_norm``,
``AttributeDict`` and ``CombinedLoader``. Importing this package loads no torch; ``grad_norm``,
``AttributeDict`` and ``CombinedLoader`` load on first use.

Example::

    from distengine.utilities import rank_zero_only   # as from pytorch_lightning.utilities
"""
from __future__ import annotations

import importlib
from typing import Any

from distengine.dist.rank_zero import (
    global_rank,
    rank_zero_debug,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)

_LAZY = {"CombinedLoader": "distengine.utilities.combined_loader",
         "grad_norm": "distengine.utilities.grads", "AttributeDict": "distengine.module",
         "seed_everything": "distengine.seed"}

__all__ = ["AttributeDict", "CombinedLoader", "global_rank", "grad_norm", "rank_zero_debug", "rank_zero_deprecation",
           "rank_zero_info", "rank_zero_only", "rank_zero_warn", "seed_everything"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distengine.utilities' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
