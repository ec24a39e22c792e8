"""Lightning's ``utilities`` names scripts import: ``rank_zero_only`` (a decorator with a
``.rank`` attribute), ``rank_zero_info``/``rank_zero_warn``/``rank_zero_debug``, ``grad_norm``,
``AttributeDict``, ``CombinedLoader``, ``move_data_to_device``, ``is_shared_filesystem``,
``suggested_max_num_workers``, ``measure_flops``, ``Throughput``, ``get_available_flops``,
``find_shared_parameters``/``set_shared_parameters``,
``disable_possible_user_warnings``, ``GradClipAlgorithmType``, ``is_picklable``; and the
submodules ``seed``, ``enums``, ``parameter_tying``, ``warnings``, ``parsing``, ``apply_func``,
``combined_loader``. Importing this package loads no torch; the rest loads on first use.

Example::

    from distengine.utilities import rank_zero_only   # as from pytorch_lightning.utilities
"""
from __future__ import annotations

import importlib
from typing import Any

from distengine.distributed.rank_zero import (
    global_rank,
    rank_zero_debug,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)

_LAZY = {"grad_norm": "distengine.utilities.grads", "AttributeDict": "distengine.module",
         "seed_everything": "distengine.seed",
         "CombinedLoader": "distengine.utilities.combined_loader",
         "move_data_to_device": "distengine.utilities.apply_func",
         "GradClipAlgorithmType": "distengine.utilities.enums", "LightningEnum": "distengine.utilities.enums",
         "find_shared_parameters": "distengine.utilities.parameter_tying",
         "set_shared_parameters": "distengine.utilities.parameter_tying",
         "disable_possible_user_warnings": "distengine.utilities.warnings",
         "is_picklable": "distengine.utilities.parsing",
         "suggested_max_num_workers": "distengine.utilities.data",
         "is_shared_filesystem": "distengine.utilities.distributed",
         "measure_flops": "distengine.utilities.flops",
         "Throughput": "distengine.utilities.throughput",
         "get_available_flops": "distengine.utilities.throughput"}

__all__ = ["AttributeDict", "CombinedLoader", "GradClipAlgorithmType", "LightningEnum",
           "disable_possible_user_warnings", "find_shared_parameters", "global_rank", "grad_norm", "is_picklable",
           "is_shared_filesystem", "measure_flops", "move_data_to_device", "rank_zero_debug", "rank_zero_deprecation",
           "rank_zero_info", "rank_zero_only", "rank_zero_warn", "seed_everything", "set_shared_parameters",
           "suggested_max_num_workers", "Throughput", "get_available_flops"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distengine.utilities' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
