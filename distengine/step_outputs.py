"""What a step or an ``*_epoch_end`` hook returned: detached copies kept for the 1.x
``*_epoch_end(outputs)`` hooks, and the 1.x ``{"log": {...}, "progress_bar": {...}}`` dicts
routed to the results (the same place ``self.log`` writes)."""
from __future__ import annotations

from typing import Any

import torch


def detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: detach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach(v) for v in obj)
    return obj


def log_returned(res: Any, out: Any, epoch_level: bool) -> None:
    """Route the 1.x-style ``'log'``/``'progress_bar'`` dicts of a returned dict to the results.

    A key under both is ONE metric shown on the bar and written to the loggers (logged twice,
    its first flags would stick and the bar would never show it); the value under ``'log'``
    is the one kept."""
    if not isinstance(out, dict):
        return
    on_step, on_epoch = (False, True) if epoch_level else (True, False)
    routed: dict[str, list] = {}  # name -> [value, prog_bar, logger]
    for key, prog in (("progress_bar", True), ("log", False)):
        for name, value in (out.get(key) or {}).items():
            entry = routed.setdefault(name, [value, False, False])
            entry[0] = value
            entry[1 if prog else 2] = True
    for name, (value, prog, lg) in routed.items():
        res.log(name, value, prog, lg, on_step, on_epoch, "mean", False, 1 if epoch_level else None)
    if epoch_level:  # 1.x: other top-level scalars (e.g. 'val_loss') feed callback_metrics
        for name, value in out.items():
            if name not in ("log", "progress_bar") and name not in routed \
                    and isinstance(value, (torch.Tensor, float, int)) \
                    and (not isinstance(value, torch.Tensor) or value.numel() == 1):
                res.log(name, value, False, False, False, True, "mean", False, 1)
