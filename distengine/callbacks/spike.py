"""``SpikeDetection``: stop training when the loss spikes, and note the batches to skip.

The loss of each training batch is compared with the running mean of the last ``window``
losses. It is a spike when it is not an improvement on the previous loss (``mode``) and it is
farther from that mean than ``atol`` and than ``rtol * mean`` (either check off when None);
with ``finite_only=True`` a NaN or infinite loss is a spike too. The first ``warmup`` batches
of each epoch are not checked. On a spike on any rank every rank raises
:class:`TrainingSpikeException`, after rank zero wrote the spiking batch index and the one
before it (indices within the epoch) to ``exclude_batches_path`` (a JSON list; by default
``<default_root_dir>/skip_batches.json``).

Example::

    trainer = de.Trainer(callbacks=[SpikeDetection(window=10, rtol=2.0)])
"""
from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

from distengine.callbacks.base import Callback
from distengine.distributed import collectives

__all__ = ["SpikeDetection", "TrainingSpikeException"]


class TrainingSpikeException(RuntimeError):
    """Raised by :class:`SpikeDetection` when a loss spike was found."""

    def __init__(self, batch_idx: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args, **kwargs)


class SpikeDetection(Callback):
    """See the module docstring. Arguments as in Lightning's ``SpikeDetection``."""

    def __init__(self, mode: str = "min", window: int = 10, warmup: int = 1, atol: float | None = None,
                 rtol: float | None = 2.0, exclude_batches_path: str | os.PathLike | None = None,
                 finite_only: bool = True) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"SpikeDetection(mode={mode!r}): use 'min' or 'max'")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"SpikeDetection(window={window!r}): use a positive int")
        self.mode, self.window, self.warmup, self.atol, self.rtol = mode, window, warmup, atol, rtol
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only
        self.last_val: float = 0.0
        self.bad_batches: list[int] = []
        self._recent: deque[float] = deque(maxlen=window)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(outputs, torch.Tensor):
            loss = outputs.detach()
        elif isinstance(outputs, Mapping):
            loss = outputs["loss"].detach()
        else:
            raise TypeError(f"outputs have to be of type torch.Tensor or Mapping, got {type(outputs).__qualname__}")
        if self.exclude_batches_path is None:
            self.exclude_batches_path = os.path.join(trainer.default_root_dir, "skip_batches.json")
        if not str(self.exclude_batches_path).endswith(".json"):
            self.exclude_batches_path = os.path.join(self.exclude_batches_path, "skip_batches.json")
        loss = loss.float().cpu()
        spike = batch_idx >= self.warmup and self._is_spike(loss)
        if collectives.any_rank(spike):
            self._handle_spike(trainer, batch_idx)
        finite_all = self.finite_only or not collectives.any_rank(not bool(torch.isfinite(loss).all()))
        if finite_all:
            self._recent.append(float(loss))
            self.last_val = float(loss)

    def _is_spike(self, loss: torch.Tensor) -> bool:
        if self.finite_only and not bool(torch.isfinite(loss).all()):
            return True
        diff = loss - self.last_val
        if bool((diff <= 0).all()) if self.mode == "min" else bool((diff >= 0).all()):
            return False  # an improvement is never a spike
        recent = list(self._recent) or [float("nan")]  # nothing yet: no check can hold
        mean = torch.tensor(recent, dtype=torch.float32).mean()
        far_abs = self.atol is None or bool(abs(loss - mean) >= abs(self.atol))
        far_rel = self.rtol is None or bool(abs(loss - mean) >= abs(self.rtol * mean))
        return far_abs and far_rel

    def _handle_spike(self, trainer: Any, batch_idx: int) -> None:
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        if trainer.global_rank == 0:  # whole or not at all: written aside, then renamed into place
            path = str(self.exclude_batches_path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(self.bad_batches, f, indent=4)
            os.replace(path + ".tmp", path)
        collectives.barrier()  # every rank decided alike (any_rank): none raises before the file is there
        raise TrainingSpikeException(batch_idx=batch_idx)

    def state_dict(self) -> dict[str, Any]:
        return {"last_val": self.last_val, "mode": self.mode, "warmup": self.warmup, "atol": self.atol,
                "rtol": self.rtol, "bad_batches": list(self.bad_batches),
                "bad_batches_path": None if self.exclude_batches_path is None else str(self.exclude_batches_path),
                "recent": list(self._recent)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_val = state_dict["last_val"]
        self.mode, self.warmup = state_dict["mode"], state_dict["warmup"]
        self.atol, self.rtol = state_dict["atol"], state_dict["rtol"]
        self.bad_batches = list(state_dict["bad_batches"])
        self.exclude_batches_path = state_dict["bad_batches_path"]
        self._recent = deque(state_dict.get("recent", []), maxlen=self.window)
