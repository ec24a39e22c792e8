"""A small stand-in for the Trainer: just the attributes the callbacks read."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch


class RecordingLogger:
    """Keeps every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append((step, dict(metrics)))


class FakeTrainer:
    def __init__(self, **kw: Any) -> None:
        self.global_step = 0
        self.current_epoch = 0
        self.global_rank = 0
        self.world_size = 1
        self.is_global_zero = True
        self.should_stop = False
        self.sanity_checking = False
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.loggers: list[Any] = []
        self.log_every_n_steps = 50
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[Any] = []
        self.num_val_batches = 0
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"))
        self.lightning_module = None
        for k, v in kw.items():
            setattr(self, k, v)
