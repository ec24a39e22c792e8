"""Callbacks: ``Callback`` (the base) and the built-in ones, imported on first use."""
from __future__ import annotations

import importlib
from typing import Any

from distengine.callbacks.base import Callback

_LAZY = {
    "ModelCheckpoint": "distengine.callbacks.model_checkpoint",
    "EarlyStopping": "distengine.callbacks.early_stopping",
    "LearningRateMonitor": "distengine.callbacks.lr_monitor",
    "DeviceStatsMonitor": "distengine.callbacks.device_stats",
    "ModelSummary": "distengine.callbacks.model_summary",
    "Timer": "distengine.callbacks.timer",
    "TQDMProgressBar": "distengine.callbacks.tqdm_progress",
    "RichProgressBar": "distengine.callbacks.rich_progress",
    "RichProgressBarTheme": "distengine.callbacks.rich_progress",
    "ProgressBar": "distengine.callbacks.progress_bar",
    "GradientAccumulationScheduler": "distengine.callbacks.accumulation",
    "BaseFinetuning": "distengine.callbacks.finetuning",
    "BackboneFinetuning": "distengine.callbacks.finetuning",
    "StochasticWeightAveraging": "distengine.callbacks.swa",
    "LearningRateFinder": "distengine.callbacks.finders",
    "BatchSizeFinder": "distengine.callbacks.finders",
    "LambdaCallback": "distengine.callbacks.lambda_function",
    "OnExceptionCheckpoint": "distengine.callbacks.on_exception_checkpoint",
    "Checkpoint": "distengine.callbacks.checkpoint",
    "SpikeDetection": "distengine.callbacks.spike",
    "WeightAveraging": "distengine.callbacks.weight_averaging",
    "EMAWeightAveraging": "distengine.callbacks.weight_averaging",
    "RichModelSummary": "distengine.callbacks.rich_model_summary",
    "BasePredictionWriter": "distengine.callbacks.prediction_writer",
    "ThroughputMonitor": "distengine.callbacks.throughput_monitor",
    "ModelPruning": "distengine.callbacks.pruning",
}

__all__ = ["Callback", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distengine.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
