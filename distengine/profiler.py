"""The 1.x module name: ``from pytorch_lightning.profiler import SimpleProfiler`` (1.x) reads
as ``from distengine.profiler import SimpleProfiler``. The classes live in
:mod:`distengine.profilers`; ``BaseProfiler`` is 1.x's name of :class:`Profiler`."""
from __future__ import annotations

from distengine.profilers import PassThroughProfiler, Profiler
from distengine.profilers.advanced import AdvancedProfiler
from distengine.profilers.pytorch import PyTorchProfiler
from distengine.profilers.simple import SimpleProfiler

BaseProfiler = Profiler

__all__ = ["AdvancedProfiler", "BaseProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]
