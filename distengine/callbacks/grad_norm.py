"""``Trainer(track_grad_norm=p)`` (Lightning 1.x): log the gradient p-norms every step."""
from __future__ import annotations

from typing import Any

from distengine.callbacks.base import Callback


class GradNormTracker(Callback):
    """Before each optimizer step (after unscaling mixed-precision gradients, before clipping,
    as 1.9.5 did) compute :func:`distengine.utilities.grad_norm` of the whole module and hand
    it to ``module.log_grad_norm``, which logs ``grad_2.0_norm/<param>`` and
    ``grad_2.0_norm_total`` with ``on_step=True, on_epoch=True`` (tags ``..._step`` and
    ``..._epoch``, as 1.9.5 wrote them)."""

    def __init__(self, norm_type: float | int | str) -> None:
        self.norm_type = float(norm_type)

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        from distengine.utilities.grads import grad_norm

        if trainer.optimizers and optimizer is not trainer.optimizers[0]:
            return  # 1.9.5: the first optimizer only
        precision = getattr(trainer, "precision_plugin", None)
        if precision is not None:
            precision.unscale_once(optimizer)
        norms = grad_norm(module, self.norm_type)
        if norms:
            module.log_grad_norm(norms)
