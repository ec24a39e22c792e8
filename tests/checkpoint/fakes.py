"""A minimal stand-in for the Trainer: just the attributes ModelCheckpoint uses."""
from __future__ import annotations

import os
from typing import Any

import torch

from distengine.checkpoint.io import atomic_save
from distengine.distributed import collectives


class FakeStrategy:
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return collectives.broadcast_object(obj, src=src)

    def barrier(self) -> None:
        collectives.barrier()


class FakeTrainer:
    def __init__(self, root: str, callbacks: list, num_val_batches: int = 0) -> None:
        self.default_root_dir = root
        self.global_step = 0
        self.current_epoch = 0
        self.sanity_checking = False
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.num_val_batches = [num_val_batches] if num_val_batches else []
        self.strategy = FakeStrategy()
        self.callbacks = callbacks
        self.saves: list[str] = []   # every save_checkpoint call, on this rank
        self.weight = torch.zeros(4)

    @property
    def is_global_zero(self) -> bool:
        return collectives.rank() == 0

    def dump_checkpoint(self, weights_only: bool = False) -> dict | None:
        if not self.is_global_zero:
            return None
        out = {"state_dict": {"w": self.weight}, "global_step": self.global_step,
               "epoch": self.current_epoch}
        if not weights_only:
            out["callbacks"] = {cb.state_key: cb.state_dict() for cb in self.callbacks}
        return out

    def save_checkpoint(self, path: str, weights_only: bool = False) -> None:
        self.saves.append(path)
        ckpt = self.dump_checkpoint(weights_only)
        if ckpt is not None:
            atomic_save(ckpt, path)
        collectives.barrier()

    # drive the hooks the way the loop would
    def fit_setup(self) -> None:
        for cb in self.callbacks:
            cb.setup(self, None, "fit")
            cb.on_train_start(self, None)

    def train_step(self, metrics: dict[str, float] | None = None) -> None:
        self.global_step += 1
        self.weight = self.weight + 1
        if metrics is not None:
            self.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for cb in self.callbacks:
            cb.on_train_batch_end(self, None, {"loss": torch.tensor(0.0)}, None, 0)

    def end_epoch(self, val_metrics: dict[str, float] | None = None) -> None:
        if val_metrics is not None:
            self.callback_metrics.update({k: torch.tensor(v) for k, v in val_metrics.items()})
            for cb in self.callbacks:
                cb.on_validation_end(self, None)
        for cb in self.callbacks:
            cb.on_train_epoch_end(self, None)
        self.current_epoch += 1

    def fit_end(self) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(self, None)
            cb.teardown(self, None, "fit")


def ckpt_files(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".ckpt"))
