"""The module hooks around the loops rather than inside a step: the evaluation loops' train/eval
mode switch, the batch's way to the device, the module's own callbacks and its late-built layers.
Mixed into :class:`distengine.module.Module`; each default does what Lightning 2.x does.

The loops call these only where a subclass overrides them (``module_overrides``), so a module
that keeps the defaults costs nothing per batch.
"""
from __future__ import annotations

from typing import Any

import torch


class ModelHooks:
    """Hooks a :class:`~distengine.module.Module` may override (Lightning's names and arguments)."""

    # ------------------------------------------------------------------ evaluation mode
    def _eval_target(self) -> Any:
        trainer = getattr(self, "_trainer", None)
        return trainer.model if trainer is not None and trainer.model is not None else self

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's hook: the Trainer's backward of ``loss`` (already scaled under mixed
        precision), in automatic optimization and in ``manual_backward``. Override it to change
        how, e.g. ``loss.backward(retain_graph=True)``."""
        loss.backward(*args, **kwargs)

    def on_validation_model_zero_grad(self) -> None:
        """Before a validation inside ``fit`` at a step boundary: release the gradients."""
        self.zero_grad()

    def on_validation_model_eval(self) -> None:
        """Before validation (and the sanity check): put the model in eval mode. The mode of
        every submodule was captured first and is restored afterwards, unless
        :meth:`on_validation_model_train` is overridden."""
        self._eval_target().eval()

    def on_validation_model_train(self) -> None:
        """After validation, only when overridden (the default restores each submodule's mode)."""
        self._eval_target().train()

    def on_test_model_eval(self) -> None:
        """Before testing: eval mode (see :meth:`on_validation_model_eval`)."""
        self._eval_target().eval()

    def on_test_model_train(self) -> None:
        """After testing, only when overridden (the default restores each submodule's mode)."""
        self._eval_target().train()

    def on_predict_model_eval(self) -> None:
        """Before predicting: eval mode. Afterwards each submodule's mode is restored."""
        self._eval_target().eval()

    # ------------------------------------------------------------------ the batch's way to the device
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch before it is moved to the device; return it."""
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch to ``device`` (tensors in dicts, lists, tuples, named tuples, and
        anything with ``.to``); override for a custom batch type."""
        from distengine.data import move_to_device

        return move_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch once it is on the device (for example a GPU augmentation); return it."""
        return batch

    # ------------------------------------------------------------------ set-up
    def prepare_data(self) -> None:
        """Download or write data to disk: called once per node (``prepare_data_per_node``)
        before ``setup``, only when overridden; do not set state here."""

    def configure_callbacks(self) -> Any:
        """Callbacks this module brings along: a callback or a list of them. They replace the
        Trainer's callbacks of the same type; checkpoint callbacks run last."""
        return []

    def configure_model(self) -> None:
        """Build (large) layers here rather than in ``__init__``: called once per ``fit`` /
        ``validate`` / ``test`` / ``predict``, before ``configure_optimizers``, on the device
        (and, under FSDP, before the layers are sharded). Make it idempotent."""
