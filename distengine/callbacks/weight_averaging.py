"""``WeightAveraging`` and ``EMAWeightAveraging``: keep an average of the weights during training.

The average is a ``torch.optim.swa_utils.AveragedModel`` of the module, built at the start of
``fit``. It is updated after each optimizer step for which :meth:`WeightAveraging.should_update`
says so (and at each epoch end it says so for), swapped in for every validation epoch, and
copied into the module when training ends. A checkpoint's ``state_dict`` holds the averaged
weights (what ``load_from_checkpoint`` and ``test(ckpt_path=...)`` use); the module's own weights
are in ``current_model_state`` and the average's count in ``averaging_state``, so a resumed fit
continues both exactly.

Example::

    trainer = de.Trainer(callbacks=[EMAWeightAveraging(decay=0.999, update_starting_at_step=100)])
"""
from __future__ import annotations

import itertools
import sys
import warnings
from copy import deepcopy
from typing import Any

import torch

from distengine.callbacks.base import Callback

__all__ = ["EMAWeightAveraging", "WeightAveraging"]


class WeightAveraging(Callback):
    """Average the weights with ``AveragedModel(module, device, use_buffers, **kwargs)``
    (``kwargs``: ``avg_fn`` or ``multi_avg_fn``; the default is the plain mean, as in SWA).
    ``device``: where the average lives (default: the module's device at set-up).
    Subclass and override :meth:`should_update` to choose when it is updated (default: after
    every optimizer step)."""

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: Any = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to update after optimizer step ``step_idx`` (0-based) or at the end of epoch
        ``epoch_idx`` (called with one of them)."""
        return step_idx is not None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            from torch.optim.swa_utils import AveragedModel

            device = self._device or pl_module.device
            self._average_model = AveragedModel(model=pl_module, device=device, use_buffers=self._use_buffers,
                                                **self._kwargs)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        for avg, cur in self._pairs(pl_module):
            cur.data.copy_(avg.data)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._average_model is not None:
            self._swap(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            print("distengine: WeightAveraging: a checkpoint saved outside fit holds no averaging state",
                  file=sys.stderr, flush=True)
            return
        state = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
        checkpoint["averaging_state"] = {k: v for k, v in state.items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            warnings.warn("WeightAveraging: a checkpoint loaded outside fit; the averaging state is not restored "
                          "(remove the callback to silence this)", stacklevel=2)
        elif "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            state = {"module." + k: v for k, v in checkpoint["state_dict"].items()}
            state.update(checkpoint["averaging_state"])
            self._average_model.load_state_dict(state)
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            warnings.warn("WeightAveraging: the checkpoint was not written with WeightAveraging; the average "
                          "starts from its weights", stacklevel=2)
            self._average_model.module.load_state_dict(deepcopy(checkpoint["state_dict"]), strict=False)

    def _pairs(self, pl_module: Any) -> Any:
        avg = self._average_model.module
        return zip(itertools.chain(avg.parameters(), avg.buffers()),
                   itertools.chain(pl_module.parameters(), pl_module.buffers()))

    def _swap(self, pl_module: Any) -> None:
        for avg, cur in self._pairs(pl_module):
            tmp = avg.data.clone()
            avg.data.copy_(cur.data)
            cur.data.copy_(tmp)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average (``get_ema_avg_fn(decay)``), updated after every
    ``update_every_n_steps``-th optimizer step from step ``update_starting_at_step`` (0-based;
    None: from the first), and at each epoch end from ``update_starting_at_epoch`` (None: never)."""

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        from torch.optim.swa_utils import get_ema_avg_fn

        super().__init__(device=device, use_buffers=use_buffers, **kwargs, avg_fn=get_ema_avg_fn(decay=decay))
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        return (epoch_idx is not None and self.update_starting_at_epoch is not None
                and epoch_idx >= self.update_starting_at_epoch)
