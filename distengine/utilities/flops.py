"""``measure_flops``: count the FLOPs of a forward (and optionally a backward) pass.

Built on ``torch.utils.flop_counter.FlopCounterMode``. Build the model and its input on the
``meta`` device so nothing is computed or allocated:

Example::

    with torch.device("meta"):
        model = MyModel()
        x = torch.randn(2, 32)
    forward_flops = measure_flops(model, lambda: model(x))
    train_flops = measure_flops(model, lambda: model(x), lambda y: y.sum())
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["measure_flops"]


def measure_flops(model: torch.nn.Module, forward_fn: Callable[[], torch.Tensor],
                  loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """Total FLOPs of ``forward_fn()``; with ``loss_fn``, of ``loss_fn(forward_fn()).backward()``
    too (forward, loss and backward). ``model`` is the module ``forward_fn`` runs (as in
    Lightning's signature; the count covers whatever ``forward_fn`` calls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if loss_fn is None:
            forward_fn()
        else:
            loss_fn(forward_fn()).backward()
    return counter.get_total_flops()
