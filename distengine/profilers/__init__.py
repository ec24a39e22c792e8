"""Profilers: where the time of a run goes (``Trainer(profiler="simple" | "advanced" | "pytorch")``).

``Profiler`` (the base class) and ``PassThroughProfiler`` load with this package; the others
on first access, so ``import distengine.profilers`` does not import ``torch.profiler``.

Example::

    from distengine.profilers import SimpleProfiler
    trainer = de.Trainer(profiler=SimpleProfiler(filename="perf"))   # <log_dir>/fit-perf.txt
    ...
    with trainer.profiler.profile("my block"):   # anywhere, also inside training_step
        ...
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distengine.profilers.base import PassThroughProfiler, Profiler

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from distengine.profilers.advanced import AdvancedProfiler
    from distengine.profilers.pytorch import PyTorchProfiler
    from distengine.profilers.simple import SimpleProfiler

_LAZY = {
    "SimpleProfiler": "distengine.profilers.simple",
    "AdvancedProfiler": "distengine.profilers.advanced",
    "PyTorchProfiler": "distengine.profilers.pytorch",
}

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distengine.profilers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
